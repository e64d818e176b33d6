"""Restore all or part of a version into a target directory.

Large files: blocks are fetched, authenticated and decompressed by worker threads, a bounded
window ahead of the writer, and the calling thread writes them in order. Small files are taken in
batches: their contents and block locations are looked up in a few queries, their blocks sorted by
place in their volumes and fetched by worker threads as runs (one range read for many adjacent
blocks), and the calling thread writes the files in that order while later runs arrive. Writing
small files on one thread keeps the interpreter lock from bouncing between threads on every system
call, which cost more than the overlap gained. The calling thread alone uses the local index.

A file is written under a temporary name in its directory (`.fsbackup-restore-<random>`, mode 0600)
and renamed to its own name only once its content is complete and matches the hash recorded at
backup, its owner, mode, xattrs and times already set: a final name never holds a partial file or
wrong metadata, and a file it replaces (--overwrite) stays whole until then. A file whose data
cannot be authenticated, or whose content hash does not match, is reported and its temporary
removed, as on any error or interruption: wrong bytes are never left behind. Only a killed
process leaves its temporary; the next restore into that directory removes it.
"""
from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import stat
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from . import format as fmt
from .backup import HOLE_MARK
from .blockcache import BlockCache
from .errors import (CorruptObject, FsbackupError, NoSpace, NoSuchObject, PathNotFound, PermissionDenied,
                     TargetConflict, UsageError)
from .progress import Progress
from .repository import Repository, block_runs
from .tree import Node, VersionTree

T = TypeVar("T")

FETCH_WINDOW = 16          # blocks fetched ahead of the writer
CACHE_BYTES = 64 << 20     # recently used blocks: a block shared by many files is fetched once
SMALL_FILE = 1 << 20       # files up to this size are restored in batches
SMALL_BATCH_FILES = 512    # small files looked up together ...
SMALL_BATCH_BYTES = 16 << 20   # ... and bytes of them fetched ahead of the writer per batch
RUN_BYTES = 4 << 20        # a range read covers adjacent blocks up to this many bytes ...
RUN_GAP = 64 << 10         # ... reading over gaps this small, cheaper than another request
RESTORE_THREADS = 4
TEMP_PREFIX = b".fsbackup-restore-"     # + 16 hex digits: a file being written
TEMP_NAME = re.compile(re.escape(TEMP_PREFIX) + rb"[0-9a-f]{16}")


