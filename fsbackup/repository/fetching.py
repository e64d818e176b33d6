"""A file's blocks fetched ahead of the one reader that takes them in file order (restore's
writer, dump's stream): on local storage block by block through a cache, on remote storage as
range reads of the runs of blocks lying back to back in a volume. Every block is authenticated by
`Repository.fetch_block` or `fetch_run`."""
from __future__ import annotations

import functools
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from ..catalog import BlockLocation
from ..codec import wire
from .blockcache import BlockCache
from .repository import Repository

RUN_BYTES = 4 << 20        # a range read covers adjacent blocks up to this many bytes ...
RUN_GAP = 64 << 10         # ... reading over gaps this small, cheaper than another request
LARGE_RUN_BYTES = 8 << 20  # a large file's range reads (one file, read in order) cover up to this many bytes,
RUNS_AHEAD = 3             # and this many runs after the reader's are on their way (memory: 4 runs)


def file_fetches(repo: Repository, pool: ThreadPoolExecutor, cache: BlockCache,
                 extents: list[tuple[bytes, int]]) -> dict[bytes, Callable[[], Future]]:
    """For each stored block of a file (`extents`), what starts its fetch in `pool` when the
    reader's window reaches it and returns its Future (`fetched_block` takes the bytes from it).
    A starter raises NoSuchObject, and a block absent from the dict (KeyError) is one, when no
    stored volume holds the block. Every block is authenticated by the repository."""
    if repo.storage_is_local:
        return {block_id: functools.partial(_fetch_one, repo, pool, cache, block_id)
                for block_id, _ in extents if block_id != wire.HOLE_ID}
    return _runs_of(repo, pool, cache, extents)


def fetched_block(fetched: Future, block_id: bytes) -> bytes:
    """The bytes of `block_id` from a Future of `file_fetches`; CorruptObject or NoSuchObject when
    it cannot be had."""
    data = fetched.result()
    if isinstance(data, dict):
        data = data[block_id]
        if not isinstance(data, bytes):
            raise data
    return data


def _fetch_one(repo: Repository, pool: ThreadPoolExecutor, cache: BlockCache, block_id: bytes) -> Future:
    """One block fetched on its own (through the cache, decoded in parallel with its neighbours),
    from where the catalog says it lies now (a prune may have moved it)."""
    location = repo.block_location(block_id)
    return pool.submit(cache.get, block_id, functools.partial(repo.fetch_block, location=location))


def _runs_of(repo: Repository, pool: ThreadPoolExecutor, cache: BlockCache,
             extents: list[tuple[bytes, int]]) -> dict[bytes, Callable[[], Future]]:
    """On remote storage, where a request costs a round trip: for each stored block of a file,
    what starts the range read of its run (blocks lying back to back in a volume, in file order,
    up to LARGE_RUN_BYTES) and the RUNS_AHEAD runs after it (`FileRuns`)."""
    ids = [block_id for block_id, _ in extents if block_id != wire.HOLE_ID]
    locations = repo.block_locations(ids)
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
    file_runs = FileRuns(runs, lambda run: pool.submit(repo.fetch_run, run),
                         functools.partial(_fetch_one, repo, pool, cache))
    return {block_id: functools.partial(file_runs.fetch, block_id) for run in runs for block_id, _ in run}


class FileRuns:
    """A file's stored blocks on remote storage, grouped into runs (one range read each,
    `Repository.fetch_run`), in file order. Wanting a block (`fetch`) starts its run and the
    RUNS_AHEAD runs after it, so that several range reads are in flight while the reader works
    through its window; the runs before it are let go (the reader holds what it still needs), so
    memory stays bounded whatever the file's size. A block wanted again after its run was let go
    (a repeat further on in the file) is fetched alone (`fetch_alone`)."""

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
