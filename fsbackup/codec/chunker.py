"""Content-defined chunking (FastCDC 2020, through pyfastcdc's Cython implementation).

Cut points depend only on content, so inserting bytes in the middle of a file changes only the
blocks around the insertion. They also depend on the gear table, which is secret (derived from the
repository key), so that block sizes do not tell which known files a repository holds. Format 1
repositories seed pyfastcdc's public table with one 64-bit XOR seed, which block lengths give away
(docs/format.md); format 2 repositories use a whole table derived from the key (`GEAR_TABLE_LEN`
bytes), installed into pyfastcdc's chunker by `_install_gear_table`.
"""
from __future__ import annotations

import ctypes
import os
import struct
from typing import Callable, Iterator, Union

import blake3
import pyfastcdc
from pyfastcdc.cy import FastCDC
from pyfastcdc.py import constants as public_tables
from pyfastcdc.py.fastcdc import FastCDC as ReferenceFastCDC

from ..errors import FsbackupError

# Format version 1 parameters. pyfastcdc's average is avg_size + min_size, so blocks average ~1 MiB.
AVG_SIZE = 768 * 1024
MIN_SIZE = 256 * 1024
MAX_SIZE = 4 * 1024 * 1024
# Files are read in windows of this size and cut in memory. Blocks are views into their window:
# no copy, and the window lives as long as one of its blocks does.
WINDOW = 8 * 1024 * 1024

GEAR_TABLE_LEN = 256 * 8            # a whole gear table: 256 little-endian u64
GEAR = struct.Struct("<256Q")
U64 = (1 << 64) - 1

# What seeds a chunker: the XOR seed of format 1 (an int below 2**63), or a whole gear table (bytes).
ChunkerSeed = Union[int, bytes]


class Chunker:
    """Not thread-safe (neither is FastCDC): use one Chunker per thread. Reusing one FastCDC
    object saves building its gear table for every file."""

    def __init__(self, seed: ChunkerSeed):
        self._fastcdc = _fastcdc(AVG_SIZE, MIN_SIZE, MAX_SIZE, seed)

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

    def cut_stream(self, read: Callable[[int], bytes], window: int = WINDOW) -> Iterator[memoryview]:
        """Cut a stream that cannot be read again (a pipe), `window` bytes at a time: `read(n)`
        returns at most n bytes, b"" at its end. The cut points are those of `cut` over all its
        bytes. Yields read-only views; what is held is one window (and the blocks the caller
        keeps), however long the stream."""
        assert window > MAX_SIZE
        tail = b""                 # the bytes after the last block yielded: cut again with the next
        while True:
            buf = bytearray(tail)
            ended = False
            while len(buf) < window:
                more = read(window - len(buf))
                if not more:
                    ended = True
                    break
                buf += more
            data = bytes(buf)      # (a new buffer per window: the blocks of the last one may live on)
            done = 0
            for chunk in self._fastcdc.cut_buf(data):
                if not ended and len(data) - chunk.offset < MAX_SIZE:   # as in cut_file
                    break
                yield chunk.data
                done = chunk.offset + chunk.length
            if ended:
                return
            tail = data[done:]


def _fastcdc(avg: int, low: int, high: int, seed: ChunkerSeed) -> FastCDC:
    if isinstance(seed, int):
        return FastCDC(avg, min_size=low, max_size=high, normalized_chunking=1, seed=seed)
    fastcdc = FastCDC(avg, min_size=low, max_size=high, normalized_chunking=1, seed=_PLACEHOLDER_SEED)
    _install_gear_table(fastcdc, seed)
    return fastcdc


def reference_cuts(data: bytes, table: bytes, avg: int = AVG_SIZE, low: int = MIN_SIZE,
                   high: int = MAX_SIZE) -> list[int]:
    """Block lengths by pyfastcdc's pure-Python FastCDC, given the whole table: slow, for checks."""
    reference = ReferenceFastCDC(avg, min_size=low, max_size=high, normalized_chunking=1)
    reference.config.gear, reference.config.gear_ls = _gear_arrays(table)  # type: ignore[assignment]  # lists serve as well as arrays
    return [chunk.length for chunk in reference.cut_buf(data)]