@dataclass
class RestoreStats:
    files: int = 0
    dirs: int = 0
    others: int = 0
    bytes_written: int = 0
    duration: float = 0.0
    damaged: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class _FileJob:
    """A large file being written: under `temp` (None once renamed or removed), to become `path`."""
    __slots__ = ("path", "temp", "node", "fd", "hasher", "expected_hash", "error")

    def __init__(self, path: bytes, temp: bytes, node: Node, fd: int, hasher, expected_hash: bytes):
        self.path, self.temp, self.node, self.fd = path, temp, node, fd
        self.hasher, self.expected_hash = hasher, expected_hash
        self.error: str | None = None

    def discard(self) -> None:
        """Close and remove the temporary file, if still there (never raises: used on the way out)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.temp is not None:
            _remove_quietly(self.temp)
            self.temp = None


def _is_root() -> bool:
    return os.geteuid() == 0


class Restore:
    def __init__(self, repo: Repository, tree: VersionTree, target: str, overwrite: bool = False,
                 progress: Progress | None = None, warn: Callable[[str], None] | None = None):
        self.repo = repo
        self.tree = tree
        self.target = os.path.abspath(os.fsencode(target))
        self.overwrite = overwrite
        self.progress = progress or Progress(enabled=False)
        self.warn_cb = warn or (lambda m: None)
        self.stats = RestoreStats()
        self.cache = BlockCache(CACHE_BYTES)
        self.links: dict[tuple[int, int], bytes] = {}   # (dev, ino) -> the path restored first for it
        self.queue: deque = deque()
        self.open_jobs: set[_FileJob] = set()     # large files being written, removed if the restore stops
        self.small_batch: list[tuple[bytes, Node]] = []
        self.small_batch_bytes = 0
        self.small_ready: deque[list] = deque()   # batches looked up and being fetched, oldest first
        self.fresh_dirs: set[bytes] = set()       # directories this restore created: nothing to replace in them
        self.warned_xattrs = False
        self.as_root = _is_root()                 # asked once, not for every file

    def warn(self, msg: str) -> None:
        self.stats.warnings.append(msg)
        self.warn_cb(msg)

    def run(self, paths: list[str] | None = None) -> RestoreStats:
        started = time.monotonic()
        if os.path.lexists(self.target) and not os.path.isdir(self.target):
            raise UsageError(f"restore target {os.fsdecode(self.target)} is not a directory")
        selection = self._selection(paths or ["/"])
        total = self._check_conflicts(selection)
        try:
            os.makedirs(self.target, exist_ok=True)
        except OSError as e:
            raise _os_error(e, self.target) from None
        self.progress.start("restore", total_bytes=total)
        dirs: list[tuple[bytes, Node]] = []
        # I/O-bound (storage reads, file creation): more threads than cores.
        self.pool = ThreadPoolExecutor(RESTORE_THREADS, thread_name_prefix="fsbackup-restore")
        try:
            for path, node in self._items(selection):
                dest = self.target + path if path != b"/" else self.target
                try:
                    self._restore_node(dest, node, dirs)
                except OSError as e:
                    raise _os_error(e, dest) from None
            self._drain(0)
            self._flush_small()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
            for job in self.open_jobs:     # stopped by an error or Ctrl-C: no partial file stays
                job.discard()
        for dest, node in reversed(dirs):   # children first: setting a dir's mtime last keeps it
            self._set_metadata(dest, node, is_link=False)
        self.progress.finish()
        self.stats.duration = time.monotonic() - started
        return self.stats

    # ---- what to restore ----------------------------------------------------------------

    def _selection(self, paths: list[str]) -> list[tuple[bytes, Node, bool]]:
        """(path, node, walk it?) for the ancestor directories of the selected paths, then the paths."""
        tops: dict[bytes, Node] = {}
        for p in paths:
            node = self.tree.resolve(p)
            tops[self.tree.path_of(node)] = node
        # A path inside another selected path is covered by it.
        tops = {p: n for p, n in tops.items()
                if not any(p != o and p.startswith(o.rstrip(b"/") + b"/") for o in tops)}
        ancestors: dict[bytes, Node] = {}
        for path in tops:
            parts = [x for x in path.split(b"/") if x][:-1]
            for i in range(len(parts)):
                anc = b"/" + b"/".join(parts[:i + 1])
                if anc not in ancestors:
                    ancestors[anc] = self.tree.resolve(anc)
        return ([(p, n, False) for p, n in sorted(ancestors.items())]
                + [(p, n, True) for p, n in sorted(tops.items())])

    def _items(self, selection):
        for path, node, walk in selection:
            if walk:
                yield from self.tree.walk(node, path)
            else:
                yield path, node

    def _check_conflicts(self, selection) -> int:
        """Refuse before writing anything if the target holds files we would replace; sum the bytes."""
        total, conflicts = 0, []
        missing: set[bytes] = set()     # directories absent from the target: their entries are too
        for path, node in self._items(selection):
            if node.type == "f":
                total += node.size
            dest = self.target + path if path != b"/" else self.target
            if self.overwrite:
                continue
            st = None if dest.rpartition(b"/")[0] in missing else _lstat_or_none(dest)
            if node.type == "d" and (st is None or not stat.S_ISDIR(st.st_mode)):
                missing.add(dest)        # (not looked into through a symlink in its place)
            if st is not None and (node.type != "d" or not stat.S_ISDIR(st.st_mode)):
                conflicts.append(dest)   # a directory replaces a file or symlink only with --overwrite
        if conflicts:
            raise TargetConflict(f"{len(conflicts)} file(s) already exist in the target, e.g. "
                                 f"{os.fsdecode(conflicts[0])}; use --overwrite to replace them or pick an empty --target")
        return total

    # ---- writing ------------------------------------------------------------------------

    def _make_room(self, dest: bytes, node_type: str) -> None:
        """Clear what stands at `dest` (with --overwrite; else the conflict check found nothing) in
        the way of an entry of `node_type`. A directory stays for a directory. A file, or a hard
        link, replaces anything but a directory by a rename, atomically: what stands there stays
        whole until then."""
        try:
            st = os.lstat(dest)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if node_type != "d":
                shutil.rmtree(dest)
        elif node_type != "f":
            os.unlink(dest)

    def _remove_stale_temporaries(self, directory: bytes) -> None:
        """Remove the temporary files a killed restore left in `directory`, one that existed before.
        Only a tidy-up: a directory that cannot be listed is left as it is."""
        try:
            with os.scandir(directory) as entries:
                stale = [e.path for e in entries if TEMP_NAME.fullmatch(e.name) and e.is_file(follow_symlinks=False)]
        except OSError:
            return
        for path in stale:
            _remove_quietly(path)

    def _restore_node(self, dest: bytes, node: Node, dirs: list) -> None:
        in_fresh_dir = dest.rpartition(b"/")[0] in self.fresh_dirs
        if not in_fresh_dir:
            self._make_room(dest, node.type)
        if node.type == "d":
            if in_fresh_dir or not os.path.lexists(dest):
                os.makedirs(dest, mode=0o700, exist_ok=True)
                self.fresh_dirs.add(dest)
            else:
                self._remove_stale_temporaries(dest)
            dirs.append((dest, node))
            self.stats.dirs += 1
            return
        if node.nlink > 1:
            key = (node.dev, node.ino)
            if key in self.links:
                self._drain(0)   # the first link's content must be in place first
                self._flush_small()
                first = self.links.get(key)    # dropped if its content could not be restored
                if first is not None:
                    self._link(first, dest)
                    self.stats.files += node.type == "f"
                    return
            self.links[key] = dest
        if node.type == "f":
            self._restore_file(dest, node)
        elif node.type == "l":
            os.symlink(node.target, dest)
            self._set_metadata(dest, node, is_link=True)
            self.stats.others += 1
        elif node.type == "p":
            os.mkfifo(dest, stat.S_IMODE(node.mode))
            self._set_metadata(dest, node, is_link=False)
            self.stats.others += 1
        elif node.type in "cb":
            if not self.as_root:
                self.warn(f"{os.fsdecode(dest)}: device nodes can only be restored as root; skipped")
                return
            os.mknod(dest, node.mode, node.rdev)
            self._set_metadata(dest, node, is_link=False)
            self.stats.others += 1

    def _restore_file(self, dest: bytes, node: Node) -> None:
        if node.size <= SMALL_FILE:
            self.small_batch.append((dest, node))
            self.small_batch_bytes += node.size
            if len(self.small_batch) >= SMALL_BATCH_FILES or self.small_batch_bytes >= SMALL_BATCH_BYTES:
                self._start_small_batch()
                while len(self.small_ready) > 1:     # one batch fetched ahead of the one being written
                    self._write_small_batch(self.small_ready.popleft())
            return
        content = self.tree.content(node.content)
        temp, fd = _create_temporary(dest)
        job = _FileJob(dest, temp, node, fd, self.repo.keys.content_hasher(), content.hash)
        self.open_jobs.add(job)
        if content.extents and content.extents[-1][0] == fmt.HOLE_ID:
            os.ftruncate(fd, content.size)   # holes stay holes: we write only data extents
        offset = 0
        for block_id, length in content.extents:
            if block_id == fmt.HOLE_ID:
                self.queue.append(("hole", job, length))
            else:
                try:
                    location = self.repo.block_location(block_id)
                except NoSuchObject as e:
                    self.queue.append(("fail", job, str(e)))
                else:
                    fut = self.pool.submit(self.cache.get, block_id,
                                           lambda bid, loc=location: self.repo.fetch_block(bid, loc))
                    self.queue.append(("data", job, offset, fut))
                    self._drain(FETCH_WINDOW)
            offset += length
        self.queue.append(("end", job))
        self._drain(FETCH_WINDOW)

    def _flush_small(self) -> None:
        """Restore every small file taken so far."""
        if self.small_batch:
            self._start_small_batch()
        while self.small_ready:
            self._write_small_batch(self.small_ready.popleft())

    def _start_small_batch(self) -> None:
        """Look the batch up and start fetching its blocks, as runs in volume order."""
        batch, self.small_batch, self.small_batch_bytes = self.small_batch, [], 0
        contents = self.tree.contents(sorted({node.content for _, node in batch if node.content is not None}))
        block_ids = {bid for c in contents.values() for bid, _ in c.extents if bid != fmt.HOLE_ID}
        sources: dict[bytes, object] = {}          # block id -> its bytes, or the Future of its run
        for bid in block_ids:
            data = self.cache.peek(bid)
            if data is not None:
                sources[bid] = data
        locations = self.repo.block_locations(bid for bid in block_ids if bid not in sources)
        by_place = sorted(locations.items(), key=lambda item: (item[1][0], item[1][1]))
        for run in block_runs(by_place, RUN_BYTES, RUN_GAP):
            self._submit_run(run, sources)

        def place(item):
            content = contents.get(item[1].content)
            first = next((bid for bid, _ in content.extents if bid != fmt.HOLE_ID), None) if content else None
            loc = locations.get(first)
            return (loc[0], loc[1]) if loc else ("", 0)
        batch.sort(key=place)                      # the order the runs arrive in
        self.small_ready.append([(dest, node, contents.get(node.content), sources) for dest, node in batch])

    def _submit_run(self, run: list, sources: dict) -> None:
        fut = self.pool.submit(self.repo.fetch_run, run)
        for bid, _ in run:
            sources[bid] = fut

    def _write_small_batch(self, batch: list) -> None:
        for dest, node, content, sources in batch:
            try:
                written, error = self._write_small(dest, node, content, sources)
            except OSError as e:
                raise _os_error(e, dest) from None
            self.stats.bytes_written += written
            self.progress.advance(nbytes=written, files=1)
            if error is None:
                self.stats.files += 1
            else:
                self.stats.damaged.append(os.fsdecode(dest))
                self.warn(f"{os.fsdecode(dest)} not restored: {error}")

    def _block(self, bid: bytes, sources: dict) -> bytes:
        source = sources.get(bid)
        if source is None:
            raise NoSuchObject(f"block {bid.hex()[:16]} (not in any stored volume)")
        if isinstance(source, bytes):
            return source
        data = source.result()[bid]
        if not isinstance(data, bytes):
            raise data
        self.cache.put(bid, data)
        return data

    def _write_small(self, dest: bytes, node: Node, content, sources: dict) -> tuple[int, str | None]:
        """One small file, whole. Returns (bytes written, why it was left out or None)."""
        if content is None:
            raise PathNotFound(f"content {node.content} is missing from the local index; run 'fsbackup repair'")
        hasher = self.repo.keys.content_hasher()
        written, error, offset = 0, None, 0
        temp, fd = _create_temporary(dest)
        try:
            try:
                if content.extents and content.extents[-1][0] == fmt.HOLE_ID:
                    os.ftruncate(fd, content.size)
                for block_id, length in content.extents:
                    if block_id == fmt.HOLE_ID:
                        hasher.update(HOLE_MARK + length.to_bytes(8, "little"))
                    else:
                        try:
                            data = self._block(block_id, sources)
                        except (CorruptObject, NoSuchObject) as e:
                            error = str(e)
                            break
                        _pwrite_all(fd, data, offset, dest)
                        hasher.update(data)
                        written += len(data)
                    offset += length
                if error is None and hasher.digest() != content.hash:
                    error = "its content does not match the hash recorded at backup"
                if error is None:
                    # Through the open descriptor: no path lookups, and the times are set after the last write.
                    self._set_metadata(fd, node, is_link=False, path=dest)
            finally:
                os.close(fd)
            if error is None:
                os.rename(temp, dest)
                temp = None
        finally:
            if temp is not None:
                _remove_quietly(temp)
        if error is not None:
            self._forget_link(node, dest)
        return written, error

    def _drain(self, keep: int) -> None:
        """Write finished items in order until at most `keep` fetches are in flight."""
        while self.queue and (len(self.queue) > keep or self.queue[0][0] in ("hole", "end", "fail")
                              or self.queue[0][-1].done()):
            item = self.queue.popleft()
            kind, job = item[0], item[1]
            if kind == "data":
                try:
                    data = item[3].result()
                except (CorruptObject, NoSuchObject) as e:
                    job.error = job.error or str(e)
                    continue
                if job.error is None:
                    _pwrite_all(job.fd, data, item[2], job.path)
                    job.hasher.update(data)
                    self.stats.bytes_written += len(data)
                    self.progress.advance(nbytes=len(data))
            elif kind == "hole":
                job.hasher.update(HOLE_MARK + item[2].to_bytes(8, "little"))
            elif kind == "fail":
                job.error = job.error or item[2]
            else:
                self._finish_file(job)

    def _finish_file(self, job: _FileJob) -> None:
        """Rename a complete, checked file into place, its metadata set first; or report it and
        remove its temporary. Until it is done, the job stays open: if this raises, `run` removes it."""
        if job.error is None and job.hasher.digest() != job.expected_hash:
            job.error = "its content does not match the hash recorded at backup"
        if job.error is not None:
            job.discard()
            self.open_jobs.discard(job)
            self._forget_link(job.node, job.path)
            self.stats.damaged.append(os.fsdecode(job.path))
            self.warn(f"{os.fsdecode(job.path)} not restored: {job.error}")
            return
        self._set_metadata(job.fd, job.node, is_link=False, path=job.path)
        os.close(job.fd)
        job.fd = -1
        os.rename(job.temp, job.path)
        job.temp = None
        self.open_jobs.discard(job)
        self.stats.files += 1
        self.progress.advance(files=1)

    def _forget_link(self, node: Node, path: bytes) -> None:
        """`path` was not restored: its other hard links must not link to it (nor, with
        --overwrite, to the old file still there); the next one is restored on its own."""
        if node.nlink > 1 and self.links.get((node.dev, node.ino)) == path:
            del self.links[(node.dev, node.ino)]

    def _link(self, first: bytes, dest: bytes) -> None:
        """Make `dest` a hard link to `first`, replacing what stands there by a rename."""
        temp, _ = _at_temporary_name(dest, lambda temp: os.link(first, temp, follow_symlinks=False))
        try:
            os.rename(temp, dest)
        except BaseException:
            _remove_quietly(temp)
            raise

    def _set_metadata(self, dest: bytes | int, node: Node, is_link: bool, path: bytes | None = None) -> None:
        """`dest` is a path, or a descriptor open on the file at `path`."""
        path = dest if path is None else path
        nofollow = {} if isinstance(dest, int) else {"follow_symlinks": False}  # a descriptor follows nothing
        if self.as_root:
            try:
                os.chown(dest, node.uid, node.gid, **nofollow)
            except OSError as e:
                self.warn(f"cannot set owner of {os.fsdecode(path)}: {e.strerror}")
        if not is_link:
            os.chmod(dest, stat.S_IMODE(node.mode))
        for name, value in node.xattrs.items():
            try:
                os.setxattr(dest, name, value, **nofollow)
            except OSError as e:
                if not self.warned_xattrs:
                    self.warned_xattrs = True
                    self.warn(f"cannot set extended attribute {os.fsdecode(name)} on {os.fsdecode(path)}: "
                              f"{e.strerror} (further xattr errors not shown)")
        os.utime(dest, ns=(node.atime_ns, node.mtime_ns), **nofollow)


def _at_temporary_name(dest: bytes, create: Callable[[bytes], T]) -> tuple[bytes, T]:
    """(a new temporary name in the directory of `dest`, what `create` returned making it); a name
    `create` finds taken (FileExistsError) is replaced by another."""
    directory = dest.rpartition(b"/")[0]
    while True:
        temp = directory + b"/" + TEMP_PREFIX + secrets.token_hex(8).encode()
        try:
            return temp, create(temp)
        except FileExistsError:
            continue


def _create_temporary(dest: bytes) -> tuple[bytes, int]:
    """A new empty file, mode 0600, under a temporary name next to `dest`: (its path, a descriptor
    open for writing). O_EXCL and O_NOFOLLOW: never an existing file, nor through a symlink."""
    return _at_temporary_name(dest, lambda temp: os.open(
        temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))


def _lstat_or_none(path: bytes) -> os.stat_result | None:
    """What stands at `path`, or None where nothing can be found (as for os.path.lexists)."""
    try:
        return os.lstat(path)
    except OSError:
        return None


def _remove_quietly(path: bytes) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _pwrite_all(fd: int, data: bytes, offset: int, path: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.pwrite(fd, view, offset)
        except OSError as e:
            raise _os_error(e, path) from None
        view, offset = view[n:], offset + n


def _os_error(e: OSError, path: bytes) -> FsbackupError:
    where = os.fsdecode(path)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"no space left on device while restoring {where}; free space or choose another --target")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDenied(f"permission denied writing {where}: {e.strerror}")
    return FsbackupError(f"cannot restore {where}: {e.strerror}")
