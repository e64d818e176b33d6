"""Reading files in the mount: which blocks a read needs, and loading them.

A read is answered from memory when its blocks are there (`BlockLoader.start_read` never blocks);
otherwise their loads start in the loader's fetch threads and the read waits on their Futures.
A small file's block comes with the blocks after it in its volume (the next files of its
directory, read next); a large file's blocks are read ahead in parallel: one by one from local
storage, in runs of adjacent blocks (one range read each, several in flight) from remote storage,
where every request costs a round trip. Each block is loaded once however many readers want it
(`BlockCache` claims), and every claim is settled.
"""
from __future__ import annotations

import bisect
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from ..catalog import BlockLocation, Catalog
from ..catalog.blocks import block_locations, blocks_after
from ..catalog.tree import Content
from ..codec import wire
from ..errors import CorruptObject, FsbackupError, NoSuchObject
from ..repository import FetchedBlock, Repository, block_runs
from ..repository.blockcache import BlockCache
from .diskcache import DiskCache
from .sync import CatalogSync

# A read that misses loads its block with the blocks after it in its volume, up to this many bytes
# and blocks, in one range read (the next files of the directory, in the order people read them).
RUN_BYTES = 1 << 20
RUN_BLOCKS = 256
RUN_AHEAD_MIN_BLOCKS = 16           # a reader halfway through a run this long starts the next one
RUN_AHEAD_KEPT = 1024
# On remote storage a large file read in order is read ahead in runs: its next blocks that lie
# back to back in a volume, up to REMOTE_RUN_BYTES, come in one range read (reading over gaps up
# to REMOTE_RUN_GAP), with up to REMOTE_AHEAD_BYTES of the file (at most half the memory cache,
# which keeps the blocks until they are read) on their way: several runs in flight, each
# downloaded and decoded in its own fetch thread.
REMOTE_RUN_BYTES = 8 << 20
REMOTE_RUN_GAP = 64 << 10
REMOTE_AHEAD_BYTES = 24 << 20
READ_ATTEMPTS = 4                    # loads of one read abandoned in a row before it fails (EIO)


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