def _gear_arrays(table: bytes) -> tuple[list[int], list[int]]:
    """The table and the same shifted left by one bit, which FastCDC 2020 uses on even bytes."""
    if len(table) != GEAR_TABLE_LEN:
        raise ValueError(f"a gear table is {GEAR_TABLE_LEN} bytes, not {len(table)}")
    gear = list(GEAR.unpack(table))
    return gear, [(g << 1) & U64 for g in gear]


# ---- installing a whole gear table into pyfastcdc's Cython chunker ---------------------------
# pyfastcdc (0.3) takes only a seed, XORed into its public table. With a seed it allocates its own
# two tables (gear, gear << 1) and points its configuration at them; we overwrite both with ours.
# The chunking loop stays pyfastcdc's compiled one, so the speed is unchanged. The object layout
# is checked field by field before anything is written, and the result is checked against the
# pure-Python implementation once per process: a pyfastcdc laid out otherwise fails loudly.
#
# cdef class FastCDC: PyObject_HEAD; _Config {u32 avg_size, min_size, max_size; u64 mask_s,
# mask_l, mask_s_ls, mask_l_ls; const u64 *gear, *gear_ls}; u64 *gear_holder, *gear_holder_ls.
_PLACEHOLDER_SEED = 1
_HEAD = object.__basicsize__
_SIZES = struct.Struct("<3I")                 # avg_size, min_size, max_size
_POINTERS = struct.Struct("<4Q")              # gear, gear_ls, gear_holder, gear_holder_ls
_SIZES_AT, _POINTERS_AT = _HEAD, _HEAD + 48
_LAYOUT_SIZE = _POINTERS_AT + _POINTERS.size
_layout_checked = False


class IncompatibleChunker(FsbackupError):
    """The installed pyfastcdc does not hold its gear table where fsbackup expects it."""


def _install_gear_table(fastcdc: FastCDC, table: bytes) -> None:
    gear, gear_ls = _gear_arrays(table)
    base = id(fastcdc)
    if type(fastcdc).__basicsize__ != _LAYOUT_SIZE or ctypes.sizeof(ctypes.c_void_p) != 8:
        _incompatible("its FastCDC object has another size")
    sizes = _SIZES.unpack(ctypes.string_at(base + _SIZES_AT, _SIZES.size))
    pointers = _POINTERS.unpack(ctypes.string_at(base + _POINTERS_AT, _POINTERS.size))
    if sizes != (fastcdc.avg_size, fastcdc.min_size, fastcdc.max_size) or not pointers[0] \
            or pointers[0] != pointers[2] or not pointers[1] or pointers[1] != pointers[3]:
        _incompatible("its FastCDC object's fields are not where expected")
    seeded = [(g ^ _PLACEHOLDER_SEED) & U64 for g in public_tables.GEAR]
    if list(GEAR.unpack(ctypes.string_at(pointers[0], GEAR_TABLE_LEN))) != seeded:
        _incompatible("its seeded gear table is not where expected")
    ctypes.memmove(pointers[0], GEAR.pack(*gear), GEAR_TABLE_LEN)
    ctypes.memmove(pointers[1], GEAR.pack(*gear_ls), GEAR_TABLE_LEN)
    _check_once()


def _check_once() -> None:
    """Cut test data with small blocks through the installed table and through the pure-Python
    implementation: they must agree (a few milliseconds, once per process)."""
    global _layout_checked
    if _layout_checked:
        return
    _layout_checked = True             # (set first: the check below installs a table too)
    table = blake3.blake3(b"fsbackup chunker check").digest(length=GEAR_TABLE_LEN)
    data = bytes((i * 7919 + (i >> 5) * 31) & 0xFF for i in range(1 << 14))
    installed = _fastcdc(256, 64, 1024, table)
    if [chunk.length for chunk in installed.cut_buf(data)] != reference_cuts(data, table, 256, 64, 1024):
        _layout_checked = False
        _incompatible("its chunker does not cut with the installed gear table")


def _incompatible(why: str) -> None:
    raise IncompatibleChunker(f"pyfastcdc {pyfastcdc.__version__} cannot be given a whole gear table ({why}); "
                              f"install pyfastcdc 0.3")
