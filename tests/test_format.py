"""The chunker and the object codecs: properties (hypothesis) and golden values that pin the format."""
from __future__ import annotations

import copy
import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsbackup.codec import crypto, wire
from fsbackup.codec.chunker import GEAR_TABLE_LEN, MAX_SIZE, MIN_SIZE, Chunker, reference_cuts
from fsbackup.codec.crypto import Keys
from fsbackup.errors import CorruptObject

KEYS = Keys.from_master_secret(bytes(range(64)))
LEGACY_KEYS = Keys.from_master_secret(bytes(range(64)), legacy_chunker=True)      # a format 1 repository's
# What seeds a chunker: format 1's 64-bit XOR seed, or a whole gear table.
SEEDS = st.one_of(st.integers(min_value=0, max_value=2**63 - 1),
                  st.binary(min_size=GEAR_TABLE_LEN, max_size=GEAR_TABLE_LEN))
VOLUME_ID = bytes.fromhex("11" * 32)
INT64 = st.integers(min_value=-2**63, max_value=2**64 - 1)   # what msgpack encodes


def golden_input(n: int = 6 << 20) -> bytes:
    """Deterministic, partly compressible bytes, independent of Python's RNG."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        digest = hashlib.sha256(counter.to_bytes(8, "little")).digest()
        out += digest if counter % 3 else digest[:4] * 8
        counter += 1
    return bytes(out[:n])


# ---- chunker --------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=0, max_size=3 << 20), SEEDS)
def test_chunks_reassemble_the_input_and_respect_size_limits(data, seed):
    chunks = [bytes(c) for c in Chunker(seed).cut(data)]
    assert b"".join(chunks) == data
    for c in chunks[:-1]:
        assert MIN_SIZE <= len(c) <= MAX_SIZE
    if chunks:
        assert 0 < len(chunks[-1]) <= MAX_SIZE


@settings(max_examples=10, deadline=None)
@given(SEEDS, st.integers(min_value=0, max_value=3 << 20),
       st.integers(min_value=MAX_SIZE + 1, max_value=3 * MAX_SIZE))
def test_files_cut_window_by_window_cut_as_in_memory(tmp_path_factory, seed, start, window):
    """Reading a file in windows (blocks near a window's end are cut again in the next) must
    not move a single cut point."""
    data = golden_input(14 << 20)
    path = tmp_path_factory.mktemp("cut") / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        windowed = [bytes(c) for c in Chunker(seed).cut_file(fd, start, len(data), window)]
    finally:
        os.close(fd)
    assert [len(c) for c in windowed] == [len(c) for c in Chunker(seed).cut(data[start:])]
    assert b"".join(windowed) == data[start:]


def test_a_block_ending_exactly_at_a_window_end_is_not_the_last(tmp_path):
    """Zeros never match the gear mask: every block is MAX_SIZE, and two fill a window exactly."""
    path = tmp_path / "zeros"
    path.write_bytes(bytes(3 * MAX_SIZE + 123))
    fd = os.open(path, os.O_RDONLY)
    try:
        lengths = [len(c) for c in Chunker(7).cut_file(fd, 0, 3 * MAX_SIZE + 123, window=2 * MAX_SIZE)]
    finally:
        os.close(fd)
    assert lengths == [MAX_SIZE, MAX_SIZE, MAX_SIZE, 123]


def test_golden_chunk_boundaries_do_not_change():
    """Changing these cut points breaks deduplication against every existing repository: format 1
    repositories keep their seeded public table, format 2 ones cut with their own whole table."""
    assert isinstance(LEGACY_KEYS.chunker_seed, int)
    assert [len(c) for c in Chunker(LEGACY_KEYS.chunker_seed).cut(golden_input())] == GOLDEN_LENGTHS
    table = KEYS.chunker_seed
    assert hashlib.sha256(table).hexdigest() == GOLDEN_GEAR_TABLE_SHA256
    assert [len(c) for c in Chunker(table).cut(golden_input())] == GOLDEN_LENGTHS_GEAR_TABLE


def test_the_gear_table_is_the_keyed_xof_of_the_key():
    """docs/format.md: table = BLAKE3-keyed(derive_key("fsbackup 2026-11 chunker gear table", master
    secret), empty input) read for 2048 bytes, as 256 little-endian u64."""
    import blake3
    table_key = blake3.blake3(bytes(range(64)), derive_key_context="fsbackup 2026-11 chunker gear table").digest()
    assert KEYS.chunker_seed == blake3.blake3(key=table_key).digest(length=GEAR_TABLE_LEN)


@settings(max_examples=5, deadline=None)
@given(st.binary(min_size=GEAR_TABLE_LEN, max_size=GEAR_TABLE_LEN), st.binary(min_size=0, max_size=1 << 16))
def test_the_installed_table_cuts_as_pyfastcdc_pure_python_with_that_table(table, tail):
    """The compiled chunker given a whole table cuts where the reference implementation does."""
    data = golden_input(3 << 20) + tail
    assert [len(c) for c in Chunker(table).cut(data)] == reference_cuts(data, table)


# ---- block and volume codec -----------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=200_000), min_size=1, max_size=6), st.sampled_from([0, 1, 2, 3, 19]))
def test_volume_round_trip_returns_every_block(blocks, level):
    """Whatever level a backup compressed at (`--compression`), the same reader decodes it."""
    cipher = KEYS.object_cipher(b"blocks", VOLUME_ID)
    parts, entries, offset = [wire.header(wire.VOLUME_MAGIC)], [], wire.HEADER_LEN
    seen = set()
    for data in blocks:
        bid = KEYS.block_id(data)
        if bid in seen:
            continue
        seen.add(bid)
        stored, plain = wire.encode_block(cipher, bid, data, level)
        entries.append(wire.BlockEntry(bid, offset, len(stored), plain))
        parts.append(stored)
        offset += len(stored)
    parts.append(wire.seal_table(KEYS, VOLUME_ID, entries, offset))
    volume = b"".join(parts)
    assert wire.open_volume_table(KEYS, VOLUME_ID, volume, "v") == entries
    by_id = {KEYS.block_id(d): d for d in blocks}
    for e in entries:
        stored = volume[e.offset:e.offset + e.stored_length]
        assert wire.decode_block(KEYS, cipher, e.id, stored, e.plain_length, "v") == by_id[e.id]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=20_000), min_size=1, max_size=8), st.sampled_from([0, 1, 2, 3]))
def test_a_batch_encodes_as_its_blocks_one_by_one(blocks, level):
    cipher = KEYS.object_cipher(b"blocks", VOLUME_ID)
    batch = [(KEYS.block_id(data), data) for data in blocks]
    assert wire.encode_blocks(cipher, batch, level) == [wire.encode_block(cipher, i, d, level) for i, d in batch]


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=1, max_size=5000), st.data())
def test_any_flipped_byte_in_a_block_is_detected(data, draw):
    cipher = KEYS.object_cipher(b"blocks", VOLUME_ID)
    bid = KEYS.block_id(data)
    stored = bytearray(wire.encode_block(cipher, bid, data)[0])
    i = draw.draw(st.integers(0, len(stored) - 1))
    stored[i] ^= draw.draw(st.integers(1, 255))
    with pytest.raises(CorruptObject):
        wire.decode_block(KEYS, cipher, bid, bytes(stored), len(data), "v")


def test_a_block_moved_to_another_volume_or_id_is_rejected():
    data = b"some block"
    bid = KEYS.block_id(data)
    stored, _ = wire.encode_block(KEYS.object_cipher(b"blocks", VOLUME_ID), bid, data)
    other_volume = KEYS.object_cipher(b"blocks", bytes(32))
    with pytest.raises(CorruptObject):
        wire.decode_block(KEYS, other_volume, bid, stored, len(data), "v")
    with pytest.raises(CorruptObject):
        wire.decode_block(KEYS, KEYS.object_cipher(b"blocks", VOLUME_ID), KEYS.block_id(b"x"), stored, len(data), "v")


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.one_of(INT64, st.binary(max_size=50), st.none()), max_size=5), max_size=3000),
       st.dictionaries(st.text(max_size=5), INT64, max_size=4))
def test_version_object_round_trip(entries, head):
    vid = bytes(range(32))
    data = wire.encode_version(KEYS, vid, head, entries)
    got_head, got_entries = wire.decode_version(KEYS, vid, data, "s")
    assert got_head == head and list(got_entries) == entries


def test_a_truncated_version_object_is_detected():
    vid = bytes(range(32))
    entries = [[i, b"x" * 100] for i in range(30000)]          # several frames
    data = wire.encode_version(KEYS, vid, {"a": 1}, entries)
    frame_end = wire.HEADER_LEN + 4 + int.from_bytes(data[wire.HEADER_LEN:wire.HEADER_LEN + 4], "little")
    with pytest.raises(CorruptObject):   # cut after a whole frame: only the "last frame" mark tells
        _, it = wire.decode_version(KEYS, vid, data[:frame_end], "s")
        list(it)


# ---- golden encoding ------------------------------------------------------------------------

def test_golden_on_remote_encoding_does_not_change(monkeypatch):
    """Any change to keys, nonces, compression or layout shows here; old repositories must stay readable
    (test_old_format.py reads a repository written in format 1). Random nonces are made fixed here."""
    monkeypatch.setattr(crypto.os, "urandom", lambda n: bytes(range(n)))
    data = golden_input(1 << 20)
    cipher = KEYS.object_cipher(b"blocks", VOLUME_ID)
    bid = KEYS.block_id(data)
    stored, _ = wire.encode_block(cipher, bid, data)
    entries = [wire.BlockEntry(bid, wire.HEADER_LEN, len(stored), len(data))]
    table = wire.seal_table(KEYS, VOLUME_ID, entries, wire.HEADER_LEN + len(stored))
    volume = wire.header(wire.VOLUME_MAGIC) + stored + table
    index = wire.encode_index(KEYS, VOLUME_ID, len(volume), entries)
    version = wire.encode_version(KEYS, VOLUME_ID, {"time_ns": 1}, [[0, b"", "d"]])
    got = {"block_id": bid.hex(), "volume": hashlib.sha256(volume).hexdigest(),
           "index": hashlib.sha256(index).hexdigest(), "version": hashlib.sha256(version).hexdigest(),
           "sizes": [len(volume), len(index), len(version)]}
    assert got == GOLDEN_ENCODING


GOLDEN_LENGTHS = [1330159, 1261612, 1173776, 521210, 1093115, 864373, 47211]          # format 1's seeded table
GOLDEN_GEAR_TABLE_SHA256 = "c27bb2a4058e0009837364c47f8ef4c7da20580608a4acd6fd63016ee088547d"
GOLDEN_LENGTHS_GEAR_TABLE = [1564722, 948574, 1252618, 601583, 773169, 1150790]      # format 2's own table
GOLDEN_ENCODING = {
    "block_id": "45e479658fcb854d6e77d6c51bc4a26daa5d77dfd3d16e0da3eb7a8b42c670b6",
    # Format 2: headers say 2, and the index object has its nonce after the header (format 1's
    # volume and version objects differed only in that header byte).
    "volume": "329915e7a5f3ec6f2af66124762a6dde3a720b3fc7c0d5a3714f0c454143f1d2",
    "index": "e7bbc9e677ca3f2703302431baa0f7cde5442167f6d64f80ada0c5ee7c6ae27d",
    "version": "cd0bd7fb46c849ed003b0bf4cfc2e78b8ab9fb272d9c887d25b8540673c05ba7",
    "sizes": [751403, 110, 82],
}


# ---- version headers, timestamps and tree checks ----------------------------------------------

OLD_HEAD = {"time_ns": 1_700_000_000_000_000_000, "host": "h", "paths": ["/src"], "tags": [], "parent": None,
            "file_count": 1, "total_size": 4, "bytes_added": 100, "fsbackup": "0.1.0"}
OLD_ENTRIES = [
    [0, b"", "d", 0o40755, 0, 0, "root", "root", -2_208_988_800_123_456_789, 0, 0, 0, 2, 1, 3, 0, None, None, None],
    [1, b"f", "f", 0o100644, 0, 0, None, None, 10_413_792_000_987_654_321, 1, 2, 4, 3, 1, 1, 0, None,
     {b"user.a": b"v"}, [bytes(32), 4, bytes(32) + (4).to_bytes(8, "little")]]]
# A version object as fsbackup wrote it before times outside int64 nanoseconds were encoded as
# msgpack timestamps: its 2300 mtime is a msgpack uint64, its 1900 mtime an int64.
OLD_VERSION = bytes.fromhex(
    "465342530100000080000000b770e3616a147ba05b4248a467b0cecdb66906dac1777eaacf5e56b732e8e0308e6c703021c7f724972e"
    "dad5bc42d8a927c2c8a458022a9d9b35a8d72755a5259c5904ae1d871855fc628824189900bc89a71396ac17e84083279d4b2ab60c8d"
    "1c3f402af0c0d138f77be3e0e2afa9d5d699ce04a6f5e3e619f13d06ea724def8700000013b033b57b8b7fb9a9211624950165f5daac"
    "2708aa2c916728aca130ed6edb2543f2ea9e2b38e1a9558807e520600afb0ba1ce6356ec7936beb4b83cc428583eba5af890cf1db42e"
    "21a3d2478b40228c9db47b9aaa089a3066c8b91794ad304214a0500758c5e85380dd2314ce9dfef898e7b6b12acdeeaf33759d5dfd7a"
    "b0c009188cb14ace5a")


def test_golden_version_written_before_wide_times_still_reads_and_is_written_the_same():
    vid = bytes(range(32))
    head, entries = wire.decode_version(KEYS, vid, OLD_VERSION, "s")
    assert wire.check_head(head, "s") == OLD_HEAD
    assert list(wire.checked_entries(entries, "s")) == OLD_ENTRIES
    written = wire.encode_version(KEYS, vid, OLD_HEAD, OLD_ENTRIES)     # what fits is written as before,
    assert written[4] == wire.FORMAT_VERSION                               # under the current format's header
    assert written[:4] + written[5:] == OLD_VERSION[:4] + OLD_VERSION[5:]


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=wire.TIME_MIN, max_value=wire.TIME_MAX))
def test_every_time_the_kernel_can_give_round_trips_through_entries_and_the_index(ns):
    from fsbackup.catalog.schema import catalog_time, node_time
    entries = copy.deepcopy(OLD_ENTRIES)
    entries[1][wire.E_MTIME] = entries[1][wire.E_ATIME] = entries[1][wire.E_CTIME] = ns
    data = wire.encode_version(KEYS, VOLUME_ID, OLD_HEAD, entries)
    _, got = wire.decode_version(KEYS, VOLUME_ID, data, "s")
    assert list(wire.checked_entries(got, "s")) == entries
    assert node_time(catalog_time(ns)) == ns
    assert type(catalog_time(ns)) is (int if -2**63 <= ns < 2**63 else bytes)


def test_header_paths_of_any_bytes_round_trip_and_utf8_ones_stay_text():
    paths = [os.fsdecode(b"/caf\xe9-\xff"), "/plain", "/\u00e9t\u00e9"]
    head = dict(OLD_HEAD, paths=paths, tags=[os.fsdecode(b"t\xff")])
    data = wire.encode_version(KEYS, VOLUME_ID, head, OLD_ENTRIES)
    got, _ = wire.decode_version(KEYS, VOLUME_ID, data, "s")
    assert wire.check_head(got, "s") == head
    assert wire.encode_head(head)["paths"] == [b"/caf\xe9-\xff", "/plain", "/\u00e9t\u00e9"]   # bin only when needed


@pytest.mark.parametrize("head", [[], {}, dict(OLD_HEAD, time_ns=2**63), dict(OLD_HEAD, paths="/"),
                                  dict(OLD_HEAD, file_count=-1), dict(OLD_HEAD, host=1)])
def test_a_header_the_index_cannot_hold_is_corrupt(head):
    with pytest.raises(CorruptObject, match="remote object s is corrupt"):
        wire.check_head(wire.decode_head(head), "s")
