"""The backup pipeline (Duplicati's design, with content-defined chunking).

scan -> for each changed file: read, cut, hash -> skip blocks already stored -> compress and
encrypt in worker threads -> pack into volumes -> upload volumes (a bounded number in flight)
-> record each volume once stored -> store the version object last -> record the version.

Threading (docs/design.md): the calling thread scans, reads small files, owns the local index
and spools entries in scan order. Reader threads read, cut and hash larger files; encoder threads
compress+encrypt blocks (zstandard and AES-GCM release the GIL); upload threads seal and upload
volumes. Memory is bounded by the read-ahead, the encode window and the volumes in flight,
whatever the data size.
"""
from __future__ import annotations

import errno
import grp
import os
import pwd
import queue
import socket
import stat
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO, Callable

import msgpack

from .. import snapshot
from ..catalog.tree import Node, VersionTree
from ..catalog.versions import list_versions
from ..codec import wire
from ..codec.chunker import MIN_SIZE, WINDOW, Chunker
from ..errors import NoSpace, PathNotFound, UsageError, os_error_kind
from ..fsutil import DirFds, GlobMatcher, at_path, open_dir, outermost, split
from ..private import private_temp_file
from ..progress import SILENT, Reporter
from ..repository import REREAD_FILES, Repository
from ..repository.locks import Lock, repository_lock
from ..repository.volumes import DEFAULT_VOLUME_SIZE, BlockSink

CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"
READ_AHEAD_BYTES = 64 << 20  # file data the reader threads may hold ahead of the scan
STREAM_BLOCKS = 8            # blocks of one file read ahead of the scan thread, at most
READ_AHEAD_ENTRIES = 4096    # entries scanned but not yet spooled, at most
OPEN_FILES_AHEAD = 256       # source files opened by the scan and not yet spooled, at most
DIR_FDS = 64                 # directory descriptors the scan keeps open


@dataclass
class BackupOptions:
    excludes: list[str] = field(default_factory=list)
    exclude_if_present: list[str] = field(default_factory=list)
    exclude_caches: bool = False
    one_file_system: bool = False
    iexcludes: list[str] = field(default_factory=list)      # --exclude patterns matched whatever the case
    exclude_larger_than: int | None = None   # files larger than this many bytes are left out; None: none
    listed_paths: list[str] = field(default_factory=list)   # --files-from: as the paths given, but one
                                                            # that does not exist is a warning (exit 3)
    tags: list[str] = field(default_factory=list)
    host: str | None = None                  # the version's host; None: this machine's host name
    description: str | None = None           # the version header's description; None: none
    dry_run: bool = False
    trust_unchanged: bool = True             # False: read unchanged files too (their stored blocks may be gone)
    volume_size: int = DEFAULT_VOLUME_SIZE
    compression: int = wire.ZSTD_LEVEL        # zstd level of new blocks; 0 stores them uncompressed
    workers: int = max(2, os.cpu_count() or 2)
    uploads_in_flight: int | None = None     # volumes uploading at once; None: the backend's `connections`
    snapshot: str = "none"                   # snapshot.MODES: read the paths from OS snapshots (docs/snapshots.md)
    explain_snapshot: bool = False           # note why a path is read without one (--verbose)


# The mode of a file read from a stream (backup --stdin): a pipe has no permissions to copy, and a
# database dump is often secret, so only its owner (the user who ran the backup) may read it when
# restored; restic records 0644. Folders made up above it (below) get 0755.
STREAM_FILE_MODE = 0o600
MADE_UP_FOLDER_MODE = 0o755


@dataclass
class StreamFile:
    """A file whose content comes from a stream rather than a file system (backup --stdin): recorded
    at `path` (absolute, validated by the caller: no '..', no NUL) as a regular file of mode
    STREAM_FILE_MODE, owned by the user who runs the backup, modified when its reading began. The
    folders above it are recorded as this machine has them, as for any path backed up; those it
    lacks are made up (MADE_UP_FOLDER_MODE, the same owner and time). `stream` is read once to
    its end, never held whole. `finished` is called once it has ended, before the version is
    stored: it raises to store no version (the command that wrote the stream failed)."""
    path: str
    stream: BinaryIO
    finished: Callable[[], None] = lambda: None


@dataclass
class BackupStats:
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    dirs: int = 0
    others: int = 0
    bytes_read: int = 0
    total_size: int = 0
    blocks_new: int = 0
    bytes_new_plain: int = 0     # plaintext bytes of new blocks
    bytes_added: int = 0         # stored bytes uploaded (volumes + index objects), after dedup and compression
    volumes: int = 0
    duration: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def file_count(self) -> int:
        return self.files_new + self.files_changed + self.files_unchanged + self.others

    def as_json(self) -> dict:
        return {"files_new": self.files_new, "files_changed": self.files_changed,
                "files_unchanged": self.files_unchanged, "dirs": self.dirs, "others": self.others,
                "bytes_read": self.bytes_read, "total_size": self.total_size, "blocks_new": self.blocks_new,
                "bytes_new": self.bytes_new_plain, "bytes_added": self.bytes_added, "volumes": self.volumes,
                "duration": round(self.duration, 3), "warnings": self.warnings}