class BlockLoader:
    """Blocks for the mount's reads: a memory cache of decoded blocks, a disk cache of encrypted
    ones (None: none), and `fetch_threads` threads that load them. `index` gives the calling
    thread's own connection to the local index; `sync` brings the index up to date when a block
    is found gone (another machine's prune moved it)."""

    def __init__(self, repo: Repository, catalog: Callable[[], Catalog], sync: CatalogSync, memory_cache: int,
                 disk: DiskCache | None, fetch_threads: int, max_prefetch: int):
        self.repo = repo
        self._catalog = catalog
        self.sync = sync
        self.memory = BlockCache(memory_cache)
        self.disk = disk
        # Fetch threads mostly wait on storage round trips: as many as the read-ahead window keeps
        # a whole window in flight on a remote store (8 halved cold reads at 30 ms latency).
        self.fetcher = ThreadPoolExecutor(fetch_threads, thread_name_prefix="fsbackup-fetch")
        self._start_fetch_threads(fetch_threads)
        self.max_prefetch = max_prefetch
        self._run_ahead_lock = threading.Lock()
        # block id -> (block id, location) of the last block of the run it lies halfway through
        self._run_ahead: OrderedDict[bytes, tuple[bytes, BlockLocation]] = OrderedDict()

    def _start_fetch_threads(self, count: int) -> None:
        """Start every fetch thread now, each with its connection to the local index open, so the
        first read of the mount does not pay for a thread and a connection (about 5 ms on a cold
        machine: the first byte of a file is what a person opening it waits for). The executor
        starts threads lazily, one per task that finds none idle: the tasks wait for each other,
        so there are `count` of them at once."""
        all_started = threading.Barrier(count)

        def start() -> None:
            self._catalog()
            try:
                all_started.wait(timeout=10)
            except threading.BrokenBarrierError:      # a slow start only makes the first read wait
                pass
        for _ in range(count):
            self.fetcher.submit(start)

    def close(self) -> None:
        self.fetcher.shutdown(wait=False, cancel_futures=True)

    def opened(self, f: OpenFile) -> None:
        """A file was opened: its first block's load begins, so the read that follows finds it on
        its way (with the blocks after it in its volume: the next files)."""
        first = next((bid for bid, _ in f.extents[:1] if bid != wire.HOLE_ID), None)
        if first is not None:
            self.source(first, with_run=len(f.extents) == 1)

    def start_read(self, f: OpenFile, offset: int, size: int) -> bytes | memoryview | PendingRead:
        """The bytes [offset, offset+size) of the file (fewer at its end) when every block they need
        is in memory; else a PendingRead whose blocks are on their way (their loads started here).
        Never blocks: the FUSE adapter answers the first kind on its own thread and awaits the
        second without a thread of its own."""
        end = min(offset + size, f.size)
        if offset >= end:
            return b""
        if len(f.extents) == 1:                # a small file: one block, most often in memory
            source = self.source(f.extents[0][0], True) if f.extents[0][0] != wire.HOLE_ID else None
            if isinstance(source, bytes):
                return source if (offset, end) == (0, len(source)) else source[offset:end]
        first = bisect.bisect_right(f.starts, offset) - 1
        last = first
        while last + 1 < len(f.extents) and f.starts[last + 1] < end:
            last += 1
        small = len(f.extents) == 1
        sources = {i: self.source(f.extents[i][0], small) for i in range(first, last + 1)
                   if f.extents[i][0] != wire.HOLE_ID}
        self._read_ahead(f, offset, end, last)
        read = PendingRead(f, offset, end, first, last, sources)
        if read.waiting():
            return read
        data = read.assemble()
        # None: a load this read found under way was abandoned meanwhile (a neighbour that failed):
        # the caller asks again, as for any abandoned load.
        return read if data is None else data

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
        if not self.repo.storage_is_local:
            self._read_ahead_in_runs(f, end, last)
            return
        window = min(self.max_prefetch, 2 ** min(f.sequential_run - 1, 8))
        start = max(last + 1, f.prefetched_to)
        stop = min(len(f.extents), last + 1 + window)
        for i in range(start, stop):
            if f.extents[i][0] != wire.HOLE_ID:
                self.source(f.extents[i][0], False)
        f.prefetched_to = max(f.prefetched_to, stop)

    def _read_ahead_in_runs(self, f: OpenFile, end: int, last: int) -> None:
        """`_read_ahead` on remote storage: the extents after the read (`end`, in extent `last`) up
        to the window (growing with the run of sequential reads) are claimed and handed to fetch
        threads in groups of up to REMOTE_RUN_BYTES (less with a small memory cache), each group
        one range read when its blocks lie together. The window moves on only by a run's worth at
        a time, so that no range read is short but the file's last."""
        ahead = min(REMOTE_AHEAD_BYTES, self.memory.max_bytes // 2,
                    REMOTE_RUN_BYTES << min(f.sequential_run - 2, 3))
        run_bytes = min(REMOTE_RUN_BYTES, ahead)
        start = max(last + 1, f.prefetched_to)
        stop = bisect.bisect_left(f.starts, end + ahead)
        if start >= stop or (stop < len(f.extents) and f.starts[stop] - f.starts[start] < run_bytes):
            return
        claimed = self.memory.claim([bid for bid, _ in f.extents[start:stop] if bid != wire.HOLE_ID])
        group: list[bytes] = []
        group_bytes = 0
        for block_id, length in f.extents[start:stop]:
            if block_id not in claimed:
                continue                  # a hole, cached, being loaded, or already in a group
            claimed.discard(block_id)
            if group and group_bytes + length > run_bytes:
                self.fetcher.submit(self._load_ahead, group)
                group, group_bytes = [], 0
            group.append(block_id)
            group_bytes += length
        if group:
            self.fetcher.submit(self._load_ahead, group)
        f.prefetched_to = stop

    def source(self, block_id: bytes, with_run: bool) -> bytes | Future:
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
                location = self.repo.block_location(block_id, self._catalog())
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

    def _load_run_after(self, block_id: bytes, location: BlockLocation) -> None:
        """Runs in a fetch thread: the blocks after `block_id` (at `location`) in its volume, up to
        RUN_BYTES, with one range read, each settled as it decodes. When the run is long, a reader
        halfway through it starts the next one (`_block_source`), so that a reader going through a
        directory does not wait at the end of each run. Every block is speculative: one that fails
        is abandoned, left to its own reader to load and report."""
        claims = Claims(self.memory)
        try:
            run = self._claim_neighbours(block_id, location, self._catalog())
            claims.add(bid for bid, _ in run)
            if len(run) >= RUN_AHEAD_MIN_BLOCKS:
                with self._run_ahead_lock:
                    self._run_ahead[run[len(run) // 2][0]] = run[-1]
                    while len(self._run_ahead) > RUN_AHEAD_KEPT:
                        self._run_ahead.popitem(last=False)
            if run:
                self._fetch_run(run, claims)
        except BaseException as e:
            claims.settle_rest(e)
            if not isinstance(e, Exception):
                raise

    def _load_ahead(self, block_ids: list[bytes]) -> None:
        """Runs in a fetch thread: blocks of a large file's read-ahead (`_read_ahead_in_runs`, which
        claimed them), from the disk cache, else fetched as runs of blocks lying together in a
        volume (one range read each), each settled as it decodes. Every block is speculative: one
        recorded nowhere or failing is abandoned, left to its own reader to load and report."""
        claims = Claims(self.memory)
        claims.add(block_ids)
        try:
            located = block_locations(self._catalog(), block_ids)
            to_fetch = []
            for block_id in block_ids:
                location = located.get(block_id)
                data = self._from_disk_cache(block_id, location) if location is not None else None
                if data is not None or location is None:
                    claims.settle(block_id, data)
                else:
                    to_fetch.append((block_id, location))
            to_fetch.sort(key=lambda item: (item[1].volume, item[1].offset))
            # (a group is at most REMOTE_RUN_BYTES of plain bytes: its stored bytes, a little more
            # when they do not compress, stay one run)
            for run in block_runs(to_fetch, 2 * REMOTE_RUN_BYTES, REMOTE_RUN_GAP):
                self._fetch_run(run, claims)
        except BaseException as e:
            claims.settle_rest(e)
            if not isinstance(e, Exception):
                raise

    def _fetch_run(self, run: list[tuple[bytes, BlockLocation]], claims: Claims) -> None:
        """One range read for `run` (blocks claimed in `claims`), each block settled as it decodes
        and kept in the disk cache; one that fails is abandoned."""
        for fetched in self.repo.fetch_run_blocks(run):
            if isinstance(fetched.data, FsbackupError):
                claims.settle(fetched.block_id, None)
            else:
                self._to_disk_cache(fetched)
                claims.settle(fetched.block_id, fetched.data)

    def _claim_neighbours(self, block_id: bytes, location: BlockLocation,
                          catalog: Catalog) -> list[tuple[bytes, BlockLocation]]:
        """The blocks after `block_id` in its volume that one range read should bring along, each
        claimed for this load: none for a block of RUN_BYTES or more (a large file's read-ahead
        fetches those in parallel); else those neither cached nor being loaded, up to RUN_BYTES."""
        if location.stored_length >= RUN_BYTES // 2:
            return []
        candidates = blocks_after(catalog, block_id, location, RUN_BYTES, RUN_BLOCKS)
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
        return self._fetch_block(block_id, self.repo.block_location(block_id, self._catalog()))

    def _from_disk_cache(self, block_id: bytes, location: BlockLocation) -> bytes | None:
        """The block from the disk cache, or None (not there, or damaged there: then dropped)."""
        if self.disk is not None:
            stored = self.disk.get(block_id)
            if stored is not None:
                try:
                    return self.repo.decode_block(block_id, location, stored)
                except CorruptObject:
                    self.disk.discard(block_id)      # a damaged cache entry: fetch again
        return None

    def _fetch_block(self, block_id: bytes, location: BlockLocation) -> bytes:
        """The disk cache, else one range read (the repository's backend retries temporary
        failures within the mount's bound, and re-fetches a damaged download)."""
        data = self._from_disk_cache(block_id, location)
        if data is not None:
            return data
        data, stored = self.repo.download_block(block_id, location)
        if self.disk is not None:
            self.disk.put(block_id, stored)       # only bytes that authenticated
        return data


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
        f, parts = self.f, []  # type: tuple[OpenFile, list[bytes | memoryview]]
        for i in range(self.first, self.last + 1):
            block_id, length = f.extents[i]
            lo, hi = max(self.offset - f.starts[i], 0), min(self.end - f.starts[i], length)
            if block_id == wire.HOLE_ID:
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
