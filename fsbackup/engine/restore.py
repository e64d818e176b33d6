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

Nothing below the target is reached by path (restore often runs as root in folders other users
can write): the target is opened once, and every directory below it relative to its parent's
descriptor with O_NOFOLLOW (`fsutil.DirFds`); every entry is made, replaced, linked and given its
metadata relative to its directory's descriptor, or through its own. A directory swapped for a
symlink while the restore runs is never followed: the restore stops with an error naming it.
"""
from __future__ import annotations

import errno
import functools
import os
import re
import secrets
import shutil
import stat
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, TypeVar

from ..catalog import BlockLocation
from ..catalog.tree import Content, Node, VersionTree
from ..codec import wire
from ..errors import (
    CorruptObject,
    FsbackupError,
    NoSpace,
    NoSuchObject,
    PathNotFound,
    PermissionDenied,
    TargetConflict,
    UsageError,
    os_error_kind,
)
from ..fsutil import DirFds, at_path, chmod_at, open_dir, outermost, split
from ..progress import SILENT, Reporter
from ..repository import Repository, block_runs
from ..repository.blockcache import BlockCache

T = TypeVar("T")

FETCH_WINDOW = 16          # blocks fetched ahead of the writer
CACHE_BYTES = 64 << 20     # recently used blocks: a block shared by many files is fetched once
SMALL_FILE = 1 << 20       # files up to this size are restored in batches
SMALL_BATCH_FILES = 512    # small files looked up together ...
SMALL_BATCH_BYTES = 16 << 20   # ... and bytes of them fetched ahead of the writer per batch
RUN_BYTES = 4 << 20        # a range read covers adjacent blocks up to this many bytes ...
RUN_GAP = 64 << 10         # ... reading over gaps this small, cheaper than another request
LARGE_RUN_BYTES = 8 << 20  # on remote storage, a range read of a large file's blocks covers up to this many bytes,
RUNS_AHEAD = 3             # and this many runs after the writer's are on their way (memory: 4 runs)
RESTORE_THREADS = 4
TEMP_PREFIX = b".fsbackup-restore-"     # + 16 hex digits: a file being written
TEMP_NAME = re.compile(re.escape(TEMP_PREFIX) + rb"[0-9a-f]{16}")
DIR_FDS = 64               # directory descriptors kept open (the small-file batches' directories)


@dataclass
class RestoreStats:
    files: int = 0
    dirs: int = 0
    others: int = 0
    bytes_written: int = 0
    duration: float = 0.0
    damaged: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        return {"files": self.files, "dirs": self.dirs, "others": self.others, "bytes_written": self.bytes_written,
                "duration": round(self.duration, 3), "damaged": self.damaged, "warnings": self.warnings}


class _FileJob:
    """A large file being written: under `temp` (None once renamed or removed) in the directory
    open as `dir_fd` (its own descriptor, closed with the job), to become `name` there; `path` is
    its path, for messages."""
    __slots__ = ("path", "rel", "dir_fd", "name", "temp", "node", "fd", "hasher", "expected_hash", "error")

    def __init__(self, path: bytes, rel: bytes, dir_fd: int, temp: bytes, node: Node, fd: int, hasher,
                 expected_hash: bytes):
        self.path, self.rel, self.dir_fd, self.name = path, rel, dir_fd, split(rel)[1]
        self.temp: bytes | None = temp
        self.node, self.fd = node, fd
        self.hasher, self.expected_hash = hasher, expected_hash
        self.error: str | None = None

    def close(self) -> None:
        """Close the file and its directory, and remove the temporary if still there (never
        raises: used on the way out too)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.temp is not None:
            _remove_quietly(self.temp, self.dir_fd)
            self.temp = None
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1


# The pieces of a large file in the writer's queue, in file order.
class _Data(NamedTuple):
    """A block on its way (`fetched`: its bytes, or the run it comes in, `Repository.fetch_run`),
    written at `offset` once it arrives."""
    job: _FileJob
    offset: int
    fetched: Future
    block_id: bytes

    def data(self) -> bytes:
        """The block's bytes; CorruptObject or NoSuchObject when it cannot be had."""
        fetched = self.fetched.result()
        if isinstance(fetched, dict):
            fetched = fetched[self.block_id]
            if not isinstance(fetched, bytes):
                raise fetched
        return fetched


