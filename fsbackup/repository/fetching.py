"""A file's blocks fetched ahead of the one reader that takes them in file order (restore's
writer, dump's stream): on local storage block by block through a cache, on remote storage as
range reads of the runs of blocks lying back to back in a volume. Every block is authenticated by
`Repository.fetch_block` or `fetch_run`."""
from __future__ import annotations

import collections
import functools
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from ..catalog import BlockLocation
from ..codec import wire
from .blockcache import BlockCache
from .repository import Repository

RUN_BYTES = 4 << 20        # a range read covers adjacent blocks up to this many bytes ...
RUN_GAP = 64 << 10         # ... reading over gaps this small, cheaper than another request


def file_fetches(repo: Repository, pool: ThreadPoolExecutor, cache: BlockCache,
                 extents: list[tuple[bytes, int]]) -> dict[bytes, Callable[[], Future]]:
    """For each stored block of a file (`extents`), what starts its fetch in `pool` when the
    reader's window reaches it and returns its Future (`fetched_block` takes the bytes from it).
    A starter raises NoSuchObject, and a block absent from the dict (KeyError) is one, when no
    stored volume holds the block. Every block is authenticated by the repository."""
    if repo.storage_is_local:
        return {block_id: functools.partial(_fetch_one, repo, pool, cache, block_id)
                for block_id, _ in extents if block_id != wire.HOLE_ID}
    return _runs_of(repo, pool, extents)


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


def _runs_of(repo: Repository, pool: ThreadPoolExecutor,
             extents: list[tuple[bytes, int]]) -> dict[bytes, Callable[[], Future]]:
    """On remote storage, where a request costs a round trip: for each stored block of a file,
    what starts the range read of its run (blocks lying back to back in a volume, in file order,
    up to RUN_BYTES)."""
    ids = [block_id for block_id, _ in extents if block_id != wire.HOLE_ID]
    uses = collections.Counter(ids)
    locations = repo.block_locations(ids)
    fetches: dict[bytes, Callable[[], Future]] = {}
    run: list[tuple[bytes, BlockLocation]] = []
    for block_id in uses:                        # (a block repeated in the file: fetched once)
        location = locations.get(block_id)
        if location is None:
            continue
        if run:
            first, last = run[0][1], run[-1][1]
            end = last.offset + last.stored_length
            if (location.volume != first.volume or not end <= location.offset <= end + RUN_GAP
                    or location.offset + location.stored_length - first.offset > RUN_BYTES):
                _add_run(repo, pool, run, sum(uses[b] for b, _ in run), fetches)
                run = []
        run.append((block_id, location))
    if run:
        _add_run(repo, pool, run, sum(uses[b] for b, _ in run), fetches)
    return fetches


def _add_run(repo: Repository, pool: ThreadPoolExecutor, run: list[tuple[bytes, BlockLocation]], asks: int,
             fetches: dict[bytes, Callable[[], Future]]) -> None:
    """One range read for `run`, started when the first of its blocks is wanted, and let go once
    its blocks have been asked for `asks` times (each use of them in the file): the reader holds
    what it still needs, and `fetches` lives as long as the file is read, so holding every run's
    bytes would grow with the file. An ask beyond those starts a new read."""
    started: list[Future] = []
    asks_left = [asks]

    def fetch() -> Future:
        if not started:
            started.append(pool.submit(repo.fetch_run, run))
        future = started[0]
        asks_left[0] -= 1
        if asks_left[0] <= 0:
            started.clear()
        return future
    for block_id, _ in run:
        fetches[block_id] = fetch