def _change_key(st: os.stat_result) -> tuple:
    """What tells that a file changed: equal keys mean its content is taken as unchanged."""
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def _same_file(prev: Node | None, st: os.stat_result) -> bool:
    """Whether `prev`, a node of the previous version, is a regular file with the change key of
    `st`: its content and its xattrs (setting or removing one changes the ctime) are taken as they are."""
    return (prev is not None and prev.type == "f"
            and (prev.size, prev.mtime_ns, prev.ctime_ns, prev.ino) == _change_key(st))


class FileChanged(Exception):
    """The file changed while it was read."""


class FileReplaced(Exception):
    """What stands at a file's name is no longer the regular file the scan found."""


class Excluder:
    """--exclude GLOB: a pattern with a '/' matches the whole path (or a parent of it), else any name.
    --iexclude GLOB: the same, whatever the case of letters (also beyond ASCII: both sides are
    casefolded). --exclude-larger-than: files of more bytes than that are left out."""

    def __init__(self, options: BackupOptions):
        # (fsbackup's own snapshots are never backed up)
        self.patterns = GlobMatcher([*options.excludes, os.fsdecode(snapshot.SNAPSHOT_PATTERN)], options.iexcludes)
        self.if_present = [os.fsencode(n) for n in options.exclude_if_present]
        self.caches = options.exclude_caches
        self.larger_than = options.exclude_larger_than

    def excludes_path(self, path: bytes, name: bytes) -> bool:
        return self.patterns.matches(path, name)

    def excludes_size(self, size: int) -> bool:
        """Whether a file of `size` bytes is left out: larger than the limit (one of exactly the
        limit is kept, as restic keeps it)."""
        return self.larger_than is not None and size > self.larger_than

    def excludes_dir_content(self, dir_fd: int) -> bool:
        """Whether the contents of the directory open as `dir_fd` are left out (its tag files;
        a CACHEDIR.TAG must be a regular file: it is opened without following or blocking)."""
        for tag in self.if_present:
            try:
                os.stat(tag, dir_fd=dir_fd, follow_symlinks=False)
                return True
            except OSError:
                pass
        if self.caches:
            try:
                fd = os.open(b"CACHEDIR.TAG", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             dir_fd=dir_fd)
                with open(fd, "rb") as f:
                    return f.read(len(CACHEDIR_SIGNATURE)) == CACHEDIR_SIGNATURE
            except OSError:
                return False
        return False


def data_regions(fd: int, size: int, st: os.stat_result) -> list[tuple[int, int]]:
    """The [start, end) ranges of a file that hold data; the rest are holes (sparse files)."""
    if size == 0:
        return []
    if st.st_blocks * 512 >= size:
        return [(0, size)]
    regions, pos = [], 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break            # only a hole remains
            return [(0, size)]   # no SEEK_DATA support: read it all
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        regions.append((start, end))
        pos = end
    return regions


class _NameCache:
    """User and group names by id, looked up once each (a backup asks for every entry)."""

    def __init__(self) -> None:
        self.users: dict[int, str | None] = {}
        self.groups: dict[int, str | None] = {}

    def user(self, uid: int) -> str | None:
        if uid not in self.users:
            try:
                self.users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self.users[uid] = None
        return self.users[uid]

    def group(self, gid: int) -> str | None:
        if gid not in self.groups:
            try:
                self.groups[gid] = grp.getgrgid(gid).gr_name
            except KeyError:
                self.groups[gid] = None
        return self.groups[gid]


def read_xattrs(entry: bytes | int) -> dict[bytes, bytes] | None:
    """The xattrs of `entry`: a path (not followed, if a symlink) or an open descriptor."""
    nofollow = {} if isinstance(entry, int) else {"follow_symlinks": False}
    try:
        names = os.listxattr(entry, **nofollow)
    except OSError:
        return None
    out = {}
    for name in names:
        try:
            out[os.fsencode(name)] = os.getxattr(entry, name, **nofollow)
        except OSError:
            continue
    return out or None


def open_source(name: bytes, dir_fd: int, st: os.stat_result) -> int:
    """Open the file `name` in the directory `dir_fd` for reading, as the scan found it (`st`).
    O_NONBLOCK: a FIFO swapped in since the scan must not hang the backup; O_NOFOLLOW: nor a
    symlink be followed. Raises FileReplaced unless it is the same regular file (dev, ino)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        try:
            fd = os.open(name, flags | os.O_NOATIME, dir_fd=dir_fd)
        except PermissionError:
            fd = os.open(name, flags, dir_fd=dir_fd)   # O_NOATIME needs ownership
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENXIO):      # a symlink, a socket
            raise FileReplaced() from None
        raise
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise FileReplaced()
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


_TYPE_CODES = {stat.S_IFREG: "f", stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFIFO: "p",
               stat.S_IFCHR: "c", stat.S_IFBLK: "b"}

class _Item:
    """An entry between the scan and the spool. Its parent's node id is known by the time it is
    spooled: entries are spooled in scan order, and a directory comes before its children."""

    __slots__ = ("entry", "parent", "node_id", "how", "read", "blocks", "ahead", "path", "fd", "st", "prev",
                 "unchanged")
    ROOT_PARENT: "_Item"
    # Files only, set when planned (Backup._plan_file):
    path: bytes
    st: os.stat_result
    prev: Node | None                   # its node in the previous version, when a regular file

    def __init__(self, entry: list, parent: "_Item | None"):
        self.entry = entry
        self.parent: _Item = parent if parent is not None else self    # (the root's parent: itself)
        self.node_id = 0
        self.how: str | None = None     # files: "read", "read here" or "link" (see Backup._plan_file)
        self.read: Future | None = None        # a reader thread's read...
        self.blocks: queue.Queue | None = None  # ...and the queue of blocks it reads
        self.ahead = 0                  # bytes its read holds until it is spooled
        self.fd: int | None = None      # files to read: open from the scan until spooled
        self.unchanged = False


_Item.ROOT_PARENT = _Item([], None)   # node id 0: the root directory's parent


def _raise_no_space(e: BaseException, spool_folder: str) -> None:
    """The file list's folder (beside the local index) is full: say so, as the index would."""
    if isinstance(e, OSError) and os_error_kind(e) is NoSpace:
        raise NoSpace(f"no space left for the backup's file list in {spool_folder} (beside the local index); "
                      "free space there, or put the index on another disk with --index") from None


