"""A bounded on-disk cache of stored (still encrypted) blocks, for the mount.

Entries are the ciphertext as fetched, so the cache reveals nothing and every use authenticates
the block again (a damaged entry is detected, dropped and fetched anew). Owner-only permissions.

The cache deletes what it holds, so it lives in a folder fsbackup owns: one it created, or one
that was empty (or held only cache entries, from before the tag, and a damaged tag), marked by a CACHEDIR.TAG that
names fsbackup (which also keeps backup tools, fsbackup's --exclude-caches too, out of it).
A folder holding anything else is refused. Even in its own folder the cache counts and deletes
only the names it gives entries (64 hex digits, and `.tmp-` and 16 hex digits while one is
written): a file someone puts there later is left alone. Every access goes through the folder's
file descriptor, without following symlinks.
"""
from __future__ import annotations

import os
import re
import secrets
import stat
import threading
import weakref
from collections import OrderedDict

from ..errors import UsageError
from ..private import open_owned_folder, open_private

TAG_NAME = "CACHEDIR.TAG"
CACHE_TAG = (b"Signature: 8a477f597d28d172789f06886806bc55\n"
             b"# This file is a cache directory tag created by fsbackup: the mount's block cache.\n"
             b"# fsbackup deletes only the entries it made here. See https://bford.info/cachedir/\n")
ENTRY_NAME = re.compile(r"[0-9a-f]{64}")
TEMP_NAME = re.compile(r"\.tmp-[0-9a-f]{16}")


def claim_cache_folder(folder: str) -> int:
    """The cache folder `folder` as a directory file descriptor (the caller closes it): created
    0700 with the tag when missing; an existing folder is taken when it holds the tag, or nothing
    but cache entries and perhaps a tag not (or no longer) ours, and is then made 0700 and
    tagged. Raises UsageError for a folder holding
    anything else (nothing in it is touched), PermissionDenied for a symlink or another user's
    folder."""
    fd = open_owned_folder(folder)
    try:
        if not _is_tagged(fd):
            foreign = sorted(name for name in os.listdir(fd) if not _is_cache_name(name) and name != TAG_NAME)
            if foreign:
                shown = ", ".join(repr(n) for n in foreign[:3]) + (", ..." if len(foreign) > 3 else "")
                raise UsageError(f"--cache-dir {folder} holds files fsbackup did not put there ({shown}); "
                                 "the cache deletes what it holds: give a new or empty folder")
            tag = open_private(fd, TAG_NAME, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            with open(tag, "wb") as f:
                f.write(CACHE_TAG)
        if stat.S_IMODE(os.fstat(fd).st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_tagged(folder_fd: int) -> bool:
    try:
        fd = os.open(TAG_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder_fd)
    except OSError:
        return False
    with open(fd, "rb") as f:
        return f.read(len(CACHE_TAG) + 1) == CACHE_TAG


def _is_cache_name(name: str) -> bool:
    return bool(ENTRY_NAME.fullmatch(name) or TEMP_NAME.fullmatch(name))


class DiskCache:
    """At most `max_bytes` of entries in `folder` (see `claim_cache_folder`), least recently
    used evicted first. Thread-safe. The folder's descriptor is closed when the cache is no
    longer referenced (fetch threads still at work keep it alive), or by `close`, which only a
    sole user of the cache may call."""

    def __init__(self, folder: str, max_bytes: int):
        self.folder = folder
        self.max_bytes = max_bytes
        self._dir = claim_cache_folder(folder)
        self.close = weakref.finalize(self, os.close, self._dir)
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, int] = OrderedDict()   # name -> size, least recently used first
        self._bytes = 0
        found = []
        for entry in os.scandir(self._dir):
            if not entry.is_file(follow_symlinks=False):
                continue
            if TEMP_NAME.fullmatch(entry.name):          # left by a crash while it was written
                self._unlink(entry.name)
            elif ENTRY_NAME.fullmatch(entry.name):
                st = entry.stat(follow_symlinks=False)
                found.append((st.st_atime, entry.name, st.st_size))
        for _, name, size in sorted(found):
            self._entries[name] = size
            self._bytes += size
        self._evict()

    def _unlink(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self._dir)
        except OSError:
            pass

    def get(self, block_id: bytes) -> bytes | None:
        name = block_id.hex()
        with self._lock:
            if name not in self._entries:
                return None
            self._entries.move_to_end(name)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._dir)
            with open(fd, "rb") as f:
                return f.read()
        except OSError:
            self.discard(block_id)
            return None

    def put(self, block_id: bytes, stored: bytes) -> None:
        name = block_id.hex()
        if len(stored) > self.max_bytes:
            return
        tmp = ".tmp-" + secrets.token_hex(8)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=self._dir)
            with open(fd, "wb") as f:
                f.write(stored)
            os.rename(tmp, name, src_dir_fd=self._dir, dst_dir_fd=self._dir)
        except OSError:          # a full or broken cache disk only costs speed
            self._unlink(tmp)
            return
        with self._lock:
            if name not in self._entries:
                self._entries[name] = len(stored)
                self._bytes += len(stored)
            self._evict()

    def discard(self, block_id: bytes) -> None:
        name = block_id.hex()
        with self._lock:
            size = self._entries.pop(name, None)
            if size is not None:
                self._bytes -= size
        self._unlink(name)

    def _evict(self) -> None:
        while self._bytes > self.max_bytes and self._entries:
            name, size = self._entries.popitem(last=False)
            self._bytes -= size
            self._unlink(name)
