"""A version's tree and its files as a filesystem: the model behind `fsbackup mount` (the top
level above the versions, and inode numbering: namespace.py).

Plain, synchronous and thread-safe: the FUSE adapter (fuse.py) calls it on the trio thread and
only translates; tests drive it directly, without a kernel. getattr, lookup and readdir are
answered from the local index alone; read() fetches only the blocks it needs, through a memory
cache (decoded blocks) and a disk cache (encrypted blocks, authenticated again on every use),
in fetch threads of its own, and prefetches ahead of sequential readers. The local index follows
the repository (`IndexSync`): versions and volumes other machines stored or removed are taken in
periodically, and at once when a read finds its block's volume gone (another machine's prune
moved the block).
"""
from __future__ import annotations

import bisect
import errno
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Callable, Hashable

from .. import format as fmt
from ..blockcache import BlockCache
from ..errors import BackendError, CorruptObject, FsbackupError, NoSuchObject, PathNotFound
from ..index import Index
from ..repository import FetchedBlock, Repository
from ..tree import ROOT_ID, Content, ContentRow, Listed, Node, VersionInfo, VersionTree, list_versions
from .diskcache import DiskCache
from .namespace import NODE_BITS, NODE_MASK, Attr, FsOpError, Invalidations, Namespace, Versions, in_version

log = logging.getLogger("fsbackup.mount")

BLOCK_SIZE = 4096
# A read that misses loads its block with the blocks after it in its volume, up to this many bytes
# and blocks, in one range read (the next files of the directory, in the order people read them).
RUN_BYTES = 1 << 20
RUN_BLOCKS = 256
KEPT_CONTENTS = 1 << 15             # contents of listed files kept for their open (a few MiB) ...
KEPT_CONTENT_MAX_SIZE = 8 << 20      # ... for files of a few extents
RUN_AHEAD_MIN_BLOCKS = 16           # a reader halfway through a run this long starts the next one
RUN_AHEAD_KEPT = 1024
READ_ATTEMPTS = 4                    # loads of one read abandoned in a row before it fails (EIO)
# Syncs of the local index begin at least this far apart, however many reads ask for one: a read
# of data that is really lost must not cost a listing of the repository each time.
SYNC_MIN_GAP = 2.0
SYNC_WAIT_SECONDS = 60.0             # the longest a read waits for a sync to find a block's new place
# Entering a version asks the kernel to read the local index in, when it is no larger than this
# (and than 1/16 of the memory): see `_read_index_in`.
INDEX_READ_IN_MAX = 512 << 20
# Linux lets only CAP_SYS_ADMIN see trusted.* xattrs: the mount shows them to root alone.
TRUSTED_PREFIX = b"trusted."


class OpenFile:
    """A file opened for reading: its extents with prefix sums, and read-ahead state."""

    def __init__(self, ino: int, content: Content):
        self.ino = ino
        self.size = content.size
        self.extents = content.extents
        self.starts = []
        pos = 0
        for _, length in self.extents:
            self.starts.append(pos)
            pos += length
        self.next_offset = 0          # where a sequential reader reads next
        self.sequential_run = 0
        self.prefetched_to = 0        # extents below this index have been scheduled