class Backup:
    def __init__(self, repo: Repository, options: BackupOptions, reporter: Reporter | None = None):
        self.repo = repo
        self.before_commit: Callable[[], None] = lambda: None    # run_locked: checks the lock is still ours
        self.after_commit: Callable[[str], None] = lambda name: None   # run_locked: verify, still under the lock
        if options.uploads_in_flight is None:
            options = replace(options, uploads_in_flight=max(1, repo.connections))
        self.options = options
        self.uploads_in_flight: int = options.uploads_in_flight or 1
        self.reporter = reporter or SILENT
        self.progress = self.reporter.progress()
        self.stats = BackupStats()
        self.chunker = Chunker(repo.keys.chunker_seed)
        self.excluder = Excluder(options)
        self.names = _NameCache()
        self.queue: deque[_Item] = deque()          # entries scanned, not yet spooled (see _enqueue)
        self.ahead_bytes = 0
        self.open_files = 0                         # files of queued entries open (_Item.fd)
        self.reader_local = threading.local()
        self.stopping = threading.Event()           # set when the backup stops: readers give up
        self.links_seen: set[tuple[int, int]] = set()
        self.hardlinks: dict[tuple[int, int], list] = {}
        self.prev_contents: dict[int, list] = {}     # see _prev_children
        self.read_from: dict[bytes, bytes] = {}      # given path -> its snapshot's path, where one was taken

    @property
    def written(self) -> dict[str, int]:
        """The volumes this backup stored: name -> size (what verify after backup reads first)."""
        return self.sink.written

    def _warn_unread(self, path: bytes, e: OSError) -> None:
        """A file that could not be read is left out of the version, with a warning (exit 3)."""
        if isinstance(e, FileNotFoundError):
            self.warn(f"{os.fsdecode(path)} vanished before it was read; left out")
        else:
            self.warn(f"cannot read {os.fsdecode(path)}: {e.strerror}; left out")

    def warn(self, msg: str) -> None:
        """A file left out of the version (or kept as it was): counted for exit code 3, and told."""
        self.stats.warnings.append(msg)
        self.reporter.warn(msg)

    # ---- entry point --------------------------------------------------------------------

    def run_locked(self, paths: list[str], lock: Lock | None = None, stream: StreamFile | None = None) -> str | None:
        """`run` as the `backup` command does it: under an append lock, shared with other backups
        (locks.py), with the local index brought in step first, so that blocks other machines
        stored meanwhile are not stored again (a dry run, which stores nothing, needs no lock).
        `lock` is the lock the caller holds on this repository (the command line takes it);
        without one, the backup takes its own for the run. The lock is checked to be still held
        (`Lock.ensure_held`) just before the version is stored. `after_commit` (verify after
        backup) runs on the new version before the lock is released.

        Nothing stored is deleted here: another backup's uploads in progress look exactly like a
        stopped run's leftovers, which prune and repair remove under the exclusive lock. Nor is
        anything overwritten: a backup stores new names only (volumes, index objects, its version,
        its lock), so it runs with backup-only credentials, which refuse deletes and overwrites
        (docs/append-only.md); its lock, the one object it deletes, goes stale where it cannot be."""
        if self.options.dry_run:
            self.repo.sync_catalog(self.reporter.progress())
            return self.run(paths, stream)
        if lock is None:
            with repository_lock(self.repo, "append", command="backup") as own:
                return self.run_locked(paths, own, stream)
        if lock.repo is not self.repo or lock.mode not in ("append", "exclusive"):
            raise ValueError("a backup needs an append or exclusive lock on its own repository")   # a caller's bug
        self.repo.sync_catalog(self.reporter.progress())
        for note in self.repo.forget_lost_volumes():
            self.reporter.note(note)
        catalog = self.repo.catalog
        if catalog.get_meta(REREAD_FILES):
            self.options = replace(self.options, trust_unchanged=False)
            self.reporter.note("every file is read again: data this machine's index knew of is gone from "
                               "the repository (pruned from another machine, or lost)")
        self.before_commit = lock.ensure_held
        name = self.run(paths, stream)
        catalog.set_meta(REREAD_FILES, "")
        if name is not None:
            self.after_commit(name)
        return name

    def run(self, paths: list[str], stream: StreamFile | None = None) -> str | None:
        """Back up `paths` and `options.listed_paths` (or the file `stream` alone) as one new
        version; returns its name (None for a dry run)."""
        started = time.monotonic()
        start_ns = time.time_ns()
        if stream is not None and (paths or self.options.listed_paths):
            raise UsageError("a backup of a stream (--stdin) takes no other paths")
        if stream is not None and (not stream.path.startswith("/") or "\0" in stream.path
                                   or {"", ".", ".."} & set(stream.path[1:].split("/"))):
            raise ValueError(f"not a normalized absolute path for a stream: {stream.path!r}")   # a caller's bug
        tops = self._top_paths(paths)
        if not tops and stream is None:
            raise PathNotFound("nothing to back up: none of the paths given exists")
        catalog = self.repo.catalog
        host = self.options.host or socket.gethostname()
        head_paths = [os.fsdecode(p) for p in tops] if stream is None else [stream.path]
        parent = self._parent_version(host, head_paths) if self.options.trust_unchanged else None
        self.prev = VersionTree(catalog, parent) if parent else None
        self.progress.start("backup")
        if self.progress.enabled:
            threading.Thread(target=self._estimate_total, args=(tops,), daemon=True).start()
        self.pool = ThreadPoolExecutor(self.options.workers, thread_name_prefix="fsbackup-encode")
        self.read_pool = ThreadPoolExecutor(self.options.workers, thread_name_prefix="fsbackup-read")
        self.upload_pool = ThreadPoolExecutor(self.uploads_in_flight, thread_name_prefix="fsbackup-upload")
        self.sink = BlockSink(self.repo, self.pool, self.upload_pool, volume_size=self.options.volume_size,
                              compression=self.options.compression, uploads_in_flight=self.uploads_in_flight,
                              encode_window=2 * self.options.workers + 2, dry_run=self.options.dry_run)
        # Beside the local index, in an owner-only folder: the tree names every file backed up.
        self.spool_folder = spool_folder = os.path.join(os.path.dirname(self.repo.catalog_path), "spool")
        spool = private_temp_file(spool_folder)
        snapshots = ExitStack()      # deleted once the scan is over and its files closed
        try:
            self.spool_packer = wire.entry_packer(unicode_errors="surrogateescape")   # (times of any range)
            self.spool = spool
            self.node_count = 0
            self.read_from = snapshots.enter_context(snapshot.taken(
                tops, self.options.snapshot, reporter=self.reporter, explain=self.options.explain_snapshot))
            self._scan(tops, stream)
            self.sink.finish()
        except BaseException:
            self.sink.abort()
            try:
                spool.close()                  # (what it still buffers is not wanted)
            except OSError:
                pass
            raise
        finally:
            self.stopping.set()
            self.read_pool.shutdown(wait=True, cancel_futures=True)
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.upload_pool.shutdown(wait=True, cancel_futures=True)
            for item in self.queue:        # stopped midway: the files still open
                self._close_source(item)
            snapshots.close()
        self.progress.finish()
        sink = self.sink
        self.stats.blocks_new, self.stats.bytes_new_plain = sink.blocks_new, sink.bytes_new
        self.stats.bytes_added, self.stats.volumes = sink.bytes_stored, sink.volumes
        head = {"time_ns": start_ns, "host": host, "paths": head_paths, "tags": list(self.options.tags),
                "parent": parent.name if parent else None, "file_count": self.stats.file_count,
                "total_size": self.stats.total_size, "bytes_added": self.stats.bytes_added,
                "fsbackup": "0.1.0"}
        if self.options.description:
            head["description"] = self.options.description
        name = None
        with spool:
            if not self.options.dry_run:
                self.before_commit()
                try:
                    spool.seek(0)                  # (writes what the spool still buffers)
                except OSError as e:
                    _raise_no_space(e, spool_folder)
                    raise
                name = self.repo.store_version(head, self._spooled_entries(spool))
                spool.seek(0)
                self.repo.record_version(name, head, self._spooled_entries(spool))
        self.stats.duration = time.monotonic() - started
        return name

    @staticmethod
    def _spooled_entries(spool):
        return msgpack.Unpacker(spool, raw=False, unicode_errors="surrogateescape", max_buffer_size=1 << 30)

    def _top_paths(self, paths: list[str]) -> list[bytes]:
        """The paths to walk: those given (one missing is an error) and those listed (one missing is
        left out with a warning, as an unreadable file is), less those inside another."""
        tops = []
        for p in paths:
            ap = os.path.abspath(os.fsencode(p))
            if not os.path.lexists(ap):
                raise PathNotFound(f"source path {p} does not exist")
            tops.append(ap)
        for p in self.options.listed_paths:
            ap = os.path.abspath(os.fsencode(p))
            if not os.path.lexists(ap):
                self.warn(f"{p} (listed in --files-from) does not exist; left out")
                continue
            tops.append(ap)
        return outermost(tops)

    def _parent_version(self, host: str, paths: list[str]):
        """The newest version of the same paths from this host: unchanged files are taken from it."""
        for v in reversed(list_versions(self.repo.catalog)):
            if v.host == host and sorted(v.paths) == sorted(paths):
                return v
        return None

    def _estimate_total(self, tops: list[bytes]) -> None:
        """Sum file sizes in the background so the progress bar can show an ETA."""
        total = 0
        for top in tops:
            for dirpath, _, files in os.walk(top):
                for f in files:
                    try:
                        total += os.lstat(os.path.join(dirpath, f)).st_size
                    except OSError:
                        pass
        self.progress.set_total_bytes(total)

    # ---- scanning -----------------------------------------------------------------------
    #
    # This thread stats, lists and builds the entries; the files it finds are read, cut and
    # hashed by the reader threads (open, pread, FastCDC and BLAKE3 release the GIL), at most
    # READ_AHEAD_BYTES ahead of it. Entries are finished and spooled strictly in scan order, so
    # node ids, and the order in which blocks reach the volumes, never depend on thread timing.

    def _emit(self, entry: list) -> int:
        try:
            self.spool.write(self.spool_packer.pack(entry))
        except OSError as e:
            _raise_no_space(e, self.spool_folder)
            raise
        self.node_count += 1
        return self.node_count

    def _entry(self, name: bytes, xattrs_of: bytes | int, st: os.stat_result, type_code: str,
               prev: Node | None = None) -> list:
        """The entry of one path. `xattrs_of`: where its xattrs are read (see read_xattrs). `prev`:
        its node in the previous version, whose xattrs are taken when it is the same file (`_same_file`)."""
        e: list[Any] = [None] * len(wire.ENTRY_FIELDS)
        e[wire.E_NAME], e[wire.E_TYPE], e[wire.E_MODE] = name, type_code, st.st_mode
        e[wire.E_UID], e[wire.E_GID] = st.st_uid, st.st_gid
        e[wire.E_USER], e[wire.E_GRP] = self.names.user(st.st_uid), self.names.group(st.st_gid)
        e[wire.E_MTIME], e[wire.E_ATIME], e[wire.E_CTIME] = st.st_mtime_ns, st.st_atime_ns, st.st_ctime_ns
        e[wire.E_SIZE] = st.st_size if type_code in "fl" else 0
        e[wire.E_INO], e[wire.E_DEV], e[wire.E_NLINK], e[wire.E_RDEV] = st.st_ino, st.st_dev, st.st_nlink, st.st_rdev
        if type_code == "f" and prev is not None and _same_file(prev, st):
            e[wire.E_XATTRS] = prev.xattrs or None
        else:
            e[wire.E_XATTRS] = read_xattrs(xattrs_of)
        return e

    def _enqueue(self, item: _Item) -> None:
        """Queue an entry behind the ones scanned before it, then spool every entry at the head
        that is ready (waiting for the head's read only when too much is read ahead)."""
        self.queue.append(item)
        self.ahead_bytes += item.ahead
        queue = self.queue
        while queue:
            head = queue[0]
            if (head.read is not None and not head.read.done() and self.ahead_bytes <= READ_AHEAD_BYTES
                    and len(queue) <= READ_AHEAD_ENTRIES and self.open_files <= OPEN_FILES_AHEAD):
                return
            self._finish(queue.popleft())

    def _drain(self) -> None:
        while self.queue:
            self._finish(self.queue.popleft())

    def _finish(self, item: _Item) -> None:
        """Spool one entry, its file content found first (a file that cannot be read is left out)."""
        self.ahead_bytes -= item.ahead
        try:
            if item.how is not None and not self._find_content(item):
                return
        finally:
            self._close_source(item)
        item.entry[wire.E_PARENT] = item.parent.node_id
        item.node_id = self._emit(item.entry)

    def _close_source(self, item: _Item) -> None:
        if item.fd is not None:
            os.close(item.fd)
            item.fd = None
            self.open_files -= 1

    def _prev_children(self, prev_id: int | None) -> dict[bytes, Node]:
        """A directory's children in the previous version; their contents are fetched along, in
        one query, for the unchanged files among them (one query per file was most of the time
        of an unchanged re-backup). Each is taken out of `prev_contents` as its file is reached."""
        if self.prev is None or prev_id is None:
            return {}
        kids = self.prev.children(prev_id)
        self.prev_contents.update(self.prev.content_entries(
            [n.content for n in kids if n.type == "f" and n.content is not None]))
        return {n.name: n for n in kids}

    def _scan(self, tops: list[bytes], stream: StreamFile | None = None) -> None:
        root_st = os.lstat(b"/")
        root = _Item(self._entry(b"", b"/", root_st, "d"), _Item.ROOT_PARENT)
        self._enqueue(root)
        self.stats.dirs += 1
        known_dirs: dict[bytes, tuple[_Item, int | None]] = {b"/": (root, 1 if self.prev else None)}
        for top in tops:
            if top == b"/":          # the root's own entry is made above: its children are the tops
                for child in sorted(os.listdir(self._read_path(b"/"))):
                    if not self.excluder.excludes_path(b"/" + child, child):
                        self._walk(b"/" + child, child, root, known_dirs[b"/"][1], parent_dev=root_st.st_dev)
                continue
            parent, prev_parent = self._ancestors(top, known_dirs)
            self._walk(top, os.path.basename(top), parent, prev_parent)
        if stream is not None:
            self._read_stream(stream, *self._ancestors(os.fsencode(stream.path), known_dirs, made_up=True))
        self._drain()

    def _ancestors(self, path: bytes, known_dirs: dict[bytes, tuple[_Item, int | None]],
                   made_up: bool = False) -> tuple[_Item, int | None]:
        """The folders holding `path` (absolute), each queued once (`known_dirs`, by path: its item
        and its node id in the previous version); returns those of the nearest. `made_up`: a
        folder this machine lacks (or has as no directory) is made up rather than an error."""
        parts = [p for p in path.split(b"/") if p]
        folder = b"/"
        for part in parts[:-1]:
            parent_path, folder = folder, os.path.join(folder, part)
            if folder in known_dirs:
                continue
            parent, prev_parent = known_dirs[parent_path]
            prev_node = self.prev.lookup(prev_parent, part) if self.prev and prev_parent else None
            # An ancestor holds the entries below it, so it is a directory in the version
            # whatever lstat says: a symlinked one is recorded with the metadata and xattrs
            # of the directory it resolves to (docs/format.md, "Ancestors").
            try:
                st = os.stat(folder)
            except OSError as e:
                if not made_up:
                    raise PathNotFound(f"cannot read {os.fsdecode(folder)}: {e.strerror}") from None
                st = None
            if st is not None and (stat.S_ISDIR(st.st_mode) or not made_up):
                entry = self._entry(part, os.path.realpath(folder), st, "d")
            else:
                entry = self._made_up_entry(part, stat.S_IFDIR | MADE_UP_FOLDER_MODE, time.time_ns())
            item = _Item(entry, parent)
            self._enqueue(item)
            self.stats.dirs += 1
            known_dirs[folder] = (item, prev_node.id if prev_node and prev_node.type == "d" else None)
        return known_dirs[folder]

    def _made_up_entry(self, name: bytes, mode: int, time_ns: int) -> list:
        """The entry of something no file system holds (a stream, a folder above it): owned by the
        user who runs the backup, its times `time_ns`, no xattrs."""
        e: list[Any] = [None] * len(wire.ENTRY_FIELDS)
        uid, gid = os.getuid(), os.getgid()
        e[wire.E_NAME], e[wire.E_TYPE], e[wire.E_MODE] = name, "d" if stat.S_ISDIR(mode) else "f", mode
        e[wire.E_UID], e[wire.E_GID] = uid, gid
        e[wire.E_USER], e[wire.E_GRP] = self.names.user(uid), self.names.group(gid)
        e[wire.E_MTIME] = e[wire.E_ATIME] = e[wire.E_CTIME] = time_ns
        e[wire.E_SIZE], e[wire.E_INO], e[wire.E_DEV], e[wire.E_NLINK], e[wire.E_RDEV] = 0, 0, 0, 1, 0
        return e

    def _read_stream(self, stream: StreamFile, parent: _Item, prev_parent: int | None) -> None:
        """Read, cut and hash the file of `stream` in this thread (a stream is read once, in order;
        its blocks go to the volumes as they come: memory stays bounded), and queue its entry."""
        name = os.path.basename(os.fsencode(stream.path))
        prev = self.prev.lookup(prev_parent, name) if self.prev and prev_parent else None
        item = _Item(self._made_up_entry(name, stat.S_IFREG | STREAM_FILE_MODE, time.time_ns()), parent)
        hasher = self.repo.keys.content_hasher()
        extents: list[tuple[bytes, int]] = []
        for block in self.chunker.cut_stream(stream.stream.read):
            self._hash_block(block, hasher, extents, self._take_block)
        stream.finished()
        size = item.entry[wire.E_SIZE] = sum(n for _, n in extents)
        self._set_content(item, [hasher.digest(), size, wire.pack_extents(extents)])
        if prev is not None:
            self.stats.files_changed += 1
        else:
            self.stats.files_new += 1
        self.progress.advance(files=1)
        self._enqueue(item)

    def _read_path(self, top: bytes) -> bytes:
        """Where the given path `top` is read: in its snapshot (same name), else where it is. It is
        recorded as `top` either way."""
        if top in self.read_from:
            return self.read_from[top]
        parent = os.path.dirname(top)        # a child of "/", when "/" is given
        if parent != top and parent in self.read_from:
            return os.path.join(self.read_from[parent], os.path.basename(top))
        return top

    def _walk(self, top: bytes, top_name: bytes, parent: _Item, prev_parent: int | None,
              parent_dev: int | None = None) -> None:
        """Depth-first over one given path, with an explicit stack (trees can be deep). The folder
        holding it is opened by path (its ancestors are followed: the user named them); every
        entry below is reached relative to its directory's descriptor (fsutil.DirFds), so a
        directory swapped for a symlink meanwhile is never followed out of the tree."""
        try:
            # O_PATH: the folder need not be readable, only searchable, as for a lookup by path.
            base_fd = os.open(os.path.dirname(self._read_path(top)), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise PathNotFound(f"cannot read {os.fsdecode(os.path.dirname(top))}: {e.strerror}") from None
        dir_fds = DirFds(base_fd, DIR_FDS)
        try:
            self._walk_below(dir_fds, top, top_name, parent, prev_parent, parent_dev)
        finally:
            dir_fds.close()
            os.close(base_fd)

    def _walk_below(self, dir_fds: DirFds, top: bytes, top_name: bytes, parent: _Item, prev_parent: int | None,
                    parent_dev: int | None):
        prev_top = self.prev.lookup(prev_parent, top_name) if self.prev and prev_parent else None
        stack = [(top, parent, prev_top, parent_dev)]
        top_dir = os.path.dirname(top).rstrip(b"/") + b"/"
        while stack:
            path, parent, prev_node, parent_dev = stack.pop()
            rel = path[len(top_dir):]           # (relative to the folder holding `top`)
            parent_rel, name = split(rel)
            dir_fds.trim()
            try:
                parent_fd = dir_fds.get(parent_rel)
                st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            except FileNotFoundError:
                self.warn(f"{os.fsdecode(path)} vanished before it was read; left out")
                continue
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    self.warn(f"{os.fsdecode(path)}: a directory on its way was replaced while it was backed up; "
                              "left out")
                else:
                    self.warn(f"cannot stat {os.fsdecode(path)}: {e.strerror}; left out")
                continue
            kind = stat.S_IFMT(st.st_mode)
            code = _TYPE_CODES.get(kind)
            if code is None:
                self.reporter.note(f"{os.fsdecode(path)} is a socket; skipped" if kind == stat.S_IFSOCK
                                   else f"{os.fsdecode(path)} has an unsupported type; skipped")
                continue
            if code == "d":
                dir_fd: int | None = None
                try:
                    opened = open_dir(name, parent_fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        self.warn(f"{os.fsdecode(path)} was replaced while it was backed up; left out")
                        continue
                    list_error = e
                else:
                    dir_fd = opened
                    st = os.fstat(opened)     # the directory listed below, whatever happened since
                    dir_fds.add(rel, opened)
                item = _Item(self._entry(name, dir_fd if dir_fd is not None else at_path(parent_fd, name),
                                         st, code, prev_node), parent)
                self._enqueue(item)
                self.stats.dirs += 1
                if self.options.one_file_system and parent_dev is not None and st.st_dev != parent_dev:
                    continue
                if dir_fd is None:
                    self.warn(f"cannot list {os.fsdecode(path)}: {list_error.strerror}; its contents are left out")
                    continue
                if self.excluder.excludes_dir_content(dir_fd):
                    continue
                try:
                    names = sorted(os.fsencode(n) for n in os.listdir(dir_fd))
                except OSError as e:
                    self.warn(f"cannot list {os.fsdecode(path)}: {e.strerror}; its contents are left out")
                    continue
                prev_kids = self._prev_children(prev_node.id if prev_node and prev_node.type == "d" else None)
                for child in reversed(names):
                    child_path = os.path.join(path, child)
                    if self.excluder.excludes_path(child_path, child):
                        continue
                    stack.append((child_path, item, prev_kids.get(child), st.st_dev))
                continue
            if code == "f" and self.excluder.excludes_size(st.st_size):
                continue
            item = _Item(self._entry(name, at_path(parent_fd, name), st, code, prev_node), parent)
            if code == "l":
                try:
                    item.entry[wire.E_TARGET] = os.readlink(name, dir_fd=parent_fd)
                except OSError as e:
                    self.warn(f"cannot read symlink {os.fsdecode(path)}: {e.strerror}; left out")
                    continue
            elif code == "f":
                if not self._plan_file(item, path, st, prev_node, (parent_fd, name)):
                    continue
            else:
                self.stats.others += 1
            self._enqueue(item)

    # ---- files --------------------------------------------------------------------------

    def _plan_file(self, item: _Item, path: bytes, st: os.stat_result, prev: Node | None,
                   where: tuple[int, bytes]) -> bool:
        """Decide where the file's content comes from: the previous version's without reading
        when nothing changed, another name's (a hard link seen before), or a read: in a reader
        thread now, or (one small block) by this thread at the file's turn. A file to read (or
        another name of one) is opened now, at `where` (its directory's descriptor, its name).
        False: it could not be opened, and is left out with a warning."""
        item.path, item.st = path, st
        item.prev = prev if prev is not None and prev.type == "f" else None
        kept = prev.content if prev is not None and _same_file(prev, st) else None   # content taken as it is
        unchanged = kept is not None
        if item.prev is not None and item.prev.content is not None and not unchanged:
            self.prev_contents.pop(item.prev.content, None)    # not needed: keep the map small
        link_key = (st.st_dev, st.st_ino)
        if not unchanged or (st.st_nlink > 1 and link_key in self.links_seen):
            if not self._open_source(item, *where):
                return False
        if st.st_nlink > 1:
            if link_key in self.links_seen:
                item.how, item.unchanged = "link", unchanged
                return True
            self.links_seen.add(link_key)
        if kept is not None:
            content = self.prev_contents.pop(kept, None)
            if content is None:      # another file with the same content took it already
                assert self.prev is not None                  # (`kept` comes from it)
                c = self.prev.content(kept)
                content = [c.hash, c.size, wire.pack_extents(c.extents)]
            self._set_content(item, content)
            self.stats.files_unchanged += 1
            self.progress.advance(files=1, nbytes=st.st_size)
            if st.st_nlink > 1:
                self.hardlinks[link_key] = content
        elif st.st_size <= MIN_SIZE:
            item.how = "read here"       # one small block: cheaper read here than handed over
        else:
            # Its blocks are views into windows of the file: the queue holds at most two windows.
            item.how, item.ahead = "read", min(st.st_size, 2 * WINDOW)
            item.blocks = queue.Queue(STREAM_BLOCKS)
            assert item.fd is not None               # (opened above: a file to read)
            item.read = self.read_pool.submit(self._read_in_reader, item.fd, st, item.blocks)
        return True

    def _open_source(self, item: _Item, dir_fd: int, name: bytes) -> bool:
        """Open the file of `item` (open_source); False, with a warning, when it cannot be."""
        path = item.path
        try:
            item.fd = open_source(name, dir_fd, item.st)
        except FileReplaced:
            self.warn(f"{os.fsdecode(path)} is no longer the regular file found by the scan (replaced while "
                      "backed up); left out")
            return False
        except OSError as e:
            self._warn_unread(path, e)
            return False
        self.open_files += 1
        return True

    def _set_content(self, item: _Item, content: list, kept: Node | None = None) -> None:
        """`kept`: the node whose times to record instead of the file's (its content was kept)."""
        item.entry[wire.E_CONTENT] = content
        if kept is not None:
            item.entry[wire.E_SIZE], item.entry[wire.E_MTIME], item.entry[wire.E_CTIME] = \
                kept.size, kept.mtime_ns, kept.ctime_ns
        self.stats.total_size += content[1]

    def _find_content(self, item: _Item) -> bool:
        """Complete a planned file's content (its blocks go to the volumes here, in scan order).
        False: the file is left out, with a warning."""
        path, st, prev = item.path, item.st, item.prev
        link_key = (st.st_dev, st.st_ino)
        content = self.hardlinks.get(link_key) if item.how == "link" else None
        if content is None:
            try:
                if item.read is not None and item.blocks is not None:
                    for block_id, data in iter(item.blocks.get, None):
                        self._take_block(block_id, data)
                    content = item.read.result()
                    item.read = item.blocks = None
                else:       # "read here", or another name of a file whose read failed
                    assert item.fd is not None                  # (open from the plan until spooled)
                    content = self._read_file(item.fd, st, self.chunker, self._take_block)
            except FileChanged:
                if prev is not None and prev.content is not None and self.prev is not None:
                    self.warn(f"{os.fsdecode(path)} changed while it was read; kept its previous content")
                    c = self.prev.content(prev.content)
                    # Previous content with previous times, so the next backup reads the file again.
                    self._set_content(item, [c.hash, c.size, wire.pack_extents(c.extents)], kept=prev)
                    self.stats.files_changed += 1
                    return True
                self.warn(f"{os.fsdecode(path)} changed while it was read; left out")
                return False
            except OSError as e:
                self._warn_unread(path, e)
                return False
            self.progress.advance(files=1)
            if st.st_nlink > 1:
                self.hardlinks[link_key] = content
        if item.unchanged:
            self.stats.files_unchanged += 1
        elif prev is not None:
            self.stats.files_changed += 1
        else:
            self.stats.files_new += 1
        self._set_content(item, content)
        return True

    def _read_in_reader(self, fd: int, st: os.stat_result, blocks) -> list:
        """A reader thread's read: the file's blocks go to `blocks` (then None), for the scan
        thread to take in order; a large file's few at a time (`blocks` is bounded)."""
        chunker = getattr(self.reader_local, "chunker", None)
        if chunker is None:
            chunker = self.reader_local.chunker = Chunker(self.repo.keys.chunker_seed)

        def hand_over(item) -> None:
            while not self.stopping.is_set():
                try:
                    return blocks.put(item, timeout=0.1)
                except queue.Full:
                    continue
            raise FileChanged()     # the backup stopped: nobody takes the rest

        try:
            return self._read_file(fd, st, chunker, lambda block_id, data: hand_over((block_id, data)))
        finally:
            hand_over(None)

    def _read_file(self, fd: int, st: os.stat_result, chunker: Chunker,
                   take_block: Callable[[bytes, bytes | memoryview], None]) -> list:
        """Read, cut and hash one file open as `fd` (open_source), handing each block to
        `take_block`; returns its [hash, size, extents]. Raises FileChanged when it changed
        while read. Thread-safe."""
        before = st      # the stat of the scan: the fstat after reading must match it
        size = before.st_size
        if 0 < size <= MIN_SIZE and st.st_blocks * 512 >= size:
            return self._read_small_file(fd, before, take_block)
        hasher = self.repo.keys.content_hasher()
        extents: list[tuple[bytes, int]] = []
        pos = 0
        for start, end in data_regions(fd, size, before):
            if start > pos:
                extents.append((wire.HOLE_ID, start - pos))
                hasher.hole(start - pos)
            for block in chunker.cut_file(fd, start, end):
                self._hash_block(block, hasher, extents, take_block)
            pos = end
        if pos < size:
            extents.append((wire.HOLE_ID, size - pos))
            hasher.hole(size - pos)
        after = os.fstat(fd)
        if (not stat.S_ISREG(after.st_mode) or _change_key(after) != _change_key(before)
                or sum(n for _, n in extents) != size):
            raise FileChanged()
        return [hasher.digest(), size, wire.pack_extents(extents)]

    def _hash_block(self, block: memoryview, hasher, extents: list[tuple[bytes, int]],
                    take_block: Callable[[bytes, bytes | memoryview], None]) -> None:
        """One block of a file read in order: into its content hash and extents, then to `take_block`."""
        block_id = self.repo.keys.block_id(block)
        hasher.data(block)
        extents.append((block_id, len(block)))
        take_block(block_id, block)

    def _read_small_file(self, fd: int, before: os.stat_result, take_block: Callable[[bytes, bytes], None]) -> list:
        """Most files are smaller than the chunker's minimum block and have no holes: they are one
        block, read in one call. Same result as the general path, with a fraction of its
        per-file work (a backup of many small files is bound by it)."""
        size = before.st_size
        data = os.pread(fd, size + 1, 0)        # one byte more: a file that grew is seen
        if len(data) != size or _change_key(os.fstat(fd)) != _change_key(before):
            raise FileChanged()
        block_id = self.repo.keys.block_id(data)
        take_block(block_id, data)
        # The content hash and the block id are the same keyed hash of the same bytes.
        return [block_id, size, wire.pack_extents([(block_id, size)])]

    # ---- blocks, volumes, uploads ---------------------------------------------------------

    def _take_block(self, block_id: bytes, data: bytes | memoryview) -> None:
        """A block read from a file, in scan order: stored unless the index or this backup has it."""
        self.stats.bytes_read += len(data)
        self.progress.advance(nbytes=len(data))
        self.sink.take(block_id, data)
