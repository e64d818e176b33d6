"""A bounded on-disk cache of stored (still encrypted) blocks, for the mount.

Entries are the ciphertext as fetched, so the cache reveals nothing and every use authenticates
the block again (a damaged entry is detected, dropped and fetched anew). Owner-only permissions.
"""
from __future__ import annotations

import os
import secrets
import threading
from collections import OrderedDict

from .private import make_private_folder


class DiskCache:
    def __init__(self, folder: str, max_bytes: int):
        self.folder = folder
        self.max_bytes = max_bytes
        make_private_folder(folder)
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, int] = OrderedDict()   # name -> size, least recently used first
        self._bytes = 0
        found = []
        for entry in os.scandir(folder):
            if entry.name.startswith(".tmp-"):
                os.unlink(entry.path)
                continue
            st = entry.stat()
            found.append((st.st_atime, entry.name, st.st_size))
        for _, name, size in sorted(found):
            self._entries[name] = size
            self._bytes += size
        self._evict()

    def _path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def get(self, block_id: bytes) -> bytes | None:
        name = block_id.hex()
        with self._lock:
            if name not in self._entries:
                return None
            self._entries.move_to_end(name)
        try:
            with open(self._path(name), "rb") as f:
                return f.read()
        except OSError:
            self.discard(block_id)
            return None

    def put(self, block_id: bytes, stored: bytes) -> None:
        name = block_id.hex()
        if len(stored) > self.max_bytes:
            return
        tmp = self._path(".tmp-" + secrets.token_hex(8))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(fd, "wb") as f:
                f.write(stored)
            os.rename(tmp, self._path(name))
        except OSError:          # a full or broken cache disk only costs speed
            try:
                os.unlink(tmp)
            except OSError:
                pass
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
        try:
            os.unlink(self._path(name))
        except OSError:
            pass

    def _evict(self) -> None:
        while self._bytes > self.max_bytes and self._entries:
            name, size = self._entries.popitem(last=False)
            self._bytes -= size
            try:
                os.unlink(self._path(name))
            except OSError:
                pass
