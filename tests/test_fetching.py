"""repository.fetching: a file's blocks fetched ahead of its one reader (restore's writer, dump)."""
from __future__ import annotations

import gc
import weakref
from concurrent.futures import ThreadPoolExecutor

from fsbackup.catalog import BlockLocation
from fsbackup.repository.blockcache import BlockCache
from fsbackup.repository.fetching import RUN_BYTES, fetched_block, file_fetches

BLOCK = 1 << 20


class RemoteStorage:
    """What file_fetches asks of a repository on remote storage: block places, and range reads of
    runs that return fresh objects each time (so that what stays alive can be watched)."""
    storage_is_local = False

    def __init__(self, block_ids: list[bytes]):
        self.locations = {b: BlockLocation("v", i * BLOCK, BLOCK, BLOCK) for i, b in enumerate(block_ids)}
        self.runs_read = 0

    def block_locations(self, ids):
        return {b: self.locations[b] for b in ids if b in self.locations}

    def fetch_run(self, run):
        self.runs_read += 1
        return {block_id: bytes(block_id) * (BLOCK // 32) for block_id, _ in run}


def test_a_run_read_is_let_go_once_each_of_its_blocks_was_taken():
    """A large file on remote storage is many runs: each run's bytes must be freed once the reader
    has taken its blocks, not kept until the whole file is read (memory would grow with the file)."""
    ids = [bytes([i + 1]) * 32 for i in range(3 * RUN_BYTES // BLOCK)]   # (all zeros is a hole)
    repo = RemoteStorage(ids)
    with ThreadPoolExecutor(2) as pool:
        fetches = file_fetches(repo, pool, BlockCache(0), [(b, BLOCK) for b in ids])   # type: ignore[arg-type]
        taken = []
        for block_id in ids[:RUN_BYTES // BLOCK]:              # the first run, block by block
            future = fetches[block_id]()
            assert fetched_block(future, block_id) == bytes(block_id) * (BLOCK // 32)
            taken.append(weakref.ref(future))
            del future
        gc.collect()
        assert all(ref() is None for ref in taken), "the first run's read is still held"
        assert repo.runs_read == 1
        # Asked once more than the file uses it: read again, right.
        again = ids[0]
        assert fetched_block(fetches[again](), again) == bytes(again) * (BLOCK // 32)
        assert repo.runs_read == 2


def test_a_block_the_file_repeats_is_read_once_and_let_go_after_its_last_use():
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
        gc.collect()
        assert all(ref() is None for ref in held)
