"""repository.fetching: a file's blocks fetched ahead of its one reader (restore's writer, dump)."""
from __future__ import annotations

import gc
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor

from fsbackup.catalog import BlockLocation
from fsbackup.repository.blockcache import BlockCache
from fsbackup.repository.fetching import LARGE_RUN_BYTES, RUNS_AHEAD, FileRuns, fetched_block, file_fetches

BLOCK = 1 << 20


class RemoteStorage:
    """What file_fetches asks of a repository on remote storage: block places, and range reads of
    runs that return fresh objects each time (so that what stays alive can be watched)."""
    storage_is_local = False

    def __init__(self, block_ids: list[bytes]):
        self.locations = {b: BlockLocation("v", i * BLOCK, BLOCK, BLOCK) for i, b in enumerate(block_ids)}
        self.runs_read = 0
        self.blocks_read = 0                  # fetched alone

    def block_locations(self, ids):
        return {b: self.locations[b] for b in ids if b in self.locations}

    def block_location(self, block_id):
        return self.locations[block_id]

    def fetch_block(self, block_id, location):
        self.blocks_read += 1
        return bytes(block_id) * (BLOCK // 32)

    def fetch_run(self, run):
        self.runs_read += 1
        return {block_id: bytes(block_id) * (BLOCK // 32) for block_id, _ in run}


def read_soon(repo: RemoteStorage, count: int) -> bool:
    """Whether the pool's threads have made `count` range reads, within a few seconds (they run
    on their own), and no more."""
    deadline = time.monotonic() + 10
    while repo.runs_read < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return repo.runs_read == count


def test_a_run_read_is_let_go_once_the_reader_is_past_it():
    """A large file on remote storage is many runs: each run's bytes must be freed once the reader
    has moved past it, not kept until the whole file is read (memory would grow with the file)."""
    per_run = LARGE_RUN_BYTES // BLOCK
    ids = [bytes([i + 1]) * 32 for i in range((RUNS_AHEAD + 3) * per_run)]   # (all zeros is a hole)
    repo = RemoteStorage(ids)
    with ThreadPoolExecutor(2) as pool:
        fetches = file_fetches(repo, pool, BlockCache(0), [(b, BLOCK) for b in ids])   # type: ignore[arg-type]
        taken = []
        for block_id in ids[:per_run]:                          # the first run, block by block
            future = fetches[block_id]()
            assert fetched_block(future, block_id) == bytes(block_id) * (BLOCK // 32)
            taken.append(weakref.ref(future))
            del future
        assert read_soon(repo, 1 + RUNS_AHEAD)                 # its run, and the ones after it on their way
        fetched_block(fetches[ids[per_run]](), ids[per_run])    # the reader moves on to the second run
        gc.collect()
        assert all(ref() is None for ref in taken), "the first run's read is still held"
        assert read_soon(repo, 2 + RUNS_AHEAD)
        # A block of the first run wanted again (the file repeats it): read again, right.
        again = ids[0]
        assert fetched_block(fetches[again](), again) == bytes(again) * (BLOCK // 32)
        assert repo.blocks_read == 1 and read_soon(repo, 2 + RUNS_AHEAD)


def test_a_block_the_file_repeats_within_its_run_is_read_once():
    a, b = bytes([1]) * 32, bytes([2]) * 32
    repo = RemoteStorage([a, b])
    with ThreadPoolExecutor(2) as pool:
        uses = [a, b, a, a, b]
        fetches = file_fetches(repo, pool, BlockCache(0), [(x, BLOCK) for x in uses])  # type: ignore[arg-type]
        held = []
        for block_id in uses:
            future = fetches[block_id]()
            assert fetched_block(future, block_id) == bytes(block_id) * (BLOCK // 32)
            held.append(weakref.ref(future))
            del future
        assert repo.runs_read == 1
        del fetches
        gc.collect()
        assert all(ref() is None for ref in held)


def make_runs(count: int) -> list[list[tuple[bytes, BlockLocation]]]:
    """`count` runs of two blocks each, block ids b'r<run>b<block>'."""
    return [[(f"r{k}b{i}".encode(), BlockLocation("v", (2 * k + i) * 100, 100, 100)) for i in range(2)]
            for k in range(count)]


def test_wanting_a_block_starts_its_run_and_the_runs_after_it_and_lets_go_of_those_before():
    runs = make_runs(RUNS_AHEAD + 6)
    submitted: list[int] = []
    alone: list[bytes] = []

    def submit(run):
        submitted.append(runs.index(run))
        return Future()

    def fetch_alone(block_id):
        alone.append(block_id)
        return Future()
    file_runs = FileRuns(runs, submit, fetch_alone)
    first = file_runs.fetch(b"r0b0")
    assert submitted == list(range(RUNS_AHEAD + 1))          # its run and RUNS_AHEAD more, at once
    assert file_runs.fetch(b"r0b1") is first                 # one range read for the run's blocks
    assert submitted == list(range(RUNS_AHEAD + 1))
    third = file_runs.fetch(b"r2b0")
    assert submitted == list(range(RUNS_AHEAD + 3))          # the window moves on by the runs passed
    assert sorted(file_runs.started) == list(range(2, RUNS_AHEAD + 3))   # runs 0 and 1 let go
    assert file_runs.fetch(b"r2b1") is third
    # A block of a run let go, wanted again (a repeat in the file), comes alone; nothing else moves.
    file_runs.fetch(b"r0b1")
    assert alone == [b"r0b1"] and submitted == list(range(RUNS_AHEAD + 3))
    # To the end (the writer wants the runs in order): every run started once, nothing beyond the
    # last, and only the last kept.
    for run in runs[3:]:
        file_runs.fetch(run[0][0])
    assert submitted == list(range(len(runs))) and list(file_runs.started) == [len(runs) - 1]
