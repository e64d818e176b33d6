"""How restore reads a large file from remote storage: in runs of blocks (one range read each),
several ahead of the writer, letting go of those it is past."""
from __future__ import annotations

from concurrent.futures import Future

from fsbackup.catalog import BlockLocation
from fsbackup.engine.restore import RUNS_AHEAD, _FileRuns


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
    file_runs = _FileRuns(runs, submit, fetch_alone)
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