class ThrottledLog:
    """Logs each kind of message (its `key`, e.g. the error's class and object) at most once per
    `interval` seconds; the next line of that kind says how many were held back meanwhile. A
    repository that fails every request must not write a line per request. Thread-safe."""

    MAX_KEYS = 1000

    def __init__(self, logger: logging.Logger, interval: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        # key -> [when last logged, lines held back since, level and text of the last one held back]
        self._seen: dict[Hashable, list] = {}

    def error(self, key: Hashable, message: str, exc_info: BaseException | None = None) -> None:
        self.log(logging.ERROR, key, message, exc_info)

    def warning(self, key: Hashable, message: str, exc_info: BaseException | None = None) -> None:
        self.log(logging.WARNING, key, message, exc_info)

    def log(self, level: int, key: Hashable, message: str, exc_info: BaseException | None = None) -> None:
        now = self.clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.interval:
                seen[1] += 1
                seen[2] = (level, message)
                return
            held_back = (seen[1], now - seen[0]) if seen else (0, 0.0)
            if len(self._seen) >= self.MAX_KEYS:
                self._forget_quiet_keys(now)
            self._seen[key] = [now, 0, None]
        self.logger.log(level, message + self._held_back_note(*held_back), exc_info=exc_info)

    def flush(self) -> None:
        """Log the last line held back of each kind (when the mount ends)."""
        now = self.clock()
        with self._lock:
            pending = [(seen[1], now - seen[0], seen[2]) for seen in self._seen.values() if seen[1]]
            self._seen.clear()
        for count, span, (level, message) in pending:
            self.logger.log(level, message + self._held_back_note(count - 1, span))

    def _forget_quiet_keys(self, now: float) -> None:
        """Drop kinds whose interval is over (their held-back count is lost: the map stays bounded)."""
        for key in [k for k, seen in self._seen.items() if now - seen[0] >= self.interval]:
            del self._seen[key]
        if len(self._seen) >= self.MAX_KEYS:
            self._seen.clear()

    @staticmethod
    def _held_back_note(count: int, span: float) -> str:
        return f" (and {count} more like it in the last {span:.0f} s)" if count else ""


def error_kind(e: BaseException) -> tuple:
    """What makes two errors the same message for `ThrottledLog`: their class and text; for an
    error the retry layer gave up on, those of the storage's own error (the count of attempts and
    seconds it adds differs every time)."""
    if isinstance(e, BackendError) and isinstance(e.__cause__, BackendError):
        e = e.__cause__
    return type(e), str(e)


class IndexSync:
    """Brings the local index in step with the repository (`Repository.ensure_index`: versions
    and volumes stored or removed by other machines) from a thread of its own, every `period`
    seconds (None: only when asked) and when a reader asks (`wait_for_sync_after`). Syncs begin
    at least `min_gap` seconds apart; requests made while one waits to begin share it.

    The sync writes through its own `Repository` over the same backend, keys and index file, whose
    SQLite connection is opened and closed in that thread (connections stay in their thread). A
    failed sync is logged (throttled) and does not stop anything: the mount serves what the index
    holds, and the next turn tries again."""

    def __init__(self, repo: Repository, messages: ThrottledLog, period: float | None,
                 min_gap: float = SYNC_MIN_GAP):
        self._source = repo
        self._messages = messages
        self.period = period
        self.min_gap = min_gap
        self._lock = threading.Condition()
        self._requested: Future | None = None          # the next sync, asked for and not begun yet
        done: Future = Future()
        done.set_result(None)
        self._latest: tuple[float, Future] = (-math.inf, done)   # when the latest sync began; its outcome
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="fsbackup-sync", daemon=True)
        self._thread.start()

    def wait_for_sync_after(self, moment: float) -> bool:
        """Wait for a sync that began at `moment` (a `time.monotonic()` reading) or later: the
        latest one if it did, else the next. Says whether it succeeded."""
        with self._lock:
            began, outcome = self._latest
            if began < moment:
                if self._requested is None:
                    if self._stopping:
                        return False
                    self._requested = Future()
                    self._lock.notify()
                outcome = self._requested
        try:        # bounded: a reader answers EIO rather than wait on a sync stuck in the storage
            return outcome.exception(timeout=SYNC_WAIT_SECONDS) is None
        except FutureTimeout:
            return False

    def close(self, wait: float = 5.0) -> None:
        """Stop the thread, waiting up to `wait` seconds for a sync under way (a daemon thread: a
        sync stuck on the storage does not keep the process alive)."""
        with self._lock:
            self._stopping = True
            self._lock.notify()
        self._thread.join(wait)

    def _next_due(self, last: float) -> float:
        """When the next sync begins, `last` being when the latest began (inf: when asked)."""
        due = math.inf
        if self._requested is not None:
            due = last + self.min_gap
        if self.period is not None:
            due = min(due, last + self.period)
        return due

    def _run(self) -> None:
        repo = Repository(self._source.backend, self._source.config, self._source.keys, self._source.index_path)
        repo.accept_missing = self._source.accept_missing
        last = time.monotonic()          # the index was brought up to date when the mount began
        try:
            while True:
                with self._lock:
                    while not self._stopping:
                        wait = self._next_due(last) - time.monotonic()
                        if wait <= 0:
                            break
                        self._lock.wait(None if wait == math.inf else wait)
                    if self._stopping:
                        if self._requested is not None:
                            self._requested.set_exception(FsbackupError("the mount is stopping"))
                        return
                    outcome, self._requested = self._requested or Future(), None
                    last = time.monotonic()
                    self._latest = (last, outcome)
                try:
                    repo.ensure_index()
                except Exception as e:  # noqa: BLE001 - logged; the mount serves what the index holds
                    self._report(e)
                    outcome.set_exception(e)
                else:
                    outcome.set_result(None)
        finally:
            repo.close_index()

    def _report(self, e: Exception) -> None:
        message = f"cannot bring the local index up to date with the repository: {e}; serving what it holds"
        if isinstance(e, FsbackupError):
            self._messages.warning(("sync", *error_kind(e)), message)
        else:                                       # a bug: its traceback, still throttled
            self._messages.error(("sync", *error_kind(e)), message, exc_info=e)


