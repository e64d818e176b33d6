"""Content-defined chunking (FastCDC 2020, through pyfastcdc's Cython implementation).

Cut points depend only on content, so inserting bytes in the middle of a file changes only the
blocks around the insertion. The gear table is seeded from the repository key, so the sizes of
stored blocks do not reveal which known files a repository holds.
"""
from __future__ import annotations

from typing import Iterator

from pyfastcdc.cy import FastCDC

# Format version 1 parameters. pyfastcdc's average is avg_size + min_size, so blocks average ~1 MiB.
AVG_SIZE = 768 * 1024
MIN_SIZE = 256 * 1024
MAX_SIZE = 4 * 1024 * 1024
AVG_BLOCK = AVG_SIZE + MIN_SIZE
# Regions up to this size are read whole and cut in memory: far cheaper per small file than a
# stream (which allocates its buffers per call), and the cut points are the same.
WHOLE_READ_LIMIT = 16 * 1024 * 1024


class Chunker:
    """Not thread-safe (neither is FastCDC): use one Chunker per thread. Reusing one FastCDC
    object saves building its gear table for every file."""

    def __init__(self, seed: int):
        self._fastcdc = FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE, normalized_chunking=1, seed=seed)

    def cut(self, data) -> Iterator[memoryview]:
        """Cut an in-memory buffer; yields views into it."""
        for chunk in self._fastcdc.cut_buf(data):
            yield chunk.data

    def cut_stream(self, stream) -> Iterator[bytes]:
        """Cut a binary stream (with readinto or read); yields each block as bytes."""
        for chunk in self._fastcdc.cut_stream(stream):
            yield bytes(chunk.data)