class _Hole(NamedTuple):
    """A run of zeros the file does not store: only hashed."""
    job: _FileJob
    length: int


class _Failed(NamedTuple):
    """A block that cannot be had: the file is reported, not restored."""
    job: _FileJob
    why: str


class _End(NamedTuple):
    """The file's last piece was queued: check it and put it in place."""
    job: _FileJob


class _FileRuns:
    """A large file's stored blocks on remote storage, grouped into runs (one range read each,
    `Repository.fetch_run`), in file order. Wanting a block (`fetch`) starts its run and the
    RUNS_AHEAD runs after it, so that several range reads are in flight while the writer works
    through the window; the runs before it are let go (the writer's queue holds what it still
    needs), so memory stays bounded whatever the file's size. A block wanted again after its run
    was let go (a repeat further on in the file) is fetched alone (`fetch_alone`)."""

    def __init__(self, runs: list[list[tuple[bytes, BlockLocation]]],
                 submit: Callable[[list[tuple[bytes, BlockLocation]]], Future],
                 fetch_alone: Callable[[bytes], Future]):
        self.runs, self.submit, self.fetch_alone = runs, submit, fetch_alone
        self.run_of = {block_id: k for k, run in enumerate(runs) for block_id, _ in run}
        self.started: dict[int, Future] = {}      # run number -> its range read, for the runs kept
        self.kept_from = 0                         # runs before this one were let go
        self.start_next = 0                        # the first run not started yet

    def fetch(self, block_id: bytes) -> Future:
        k = self.run_of[block_id]
        if k < self.kept_from:
            return self.fetch_alone(block_id)
        for j in range(max(k, self.start_next), min(k + 1 + RUNS_AHEAD, len(self.runs))):
            self.started[j] = self.submit(self.runs[j])
            self.start_next = j + 1
        for j in range(self.kept_from, k):
            self.started.pop(j, None)
        self.kept_from = k
        return self.started[k]


def _is_root() -> bool:
    return os.geteuid() == 0