class RepositoryView:
    """The repository as a filesystem. `sync_seconds`: how often the local index is brought in step
    with the repository (None: only when a read finds its block's volume gone). `messages`: the
    mount's throttled log, shared with the FUSE adapter."""

    def __init__(self, repo: Repository, cache_dir: str | None = None, cache_size: int = 1 << 30,
                 memory_cache: int = 64 << 20, fetch_threads: int = 16, max_prefetch: int = 16,
                 sync_seconds: float | None = None):
        self.repo = repo
        self.index_path = repo.index_path
        self.messages = ThrottledLog(log)
        self.sync = IndexSync(repo, self.messages, sync_seconds)
        self._local = threading.local()
        self.memory = BlockCache(memory_cache)
        self.disk = DiskCache(cache_dir, cache_size) if cache_dir and cache_size > 0 else None
        # Fetch threads mostly wait on storage round trips: as many as the read-ahead window keeps
        # a whole window in flight on a remote store (8 halved cold reads at 30 ms latency).
        self.fetcher = ThreadPoolExecutor(fetch_threads, thread_name_prefix="fsbackup-fetch")
        self.max_prefetch = max_prefetch
        self.versions = Versions.of([])
        self.namespace = Namespace(lambda v: self._node_attr(v.id, self._node(v.id, ROOT_ID)))
        self._versions_with_xattrs: dict[int, bool] = {}     # version id -> whether any node has xattrs
        self._run_ahead_lock = threading.Lock()
        # block id -> (block id, location) of the last block of the run it lies halfway through
        self._run_ahead: OrderedDict[bytes, tuple[bytes, tuple]] = OrderedDict()
        self._contents_lock = threading.Lock()
        self._contents: OrderedDict[int, ContentRow] = OrderedDict()   # inode -> content, of files listed lately
        self.refresh_versions()

    # ---- plumbing -----------------------------------------------------------------------

    def _index(self) -> Index:
        """This thread's own connection to the local index (SQLite connections stay in their thread)."""
        index = getattr(self._local, "index", None)
        if index is None:
            index = self._local.index = Index(self.index_path)
        return index

    def close(self) -> None:
        self.fetcher.shutdown(wait=False, cancel_futures=True)
        self.sync.close()
        self.messages.flush()

    def refresh_versions(self) -> set[bytes]:
        """Re-read the version list from the local index; returns the names of the version
        directories that appeared or vanished (empty when none did)."""
        versions = Versions.of(list_versions(self._index()))
        changed = versions.by_name.keys() ^ self.versions.by_name.keys()
        if changed:
            self.versions = versions         # replaced whole: readers need no lock
        return changed

    @property
    def latest(self) -> bytes | None:
        """The newest version's directory name."""
        return self.versions.latest

    @property
    def by_name(self) -> dict[bytes, VersionInfo]:
        """The versions by directory name."""
        return self.versions.by_name

    def invalidations(self, changed: set[bytes]) -> Invalidations:
        """What the kernel must forget once the versions named `changed` came or went."""
        return self.namespace.invalidations(changed)

    def _version(self, version_id: int) -> tuple[bytes, VersionInfo]:
        found = self.versions.by_id.get(version_id)
        if found is None:
            raise FsOpError(errno.ENOENT)       # a version removed since the kernel learned its inode
        return found

    def _tree(self, version_id: int) -> VersionTree:
        """The version's tree, read through this thread's connection."""
        return VersionTree(self._index(), self._version(version_id)[1])

    def _node(self, version_id: int, node_id: int) -> Node:
        try:
            return self._tree(version_id).node(node_id)
        except PathNotFound:
            raise FsOpError(errno.ENOENT) from None

    # ---- attributes ---------------------------------------------------------------------

    def _canonical(self, version_id: int, node: Node) -> tuple[int, int]:
        """(node id that names the inode, link count inside the version) of a possibly hard-linked node."""
        if node.nlink <= 1 or node.type == "d":
            return node.id, 1
        first, count = self._index().one(
            "SELECT min(id), count(*) FROM nodes WHERE version=? AND dev=? AND ino=? AND nlink>1",
            (version_id, node.dev, node.ino))
        return first, count

    def _node_attr(self, version_id: int, node: Node) -> Attr:
        canonical, nlink = self._canonical(version_id, node)
        ino = (version_id << NODE_BITS) | canonical
        mtime = node.mtime_ns
        if node.id == ROOT_ID:                    # a version's directory shows the backup time
            mtime = self._version(version_id)[1].time_ns
        blocks = (node.stored + 511) // 512 if node.type == "f" and node.stored else 0
        size = node.size if node.type in "fl" else 0
        return Attr(ino, node.mode, max(1, nlink), node.uid, node.gid, node.rdev, size, blocks,
                    node.atime_ns, mtime, mtime, True)

    def getattr(self, ino: int) -> Attr:
        top = self.namespace.get(ino)
        if top is not None:
            return top.attr(self.versions)
        version_id, node_id = ino >> NODE_BITS, ino & NODE_MASK
        self._version(version_id)
        return self._node_attr(version_id, self._node(version_id, node_id))

    # ---- names --------------------------------------------------------------------------

    def lookup(self, parent: int, name: bytes) -> Attr:
        top = self.namespace.get(parent)
        if top is not None:
            attr = top.lookup(self.versions, name)
            if in_version(attr.ino):         # a version's root: its tree is read next
                self.fetcher.submit(_read_index_in, self.index_path)
            return attr
        # (no query for the parent: the kernel looks names up only in directories, and no other
        # node has children)
        version_id = parent >> NODE_BITS
        child = self._tree(version_id).lookup(parent & NODE_MASK, name)
        if child is None:
            raise FsOpError(errno.ENOENT)
        return self._node_attr(version_id, child)

    def readdir(self, ino: int, offset: int, limit: int = 1000) -> list[tuple[bytes, Attr, int]]:
        """Up to `limit` (name, attributes, next offset) entries after `offset` (0 = from the start).
        Offsets are stable: a listing resumes by name, so 100 000 entries stream in pages."""
        top = self.namespace.get(ino)
        if top is not None:
            entries = top.entries(self.versions)
            return [(name, attr, offset + i + 1) for i, (name, attr) in enumerate(entries[offset:offset + limit])]
        # `ino` is a directory: opendir checked (any other node lists nothing). The offset is the
        # node id of the last entry returned: resume after its name.
        version_id = ino >> NODE_BITS
        listed = self._tree(version_id).children_with_contents(ino & NODE_MASK, offset or None, limit)
        self._keep_contents(version_id, listed)
        return [(child.name, self._node_attr(version_id, child), child.id) for child, _ in listed]

    def _keep_contents(self, version_id: int, listed: list[Listed]) -> None:
        """Keep the contents of the files just listed (the listing's query brought them along), so
        that opening them needs no query: a listing is how nearly every reader (cp, a file manager,
        find) finds the files it opens next. Files of many extents are left to their open's query."""
        files = [(node.id, content) for node, content in listed
                 if content is not None and node.type == "f" and content.size <= KEPT_CONTENT_MAX_SIZE]
        if not files:
            return
        with self._contents_lock:
            for node_id, content in files:
                self._contents[(version_id << NODE_BITS) | node_id] = content
            while len(self._contents) > KEPT_CONTENTS:
                self._contents.popitem(last=False)

    def readlink(self, ino: int) -> bytes:
        top = self.namespace.get(ino)
        if top is not None:
            return top.readlink(self.versions)
        node = self._node(ino >> NODE_BITS, ino & NODE_MASK)
        if node.type != "l":
            raise FsOpError(errno.EINVAL)
        return node.target or b""

    def _xattrs(self, ino: int, privileged: bool) -> dict[bytes, bytes]:
        if not in_version(ino):
            return {}
        version_id, node_id = ino >> NODE_BITS, ino & NODE_MASK
        if not self._has_xattrs(version_id):
            return {}                  # no query: `ls -l` asks twice per entry, and most versions hold none
        xattrs = self._tree(version_id).xattrs(node_id)
        if xattrs is None:
            raise FsOpError(errno.ENOENT)
        if privileged:
            return xattrs
        return {name: value for name, value in xattrs.items() if not name.startswith(TRUSTED_PREFIX)}

    def any_xattrs(self) -> bool:
        """Whether any node of any version has an xattr."""
        return self._index().one("SELECT EXISTS (SELECT 1 FROM nodes WHERE xattrs IS NOT NULL)")[0] == 1

    def warn_of_hidden_xattrs(self, names: set[bytes]) -> None:
        """For a mount that answers no xattr request: a line for each of the versions `names` (just
        appeared) that has xattrs it does not show."""
        by_name = self.versions.by_name
        new = [(name, by_name[name]) for name in names if name in by_name]
        for name, v in new:
            if self._has_xattrs(v.id):
                self.messages.warning(("hidden xattrs", name), f"version {os.fsdecode(name)} holds extended "
                                      "attributes or ACLs, which this mount does not show (it began with none, "
                                      "and told the kernel not to ask); mount again to see them")

    def _has_xattrs(self, version_id: int) -> bool:
        """Whether any node of the version has an xattr: asked once per version (a version never changes)."""
        known = self._versions_with_xattrs.get(version_id)
        if known is None:
            known = self._versions_with_xattrs[version_id] = self._tree(version_id).has_xattrs()
        return known

    def getxattr(self, ino: int, name: bytes, privileged: bool = False) -> bytes:
        """The value of xattr `name`; ENODATA when the entry has none. trusted.* xattrs exist
        only for a `privileged` caller (root), as on a local file system."""
        value = self._xattrs(ino, privileged).get(name)
        if value is None:
            raise FsOpError(errno.ENODATA)
        return value

    def listxattr(self, ino: int, privileged: bool = False) -> list[bytes]:
        """The names of the entry's xattrs; trusted.* ones only for a `privileged` caller (root)."""
        return list(self._xattrs(ino, privileged))

    def statfs(self) -> dict:
        stored, = self._index().one("SELECT coalesce(sum(size), 0) FROM volumes")
        files, = self._index().one("SELECT count(*) FROM nodes")
        return {"bsize": BLOCK_SIZE, "blocks": (stored + BLOCK_SIZE - 1) // BLOCK_SIZE, "bfree": 0,
                "files": files + 3, "ffree": 0, "namemax": 255}

    def path_of(self, ino: int) -> str:
        """A readable path for log messages."""
        if not in_version(ino):
            return "/"
        version_id, node_id = ino >> NODE_BITS, ino & NODE_MASK
        name, _ = self._version(version_id)
        tree = self._tree(version_id)
        return os.fsdecode(b"/versions/" + name + tree.path_of(tree.node(node_id)))

    # ---- reading ------------------------------------------------------------------------

    def open(self, ino: int) -> OpenFile:
        """The file, as its directory's listing kept it, else found with one indexed query. The
        load of its first block begins, so the read that follows finds it on its way (with the
        blocks after it in its volume: the next files)."""
        if not in_version(ino):
            raise FsOpError(errno.EISDIR)
        listed = self._contents.get(ino)        # (one operation on the dict: no lock needed)
        if listed is None:
            version_id, node_id = ino >> NODE_BITS, ino & NODE_MASK
            found = self._tree(version_id).file(node_id)
            if found is None:
                raise FsOpError(errno.ENOENT)
            if found.type == "d":
                raise FsOpError(errno.EISDIR)
            if found.type != "f" or found.content is None:
                raise FsOpError(errno.EINVAL)
            content = found.content
        else:
            self._version(ino >> NODE_BITS)           # a version forgotten since: ENOENT
            content = listed.unpack()
        f = OpenFile(ino, content)
        first = next((bid for bid, _ in f.extents[:1] if bid != fmt.HOLE_ID), None)
        if first is not None:
            self._block_source(first, with_run=len(f.extents) == 1)
        return f

    def start_read(self, f: OpenFile, offset: int, size: int) -> bytes | memoryview | PendingRead:
        """The bytes [offset, offset+size) of the file (fewer at its end) when every block they need
        is in memory; else a PendingRead whose blocks are on their way (their loads started here).
        Never blocks: the FUSE adapter answers the first kind on its own thread and awaits the
        second without a thread of its own."""
        end = min(offset + size, f.size)
        if offset >= end:
            return b""
        if len(f.extents) == 1:                # a small file: one block, most often in memory
            source = self._block_source(f.extents[0][0], True) if f.extents[0][0] != fmt.HOLE_ID else None
            if isinstance(source, bytes):
                return source if (offset, end) == (0, len(source)) else source[offset:end]
        first = bisect.bisect_right(f.starts, offset) - 1
        last = first
        while last + 1 < len(f.extents) and f.starts[last + 1] < end:
            last += 1
        small = len(f.extents) == 1
        sources = {i: self._block_source(f.extents[i][0], small) for i in range(first, last + 1)
                   if f.extents[i][0] != fmt.HOLE_ID}
        self._read_ahead(f, offset, end, last)
        read = PendingRead(f, offset, end, first, last, sources)
        if read.waiting():
            return read
        return read.assemble()

    def read(self, f: OpenFile, offset: int, size: int) -> bytes:
        """Exactly the bytes [offset, offset+size) of the file (fewer at its end), waiting for them.
        Raises the FsbackupError (CorruptObject, NoSuchObject, BackendError, PermissionDenied...) of a
        needed block that cannot be had: never wrong bytes. The caller reports it."""
        for _ in range(READ_ATTEMPTS):
            started = self.start_read(f, offset, size)
            if not isinstance(started, PendingRead):
                return bytes(started)
            for fut in started.waiting():
                fut.exception()                  # waits; assemble() raises what it holds
            data = started.assemble()
            if data is not None:
                return bytes(data)
        raise BackendError(f"a block of {self.path_of(f.ino)} was abandoned by {READ_ATTEMPTS} loads in a row")

    def _read_ahead(self, f: OpenFile, offset: int, end: int, last: int) -> None:
        """On sequential reads, start loading the next blocks (more the longer the run), bounded."""
        if offset == f.next_offset:
            f.sequential_run += 1
        else:
            f.sequential_run = 0
            f.prefetched_to = 0
        f.next_offset = end
        if f.sequential_run < 2:
            return
        window = min(self.max_prefetch, 2 ** min(f.sequential_run - 1, 8))
        start = max(last + 1, f.prefetched_to)
        stop = min(len(f.extents), last + 1 + window)
        for i in range(start, stop):
            if f.extents[i][0] != fmt.HOLE_ID:
                self._block_source(f.extents[i][0], False)
        f.prefetched_to = max(f.prefetched_to, stop)

    def _block_source(self, block_id: bytes, with_run: bool) -> bytes | Future:
        """The block's bytes, or the Future of its load: the one under way, or one started here.
        `with_run`: the block is a small file's, and a load started here brings the blocks after it
        (the next files); a large file's blocks are loaded one by one, in parallel (read-ahead)."""
        source, mine = self.memory.source(block_id)
        if mine:
            self.fetcher.submit(self._load_run, block_id, with_run)
        elif self._run_ahead:
            with self._run_ahead_lock:
                after = self._run_ahead.pop(block_id, None)
            if after is not None:
                self.fetcher.submit(self._load_run_after, *after)
        return source

    def _load_run(self, block_id: bytes, with_run: bool) -> None:
        """Runs in a fetch thread: loads `block_id` (whose load the caller claimed) and settles it,
        then, `with_run`, brings along the blocks after it in its volume (`_load_run_after`): backup stores a
        directory's files side by side, and people read them in that order, so the next files'
        opens and reads find their blocks in memory. The block asked for comes alone first: its
        reader waits for it, not for the run."""
        claims = Claims(self.memory, block_id)
        looked_up = time.monotonic()
        try:
            try:
                location = self.repo.block_location(block_id, self._index())
                data = self._fetch_block(block_id, location)
            except NoSuchObject as e:     # recorded nowhere, or its volume gone: moved by another machine?
                location = None
                data = self._after_sync(block_id, e, looked_up)
            claims.settle(block_id, data)
        except BaseException as e:
            claims.settle_rest(e)
            if not isinstance(e, Exception):
                raise
            return
        if with_run and location is not None:
            self._load_run_after(block_id, location)

    def _load_run_after(self, block_id: bytes, location: tuple) -> None:
        """Runs in a fetch thread: the blocks after `block_id` (at `location`) in its volume, up to
        RUN_BYTES, with one range read, each settled as it decodes. When the run is long, a reader
        halfway through it starts the next one (`_block_source`), so that a reader going through a
        directory does not wait at the end of each run. Every block is speculative: one that fails
        is abandoned, left to its own reader to load and report."""
        claims = Claims(self.memory)
        try:
            run = self._claim_neighbours(block_id, location, self._index())
            claims.add(bid for bid, _ in run)
            if len(run) >= RUN_AHEAD_MIN_BLOCKS:
                with self._run_ahead_lock:
                    self._run_ahead[run[len(run) // 2][0]] = run[-1]
                    while len(self._run_ahead) > RUN_AHEAD_KEPT:
                        self._run_ahead.popitem(last=False)
            for fetched in self.repo.fetch_run_blocks(run) if run else ():
                if isinstance(fetched.data, FsbackupError):
                    claims.settle(fetched.block_id, None)
                else:
                    self._to_disk_cache(fetched)
                    claims.settle(fetched.block_id, fetched.data)
        except BaseException as e:
            claims.settle_rest(e)
            if not isinstance(e, Exception):
                raise

    def _claim_neighbours(self, block_id: bytes, location: tuple, index: Index) -> list[tuple[bytes, tuple]]:
        """The blocks after `block_id` in its volume that one range read should bring along, each
        claimed for this load: none for a block of RUN_BYTES or more (a large file's read-ahead
        fetches those in parallel); else those neither cached nor being loaded, up to RUN_BYTES."""
        volume, offset, stored_length, _ = location
        if stored_length >= RUN_BYTES // 2:
            return []
        candidates = []
        for bid, where, length, plain in index.q(
                "SELECT hash, offset, stored_length, plain_length FROM blocks "
                "WHERE volume = (SELECT volume FROM blocks WHERE hash=?) AND offset > ? AND offset < ? "
                "ORDER BY offset LIMIT ?", (block_id, offset, offset + RUN_BYTES, RUN_BLOCKS)):
            if where + length > offset + RUN_BYTES:
                break
            candidates.append((bid, (volume, where, length, plain)))
        claimed = self.memory.claim([bid for bid, _ in candidates])
        return [candidate for candidate in candidates if candidate[0] in claimed]

    def _to_disk_cache(self, fetched: FetchedBlock) -> None:
        if self.disk is not None and fetched.stored is not None:
            self.disk.put(fetched.block_id, bytes(fetched.stored))     # only bytes that authenticated

    def _after_sync(self, block_id: bytes, gone: NoSuchObject, looked_up: float) -> bytes:
        """A block found gone (`gone`: recorded nowhere, or its volume missing) after its location was
        looked up at `looked_up` (a `time.monotonic()` reading). Another machine's prune may have
        moved it: the local index is brought up to date, and the block looked up and fetched once
        more before the error stands."""
        if not self.sync.wait_for_sync_after(looked_up):
            raise gone
        return self._fetch_block(block_id, self.repo.block_location(block_id, self._index()))

    def _fetch_block(self, block_id: bytes, location: tuple) -> bytes:
        """The disk cache, else one range read (the repository's backend retries temporary
        failures within the mount's bound, and re-fetches a damaged download)."""
        if self.disk is not None:
            stored = self.disk.get(block_id)
            if stored is not None:
                try:
                    return self.repo.decode_block(block_id, location, stored)
                except CorruptObject:
                    self.disk.discard(block_id)      # a damaged cache entry: fetch again
        data, stored = self.repo.download_block(block_id, location)
        if self.disk is not None:
            self.disk.put(block_id, stored)       # only bytes that authenticated
        return data


def _read_index_in(index_path: str) -> None:
    """Ask the kernel to read the local index into the page cache (in the background), when it is
    small enough to keep there. Runs when a version is entered: the kernel looks a version's
    directory up again only after it forgot it (an hour, or memory needed elsewhere, as after a
    reboot), when it has most likely forgotten the index's pages too. A listing then reads the index
    page by page at random places, each a wait for the disk (a third of a cold `find`); read in
    ahead, the pages arrive in one sweep. Pages already cached cost nothing. Only a hint: errors are
    ignored."""
    try:
        fd = os.open(index_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        size = os.fstat(fd).st_size
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        if size <= min(INDEX_READ_IN_MAX, memory // 16):
            os.posix_fadvise(fd, 0, size, os.POSIX_FADV_WILLNEED)
    except (OSError, ValueError):
        pass
    finally:
        os.close(fd)


class Claims:
    """Blocks whose loads a fetch thread claimed in the block cache: each is settled once, whatever
    happens (a waiter must never wait forever). `asked`: the block a reader asked for, whose
    failure is its reader's error; the others are neighbours brought along, abandoned on failure
    (their own readers then load them and report)."""

    def __init__(self, memory: BlockCache, asked: bytes | None = None):
        self.memory = memory
        self.asked = asked
        self.unsettled: dict[bytes, None] = dict.fromkeys([asked] if asked is not None else [])

    def add(self, block_ids) -> None:
        self.unsettled.update(dict.fromkeys(block_ids))

    def settle(self, block_id: bytes, outcome: bytes | BaseException | None) -> None:
        del self.unsettled[block_id]
        if outcome is None:
            self.memory.abandoned(block_id)
        elif isinstance(outcome, BaseException):
            self.memory.failed(block_id, outcome)
        else:
            self.memory.loaded(block_id, outcome)

    def settle_rest(self, error: BaseException) -> None:
        for block_id in list(self.unsettled):
            self.settle(block_id, error if block_id == self.asked else None)


class PendingRead:
    """A read whose blocks are on their way (`RepositoryView.start_read`)."""

    def __init__(self, f: OpenFile, offset: int, end: int, first: int, last: int,
                 sources: dict[int, bytes | Future]):
        self.f, self.offset, self.end, self.first, self.last = f, offset, end, first, last
        self.sources = sources           # extent number -> its block's bytes, or the Future of its load

    def waiting(self) -> list[Future]:
        return [s for s in self.sources.values() if isinstance(s, Future) and not s.done()]

    def assemble(self) -> bytes | memoryview | None:
        """The bytes, once every block is loaded; None when a load was abandoned (ask again).
        Raises the error of a block that failed."""
        f, parts = self.f, []
        for i in range(self.first, self.last + 1):
            block_id, length = f.extents[i]
            lo, hi = max(self.offset - f.starts[i], 0), min(self.end - f.starts[i], length)
            if block_id == fmt.HOLE_ID:
                parts.append(bytes(hi - lo))
                continue
            data = self.sources[i]
            if isinstance(data, Future):
                data = data.result()
                if data is None:
                    return None
            parts.append(data if (lo, hi) == (0, len(data)) else memoryview(data)[lo:hi])
        # One block's part goes out as it is, a view of the cached block (the kernel copies it
        # anyway: a copy here would be a second one, under the GIL, per 128 KiB read).
        return parts[0] if len(parts) == 1 else b"".join(parts)
