"""Content-defined chunking (FastCDC 2020, through pyfastcdc's Cython implementation).

Cut points depend only on content, so inserting bytes in the middle of a file changes only the
blocks around the insertion. The gear table is seeded from the repository key, so the sizes of
stored blocks do not reveal which known files a repository holds.
"""
from __future__ import annotations

import os
from typing import Iterator

from pyfastcdc.cy import FastCDC

# Format version 1 parameters. pyfastcdc's average is avg_size + min_size, so blocks average ~1 MiB.
AVG_SIZE = 768 * 1024
MIN_SIZE = 256 * 1024
MAX_SIZE = 4 * 1024 * 1024
# Files are read in windows of this size and cut in memory. Blocks are views into their window:
# no copy, and the window lives as long as one of its blocks does.
WINDOW = 8 * 1024 * 1024


class Chunker:
    """Not thread-safe (neither is FastCDC): use one Chunker per thread. Reusing one FastCDC
    object saves building its gear table for every file."""

    def __init__(self, seed: int):
        self._fastcdc = FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE, normalized_chunking=1, seed=seed)

    def cut(self, data) -> Iterator[memoryview]:
        """Cut an in-memory buffer; yields views into it."""
        for chunk in self._fastcdc.cut_buf(data):
            yield chunk.data

    def cut_file(self, fd: int, start: int, end: int, window: int = WINDOW) -> Iterator[memoryview]:
        """Cut bytes [start, end) of a file, read `window` bytes at a time; the cut points are
        those of `cut` over the same bytes. Yields read-only views. A file shorter than `end`
        yields what it has (the caller sees the lengths do not add up)."""
        assert window > MAX_SIZE
        pos = start
        while pos < end:
            want = min(window, end - pos)
            data = os.pread(fd, want, pos)
            last = len(data) < want or pos + want >= end
            done = 0
            for chunk in self._fastcdc.cut_buf(data):
                # A cut looks at most MAX_SIZE bytes ahead: nearer the window's end than that, the
                # block is cut again from its start in the next window, which has the bytes after.
                if not last and len(data) - chunk.offset < MAX_SIZE:
                    break
                yield chunk.data
                done = chunk.offset + chunk.length
            if last:
                return
            pos += done