class Restore:
    def __init__(self, repo: Repository, tree: VersionTree, target: str, overwrite: bool = False,
                 reporter: Reporter | None = None):
        self.repo = repo
        self.tree = tree
        self.target = os.path.abspath(os.fsencode(target))
        self.overwrite = overwrite
        self.reporter = reporter or SILENT
        self.progress = self.reporter.progress()
        self.stats = RestoreStats()
        self.cache = BlockCache(CACHE_BYTES)
        self.links: dict[tuple[int, int], bytes] = {}   # (dev, ino) -> the relative path restored first for it
        self.queue: deque[_Data | _Hole | _Failed | _End] = deque()   # a large file's pieces, in file order
        self.open_jobs: set[_FileJob] = set()     # large files being written, removed if the restore stops
        self.small_batch: list[tuple[bytes, Node]] = []   # (relative path, node)
        self.small_batch_bytes = 0
        self.small_ready: deque[list] = deque()   # batches looked up and being fetched, oldest first
        self.fresh_dirs: set[bytes] = set()       # directories this restore created (relative paths): nothing
                                                  # to replace in them
        self.warned_xattrs = False
        self.as_root = _is_root()                 # asked once, not for every file

    def warn(self, msg: str) -> None:
        self.stats.warnings.append(msg)
        self.reporter.warn(msg)

    def run(self, paths: list[str] | None = None) -> RestoreStats:
        started = time.monotonic()
        if os.path.lexists(self.target) and not os.path.isdir(self.target):
            raise UsageError(f"restore target {os.fsdecode(self.target)} is not a directory")
        selection = self._selection(paths or ["/"])
        total = self._check_conflicts(selection)
        try:
            os.makedirs(self.target, exist_ok=True)
            # The target's own path is followed: it is the user's choice. Nothing below it is.
            target_fd = os.open(self.target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise _os_error(e, self.target) from None
        self.dir_fds = DirFds(target_fd, DIR_FDS)
        try:
            self._restore(selection, total)
        finally:
            self.dir_fds.close()
            os.close(target_fd)
        self.stats.duration = time.monotonic() - started
        return self.stats

    def _restore(self, selection, total: int) -> None:
        self.progress.start("restore", total_bytes=total)
        dirs: list[tuple[bytes, Node]] = []
        # I/O-bound (storage reads, file creation): more threads than cores; on remote storage, one
        # per connection the storage suits (S3's 8), so that every range read in flight has one.
        threads = RESTORE_THREADS if self.repo.storage_is_local else max(RESTORE_THREADS, self.repo.connections)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="fsbackup-restore")
        try:
            for path, node in self._items(selection):
                rel = path.strip(b"/")
                try:
                    self._restore_node(rel, node, dirs)
                except OSError as e:
                    raise _os_error(e, self._path(rel)) from None
            self._drain(0)
            self._flush_small()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
            for job in self.open_jobs:     # stopped by an error or Ctrl-C: no partial file stays
                job.close()
        for rel, node in reversed(dirs):   # children first: setting a dir's mtime last keeps it
            self.dir_fds.trim()
            try:
                self._set_metadata(self.dir_fds.get(rel), node, self._path(rel))
            except OSError as e:
                raise _os_error(e, self._path(rel)) from None
        self.progress.finish()

    def _path(self, rel: bytes) -> bytes:
        """The path of an entry in the target, for messages only."""
        return self.target.rstrip(b"/") + b"/" + rel if rel else self.target

    # ---- what to restore ----------------------------------------------------------------

    def _selection(self, paths: list[str]) -> list[tuple[bytes, Node, bool]]:
        """(path, node, walk it?) for the ancestor directories of the selected paths, then the paths."""
        tops: dict[bytes, Node] = {}
        for p in paths:
            node = self.tree.resolve(p)
            tops[self.tree.path_of(node)] = node
        tops = {p: tops[p] for p in outermost(tops)}
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
        try:
            target_fd = None if self.overwrite else os.open(self.target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            target_fd = None            # an absent target holds nothing to replace
        except OSError as e:
            raise _os_error(e, self.target) from None
        dir_fds = DirFds(target_fd, DIR_FDS) if target_fd is not None else None
        try:
            for path, node in self._items(selection):
                if node.type == "f":
                    total += node.size
                rel = path.strip(b"/")
                if dir_fds is None or not rel:      # (the target itself is a directory)
                    continue
                parent, name = split(rel)
                if parent in missing:
                    st = None
                else:
                    dir_fds.trim()
                    st = _lstat_or_none(name, dir_fds.get(parent))
                if node.type == "d" and (st is None or not stat.S_ISDIR(st.st_mode)):
                    missing.add(rel)         # (not looked into through a symlink in its place)
                if st is not None and (node.type != "d" or not stat.S_ISDIR(st.st_mode)):
                    conflicts.append(rel)    # a directory replaces a file or symlink only with --overwrite
        except OSError as e:
            raise _os_error(e, self.target) from None
        finally:
            if dir_fds is not None:
                dir_fds.close()
                os.close(dir_fds.base_fd)
        if conflicts:
            raise TargetConflict(f"{len(conflicts)} file(s) already exist in the target, e.g. "
                                 f"{os.fsdecode(self._path(conflicts[0]))}; use --overwrite to replace them "
                                 "or pick an empty --target")
        return total

    # ---- writing ------------------------------------------------------------------------

    def _make_room(self, dir_fd: int, rel: bytes, node_type: str) -> None:
        """Clear what stands at `rel` (with --overwrite; else the conflict check found nothing) in
        the way of an entry of `node_type`. A directory stays for a directory. A file, or a hard
        link, replaces anything but a directory by a rename, atomically: what stands there stays
        whole until then."""
        name = split(rel)[1]
        st = _lstat_or_none(name, dir_fd)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            if node_type != "d":
                self.dir_fds.forget(rel)
                shutil.rmtree(name, dir_fd=dir_fd)     # by descriptors too: never through a symlink
        elif node_type != "f":
            os.unlink(name, dir_fd=dir_fd)

    def _remove_stale_temporaries(self, dir_fd: int) -> None:
        """Remove the temporary files a killed restore left in the directory open as `dir_fd`, one
        that existed before. Only a tidy-up: a directory that cannot be listed is left as it is."""
        try:
            with os.scandir(dir_fd) as entries:
                stale = [os.fsencode(e.name) for e in entries if TEMP_NAME.fullmatch(os.fsencode(e.name))
                         and e.is_file(follow_symlinks=False)]
        except OSError:
            return
        for name in stale:
            _remove_quietly(name, dir_fd)

    def _restore_node(self, rel: bytes, node: Node, dirs: list) -> None:
        if not rel:                      # the root of the selection: the target itself
            self._remove_stale_temporaries(self.dir_fds.base_fd)
            dirs.append((rel, node))
            self.stats.dirs += 1
            return
        self.dir_fds.trim()
        parent, name = split(rel)
        parent_fd = self.dir_fds.get(parent)
        in_fresh_dir = parent in self.fresh_dirs
        if not in_fresh_dir:
            self._make_room(parent_fd, rel, node.type)
        if node.type == "d":
            if in_fresh_dir or _lstat_or_none(name, parent_fd) is None:
                # A name someone made meanwhile is an error here (EEXIST), never a directory to use.
                os.mkdir(name, 0o700, dir_fd=parent_fd)
                self.dir_fds.add(rel, open_dir(name, parent_fd))
                self.fresh_dirs.add(rel)
            else:
                self._remove_stale_temporaries(self.dir_fds.get(rel))
            dirs.append((rel, node))
            self.stats.dirs += 1
            return
        if node.nlink > 1:
            key = (node.dev, node.ino)
            if key in self.links:
                self._drain(0)   # the first link's content must be in place first
                self._flush_small()
                first = self.links.get(key)    # dropped if its content could not be restored
                if first is not None:
                    self._link(first, rel)
                    self.stats.files += node.type == "f"
                    return
                parent_fd = self.dir_fds.get(parent)    # (writing the files trimmed the descriptors)
            self.links[key] = rel
        if node.type == "f":
            self._restore_file(rel, node)
            return
        if node.type == "l":
            assert node.target is not None      # every link has one (wire.TreeCheck, at sync)
            os.symlink(node.target, name, dir_fd=parent_fd)
        elif node.type == "p":
            os.mkfifo(name, 0o600, dir_fd=parent_fd)
        elif node.type in "cb":
            if not self.as_root:
                self.warn(f"{os.fsdecode(self._path(rel))}: device nodes can only be restored as root; skipped")
                return
            os.mknod(name, stat.S_IFMT(node.mode) | 0o600, node.rdev, dir_fd=parent_fd)
        else:
            return
        self._set_metadata((parent_fd, name), node, self._path(rel))
        self.stats.others += 1

    def _restore_file(self, rel: bytes, node: Node) -> None:
        if node.size <= SMALL_FILE:
            self.small_batch.append((rel, node))
            self.small_batch_bytes += node.size
            if len(self.small_batch) >= SMALL_BATCH_FILES or self.small_batch_bytes >= SMALL_BATCH_BYTES:
                self._start_small_batch()
                while len(self.small_ready) > 1:     # one batch fetched ahead of the one being written
                    self._write_small_batch(self.small_ready.popleft())
            return
        assert node.content is not None          # every file has one (wire.TreeCheck, at sync)
        content = self.tree.content(node.content)
        dir_fd = os.dup(self.dir_fds.get(split(rel)[0]))    # the job's own: it outlives trims
        try:
            temp, fd = _create_temporary(dir_fd)
        except BaseException:
            os.close(dir_fd)
            raise
        job = _FileJob(self._path(rel), rel, dir_fd, temp, node, fd, self.repo.keys.content_hasher(), content.hash)
        self.open_jobs.add(job)
        if content.extents and content.extents[-1][0] == wire.HOLE_ID:
            os.ftruncate(fd, content.size)   # holes stay holes: we write only data extents
        offset = 0
        runs = None if self.repo.storage_is_local else self._runs_of(content.extents)
        for block_id, length in content.extents:
            if block_id == wire.HOLE_ID:
                self.queue.append(_Hole(job, length))
            else:
                try:
                    fetched = self._fetch(block_id) if runs is None else runs[block_id]()
                except NoSuchObject as e:
                    self.queue.append(_Failed(job, str(e)))
                except KeyError:             # (no run: the catalog knows no stored volume holding it)
                    self.queue.append(_Failed(job, f"block {block_id.hex()[:16]} (not in any stored volume)"))
                else:
                    self.queue.append(_Data(job, offset, fetched, block_id))
                    self._drain(FETCH_WINDOW)
            offset += length
        self.queue.append(_End(job))
        self._drain(FETCH_WINDOW)

    def _fetch(self, block_id: bytes) -> Future:
        """One block of a large file, fetched on its own (through the cache, decoded in parallel
        with its neighbours), from where the catalog says it lies now (a prune may have moved it)."""
        location = self.repo.block_location(block_id)
        return self.pool.submit(self.cache.get, block_id, functools.partial(self.repo.fetch_block, location=location))

    def _runs_of(self, extents: list[tuple[bytes, int]]) -> dict[bytes, Callable[[], Future]]:
        """On remote storage, where a request costs a round trip: for each stored block of a large
        file, what starts the range read of its run (blocks lying back to back in a volume, in file
        order, up to LARGE_RUN_BYTES) when the writer's window reaches it (`_FileRuns`)."""
        ids = [block_id for block_id, _ in extents if block_id != wire.HOLE_ID]
        locations = self.repo.block_locations(ids)
        runs: list[list[tuple[bytes, BlockLocation]]] = []
        run: list[tuple[bytes, BlockLocation]] = []
        for block_id in dict.fromkeys(ids):          # (a block repeated in the file: in the run of its first place)
            location = locations.get(block_id)
            if location is None:
                continue
            if run:
                first, last = run[0][1], run[-1][1]
                end = last.offset + last.stored_length
                if (location.volume != first.volume or not end <= location.offset <= end + RUN_GAP
                        or location.offset + location.stored_length - first.offset > LARGE_RUN_BYTES):
                    runs.append(run)
                    run = []
            run.append((block_id, location))
        if run:
            runs.append(run)
        file_runs = _FileRuns(runs, lambda run: self.pool.submit(self.repo.fetch_run, run), self._fetch)
        return {block_id: functools.partial(file_runs.fetch, block_id) for run in runs for block_id, _ in run}

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

        def content_of(node: Node) -> Content | None:
            return contents.get(node.content) if node.content is not None else None
        block_ids = {bid for c in contents.values() for bid, _ in c.extents if bid != wire.HOLE_ID}
        sources: dict[bytes, object] = {}          # block id -> its bytes, or the Future of its run
        for bid in block_ids:
            data = self.cache.peek(bid)
            if data is not None:
                sources[bid] = data
        locations = self.repo.block_locations(bid for bid in block_ids if bid not in sources)
        by_place = sorted(locations.items(), key=lambda item: (item[1].volume, item[1].offset))
        for run in block_runs(by_place, RUN_BYTES, RUN_GAP):
            self._submit_run(run, sources)

        def place(item):
            content = content_of(item[1])
            first = next((bid for bid, _ in content.extents if bid != wire.HOLE_ID), None) if content else None
            loc = locations.get(first)
            return (loc.volume, loc.offset) if loc else ("", 0)
        batch.sort(key=place)                      # the order the runs arrive in
        self.small_ready.append([(rel, node, content_of(node), sources) for rel, node in batch])

    def _submit_run(self, run: list, sources: dict) -> None:
        fut = self.pool.submit(self.repo.fetch_run, run)
        for bid, _ in run:
            sources[bid] = fut

    def _write_small_batch(self, batch: list) -> None:
        for rel, node, content, sources in batch:
            try:
                written, error = self._write_small(rel, node, content, sources)
            except OSError as e:
                raise _os_error(e, self._path(rel)) from None
            self.stats.bytes_written += written
            self.progress.advance(nbytes=written, files=1)
            if error is None:
                self.stats.files += 1
            else:
                self.stats.damaged.append(os.fsdecode(self._path(rel)))
                self.warn(f"{os.fsdecode(self._path(rel))} not restored: {error}")

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

    def _write_small(self, rel: bytes, node: Node, content, sources: dict) -> tuple[int, str | None]:
        """One small file, whole. Returns (bytes written, why it was left out or None)."""
        if content is None:
            raise PathNotFound(f"content {node.content} is missing from the local index; run 'fsbackup repair'")
        hasher = self.repo.keys.content_hasher()
        written, error, offset = 0, None, 0
        dest = self._path(rel)
        self.dir_fds.trim()
        parent, name = split(rel)
        dir_fd = self.dir_fds.get(parent)      # (valid to the end: nothing here trims)
        temp: bytes | None
        temp, fd = _create_temporary(dir_fd)
        try:
            try:
                if content.extents and content.extents[-1][0] == wire.HOLE_ID:
                    os.ftruncate(fd, content.size)
                for block_id, length in content.extents:
                    if block_id == wire.HOLE_ID:
                        hasher.hole(length)
                    else:
                        try:
                            data = self._block(block_id, sources)
                        except (CorruptObject, NoSuchObject) as e:
                            error = str(e)
                            break
                        _pwrite_all(fd, data, offset, dest)
                        hasher.data(data)
                        written += len(data)
                    offset += length
                if error is None and hasher.digest() != content.hash:
                    error = "its content does not match the hash recorded at backup"
                if error is None:
                    # Through the open descriptor: no path lookups, and the times are set after the last write.
                    self._set_metadata(fd, node, dest)
            finally:
                os.close(fd)
            if error is None:
                os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                temp = None
        finally:
            if temp is not None:
                _remove_quietly(temp, dir_fd)
        if error is not None:
            self._forget_link(node, rel)
        return written, error

    def _drain(self, keep: int) -> None:
        """Write finished items in order until at most `keep` fetches are in flight."""
        while self.queue and (len(self.queue) > keep or not isinstance(self.queue[0], _Data)
                              or self.queue[0].fetched.done()):
            item = self.queue.popleft()
            job = item.job
            if isinstance(item, _Data):
                try:
                    data = item.data()
                except (CorruptObject, NoSuchObject) as e:
                    job.error = job.error or str(e)
                    continue
                if job.error is None:
                    _pwrite_all(job.fd, data, item.offset, job.path)
                    job.hasher.data(data)
                    self.stats.bytes_written += len(data)
                    self.progress.advance(nbytes=len(data))
            elif isinstance(item, _Hole):
                job.hasher.hole(item.length)
            elif isinstance(item, _Failed):
                job.error = job.error or item.why
            else:
                self._finish_file(job)

    def _finish_file(self, job: _FileJob) -> None:
        """Rename a complete, checked file into place, its metadata set first; or report it and
        remove its temporary. Until it is done, the job stays open: if this raises, `run` removes it."""
        if job.error is None and job.hasher.digest() != job.expected_hash:
            job.error = "its content does not match the hash recorded at backup"
        if job.error is not None:
            job.close()
            self.open_jobs.discard(job)
            self._forget_link(job.node, job.rel)
            self.stats.damaged.append(os.fsdecode(job.path))
            self.warn(f"{os.fsdecode(job.path)} not restored: {job.error}")
            return
        self._set_metadata(job.fd, job.node, job.path)
        os.close(job.fd)
        job.fd = -1
        assert job.temp is not None               # a job is renamed once, here
        os.rename(job.temp, job.name, src_dir_fd=job.dir_fd, dst_dir_fd=job.dir_fd)
        job.temp = None
        job.close()
        self.open_jobs.discard(job)
        self.stats.files += 1
        self.progress.advance(files=1)

    def _forget_link(self, node: Node, rel: bytes) -> None:
        """`rel` was not restored: its other hard links must not link to it (nor, with
        --overwrite, to the old file still there); the next one is restored on its own."""
        if node.nlink > 1 and self.links.get((node.dev, node.ino)) == rel:
            del self.links[(node.dev, node.ino)]

    def _link(self, first: bytes, rel: bytes) -> None:
        """Make `rel` a hard link to `first` (the entry itself, even a symlink), replacing what
        stands there by a rename."""
        (first_parent, first_name), (parent, name) = split(first), split(rel)
        first_fd, dir_fd = self.dir_fds.get(first_parent), self.dir_fds.get(parent)
        temp, _ = _at_temporary_name(lambda temp: os.link(first_name, temp, src_dir_fd=first_fd,
                                                          dst_dir_fd=dir_fd, follow_symlinks=False))
        try:
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            _remove_quietly(temp, dir_fd)
            raise

    def _set_metadata(self, entry: int | tuple[int, bytes], node: Node, path: bytes) -> None:
        """Give `entry` the owner, mode, xattrs and times of `node`. `entry` is a descriptor open
        on a file or directory, or (a directory's descriptor, a name in it) for a symlink, FIFO or
        device, which are never opened: then nothing follows a symlink (a FIFO or device swapped
        for one meanwhile fails with ELOOP). `path` names it in messages."""
        if isinstance(entry, int):
            def chown(): os.chown(entry, node.uid, node.gid)
            def chmod(): os.chmod(entry, stat.S_IMODE(node.mode))
            def setxattr(name, value): os.setxattr(entry, name, value)
            def utime(): os.utime(entry, ns=(node.atime_ns, node.mtime_ns))
        else:
            dir_fd, entry_name = entry
            def chown(): os.chown(entry_name, node.uid, node.gid, dir_fd=dir_fd, follow_symlinks=False)
            def chmod(): chmod_at(entry_name, stat.S_IMODE(node.mode), dir_fd)
            def setxattr(name, value): os.setxattr(at_path(dir_fd, entry_name), name, value, follow_symlinks=False)
            def utime(): os.utime(entry_name, ns=(node.atime_ns, node.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
        if self.as_root:
            try:
                chown()
            except OSError as e:
                self.warn(f"cannot set owner of {os.fsdecode(path)}: {e.strerror}")
        if node.type != "l":
            chmod()      # after chown, which clears set-user-id bits
        for name, value in node.xattrs.items():
            try:
                setxattr(name, value)
            except OSError as e:
                if not self.warned_xattrs:
                    self.warned_xattrs = True
                    self.warn(f"cannot set extended attribute {os.fsdecode(name)} on {os.fsdecode(path)}: "
                              f"{e.strerror} (further xattr errors not shown)")
        utime()


def _at_temporary_name(create: Callable[[bytes], T]) -> tuple[bytes, T]:
    """(a new temporary name, what `create` returned making it); a name `create` finds taken
    (FileExistsError) is replaced by another."""
    while True:
        temp = TEMP_PREFIX + secrets.token_hex(8).encode()
        try:
            return temp, create(temp)
        except FileExistsError:
            continue


def _create_temporary(dir_fd: int) -> tuple[bytes, int]:
    """A new empty file, mode 0600, under a temporary name in the directory open as `dir_fd`: (its
    name, a descriptor open for writing). O_EXCL and O_NOFOLLOW: never an existing file, nor
    through a symlink."""
    return _at_temporary_name(lambda temp: os.open(
        temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd))


def _lstat_or_none(name: bytes, dir_fd: int) -> os.stat_result | None:
    """What stands at `name` in `dir_fd` (not followed), or None where nothing can be found."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None


def _remove_quietly(name: bytes, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
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
    kind = os_error_kind(e)
    if kind is NoSpace:
        return NoSpace(f"no space left on device while restoring {where}; free space or choose another --target")
    if kind is PermissionDenied:
        return PermissionDenied(f"permission denied writing {where}: {e.strerror}")
    if e.errno in (errno.ELOOP, errno.ENOTDIR):
        return FsbackupError(f"cannot restore {where}: it or a directory on its way was replaced (by a symlink "
                             "or another file) while restoring; nothing is followed there")
    return FsbackupError(f"cannot restore {where}: {e.strerror}")
