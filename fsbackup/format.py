"""The on-remote encoding of every object kind (docs/format.md is the reference).

Pure functions over bytes: no I/O, no database. The repository layer names and stores objects;
this module turns blocks, tables and trees into authenticated ciphertext and back.
"""
from __future__ import annotations

import os
import struct
import threading
from typing import Iterable, Iterator, NamedTuple

import msgpack
import zstandard

from .crypto import NONCE_LEN, ZERO_NONCE, Keys, ObjectCipher
from .errors import CorruptObject

# Written into every object header and new repositories' config. Version 2 seals index objects
# under a random nonce (they are written again by repair); new repositories also take a whole
# secret gear table and key objects that bind the config. Version 1 objects are read as they are.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)

VOLUME_MAGIC = b"FSBV"
INDEX_MAGIC = b"FSBI"
VERSION_MAGIC = b"FSBS"
LOCK_MAGIC = b"FSBL"
HEADER_LEN = 8                       # magic(4) + format version(1) + 3 reserved bytes
FOOTER = struct.Struct("<QI4s")      # volume footer: table offset, table length, b"FSBT"
FOOTER_MAGIC = b"FSBT"
FRAME_LEN = struct.Struct("<I")

CODEC_RAW = 0
CODEC_ZSTD = 1
_RAW_MARK, _ZSTD_MARK = bytes([CODEC_RAW]), bytes([CODEC_ZSTD])
# Blocks are compressed at this zstd level unless the backup says otherwise (readers do not care:
# any zstd frame decodes). Level 2 costs a quarter of level 3's time on poorly compressible data
# and a fifth less on text, for output 0-5% larger.
ZSTD_LEVEL = 2

HOLE_ID = bytes(32)                  # extent id of a sparse hole (never a real keyed hash)
EXTENT = struct.Struct("<32sQ")      # one extent of a file: block id (or HOLE_ID), length
FRAME_TARGET = 1 << 20               # plaintext bytes per version-object frame


def header(magic: bytes) -> bytes:
    return magic + bytes([FORMAT_VERSION, 0, 0, 0])


def check_header(data: bytes, magic: bytes, name: str) -> int:
    """The object's format version, one of READABLE_VERSIONS."""
    if len(data) < HEADER_LEN or data[:4] != magic:
        raise CorruptObject(name, "wrong object type or truncated")
    if data[4] not in READABLE_VERSIONS:
        raise CorruptObject(name, f"unknown format version {data[4]}")
    return data[4]


_per_thread = threading.local()   # zstd (de)compressor objects must not be shared between threads


def _zstd_c(level: int = ZSTD_LEVEL) -> zstandard.ZstdCompressor:
    """This thread's compressor for `level` (building one costs more than compressing a small block)."""
    compressors = getattr(_per_thread, "compressors", None)
    if compressors is None:
        compressors = _per_thread.compressors = {}
    compressor = compressors.get(level)
    if compressor is None:
        compressor = compressors[level] = zstandard.ZstdCompressor(level=level)
    return compressor


def _decompress(data: bytes, plain_len: int | None = None) -> bytes:
    """A zstd frame's plaintext. Without `plain_len`, the frame's own content size is used (our
    writers record it), or the frame is streamed when it does not say."""
    decompressor = getattr(_per_thread, "decompressor", None)
    if decompressor is None:
        decompressor = _per_thread.decompressor = zstandard.ZstdDecompressor()
    if plain_len is None:
        try:
            return decompressor.decompress(data)
        except zstandard.ZstdError:
            return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return decompressor.decompress(data, max_output_size=plain_len)


# ---- blocks ---------------------------------------------------------------------------------

def block_nonce(block_id: bytes) -> bytes:
    # Unique within a volume: a volume holds each block id at most once, and the key is the volume's own.
    return block_id[:12]


def block_ad(block_id: bytes) -> bytes:
    return b"block\0" + block_id


def encode_block(cipher: ObjectCipher, block_id: bytes, data, level: int = ZSTD_LEVEL) -> tuple[bytes, int]:
    """Compress (when it shrinks; never at level 0) and encrypt one block. Returns (stored bytes,
    plain length)."""
    return encode_blocks(cipher, [(block_id, data)], level)[0]


def encode_blocks(cipher: ObjectCipher, blocks: list, level: int = ZSTD_LEVEL) -> list[tuple[bytes, int]]:
    """encode_block for each (block id, data) of a batch. The batch is compressed in one call:
    one release of the GIL per batch instead of one per block (backups hand over small files'
    blocks by the hundred, and every GIL hand-off slows the thread that scans)."""
    if level and len(blocks) > 1 and all(len(data) for _, data in blocks):
        compressed = _zstd_c(level).multi_compress_to_buffer([data for _, data in blocks])
    else:
        compressed = [_zstd_c(level).compress(data) if level else data for _, data in blocks]
    out = []
    for (block_id, data), packed in zip(blocks, compressed):
        payload = _ZSTD_MARK + packed if len(packed) < len(data) else _RAW_MARK + data
        out.append((cipher.seal(block_nonce(block_id), payload, block_ad(block_id)), len(data)))
    return out


def decode_block(keys: Keys, cipher: ObjectCipher, block_id: bytes, stored: bytes, plain_len: int,
                 object_name: str) -> bytes:
    """Authenticate, decompress and check one block against its id. Never returns wrong bytes."""
    payload = cipher.open(block_nonce(block_id), stored, block_ad(block_id), object_name)
    codec, body = payload[0], memoryview(payload)[1:]
    try:
        data = _decompress(body, plain_len) if codec == CODEC_ZSTD else bytes(body)
    except zstandard.ZstdError:
        raise CorruptObject(object_name, "block does not decompress") from None
    if codec not in (CODEC_RAW, CODEC_ZSTD) or len(data) != plain_len or keys.block_id(data) != block_id:
        raise CorruptObject(object_name, "block does not match its id")
    return data


# ---- volumes and index objects --------------------------------------------------------------

class BlockEntry(NamedTuple):
    """Where a block lies in its volume. (A tuple: a rebuild makes a million of them.)"""
    id: bytes
    offset: int
    stored_length: int
    plain_length: int

    def pack(self) -> list:
        return [self.id, self.offset, self.stored_length, self.plain_length]


def _unpack_table(raw: bytes, name: str) -> list[BlockEntry]:
    try:
        return _table_entries(msgpack.unpackb(raw), name)
    except (ValueError, msgpack.UnpackException):
        raise CorruptObject(name, "block table does not parse") from None


def _table_entries(rows: list, name: str) -> list[BlockEntry]:
    try:
        return [BlockEntry(bytes(e[0]), int(e[1]), int(e[2]), int(e[3])) for e in rows]
    except (ValueError, TypeError, IndexError):
        raise CorruptObject(name, "block table does not parse") from None


def seal_table(keys: Keys, volume_id: bytes, entries: Iterable[BlockEntry], table_offset: int) -> bytes:
    """The encrypted block table and footer that end a volume."""
    raw = _zstd_c().compress(msgpack.packb([e.pack() for e in entries]))
    table = keys.object_cipher(b"table", volume_id).seal(ZERO_NONCE, raw, b"table\0")
    return table + FOOTER.pack(table_offset, len(table), FOOTER_MAGIC)


def open_volume_table(keys: Keys, volume_id: bytes, volume: bytes, name: str) -> list[BlockEntry]:
    """Read a whole volume's own table (used by check and index re-creation)."""
    check_header(volume, VOLUME_MAGIC, name)
    offset, length = table_place(volume[-FOOTER.size:], len(volume), name)
    return open_table(keys, volume_id, volume[offset:offset + length], name)


def table_place(footer: bytes, volume_size: int, name: str) -> tuple[int, int]:
    """(offset, length) of a volume's table, from its last FOOTER.size bytes."""
    if volume_size < HEADER_LEN + FOOTER.size or len(footer) != FOOTER.size:
        raise CorruptObject(name, "truncated")
    offset, length, magic = FOOTER.unpack(footer)
    if magic != FOOTER_MAGIC or offset < HEADER_LEN or offset + length + FOOTER.size != volume_size:
        raise CorruptObject(name, "bad footer")
    return offset, length


def open_table(keys: Keys, volume_id: bytes, table: bytes, name: str) -> list[BlockEntry]:
    raw = keys.object_cipher(b"table", volume_id).open(ZERO_NONCE, table, b"table\0", name)
    try:
        return _unpack_table(_decompress(raw), name)
    except zstandard.ZstdError:
        raise CorruptObject(name, "block table does not decompress") from None


def encode_index(keys: Keys, volume_id: bytes, volume_size: int, entries: Iterable[BlockEntry]) -> bytes:
    """An index object. Repair and the adoption of a leftover volume write one again under its
    name, with other content, so each writing takes a random nonce (format 1 used the zero nonce)."""
    doc = {"size": volume_size, "blocks": [e.pack() for e in entries]}
    raw = _zstd_c().compress(msgpack.packb(doc))
    return header(INDEX_MAGIC) + keys.object_cipher(b"index", volume_id).seal_random(raw, b"index\0")


def decode_index(keys: Keys, volume_id: bytes, data: bytes, name: str) -> tuple[int, list[BlockEntry]]:
    """An index object's (volume size, block entries), in format 1 or 2."""
    cipher = keys.object_cipher(b"index", volume_id)
    if check_header(data, INDEX_MAGIC, name) == 1:
        raw = cipher.open(ZERO_NONCE, data[HEADER_LEN:], b"index\0", name)
    else:
        raw = cipher.open_random(data[HEADER_LEN:], b"index\0", name)
    try:
        doc = msgpack.unpackb(_decompress(raw))
        size, blocks = int(doc["size"]), doc["blocks"]
    except (ValueError, TypeError, KeyError, msgpack.UnpackException, zstandard.ZstdError):
        raise CorruptObject(name, "does not parse") from None
    return size, _table_entries(blocks, name)


# ---- lock objects --------------------------------------------------------------------------

def encode_lock(keys: Keys, lock_id: bytes, doc: dict) -> bytes:
    """A lock object. A lock is rewritten under its name when refreshed, so each writing takes a
    random nonce (stored in front of the ciphertext) rather than a fixed one."""
    nonce = os.urandom(NONCE_LEN)
    return header(LOCK_MAGIC) + nonce + keys.object_cipher(b"lock", lock_id).seal(nonce, msgpack.packb(doc), b"lock\0")


def decode_lock(keys: Keys, lock_id: bytes, data: bytes, name: str) -> dict:
    check_header(data, LOCK_MAGIC, name)
    if len(data) < HEADER_LEN + NONCE_LEN + 16:
        raise CorruptObject(name, "truncated")
    nonce, sealed = data[HEADER_LEN:HEADER_LEN + NONCE_LEN], data[HEADER_LEN + NONCE_LEN:]
    raw = keys.object_cipher(b"lock", lock_id).open(nonce, sealed, b"lock\0", name)
    try:
        doc = msgpack.unpackb(raw)
        if not isinstance(doc, dict):
            raise ValueError
        return doc
    except (ValueError, TypeError, msgpack.UnpackException):
        raise CorruptObject(name, "does not parse") from None


# ---- version objects: a header and a stream of tree entries, in authenticated frames --------

def _frame_nonce(n: int) -> bytes:
    return n.to_bytes(12, "big")


def _frame_ad(n: int, last: bool) -> bytes:
    return b"frame\0" + n.to_bytes(8, "big") + (b"\1" if last else b"\0")


def encode_version(keys: Keys, version_id: bytes, head: dict, entries: Iterable[list]) -> bytes:
    """Frame 0 holds `head`; later frames hold entries. The last frame is marked, so truncation is caught."""
    cipher = keys.object_cipher(b"version", version_id)
    compressor = _zstd_c()
    out = bytearray(header(VERSION_MAGIC))
    pending: list[bytes] = [msgpack.packb(head)]   # frame plaintexts not yet sealed (keep one back)
    frame_no = 0

    def seal(plain: bytes, last: bool) -> None:
        nonlocal frame_no
        sealed = cipher.seal(_frame_nonce(frame_no), compressor.compress(plain), _frame_ad(frame_no, last))
        out.extend(FRAME_LEN.pack(len(sealed)))
        out.extend(sealed)
        frame_no += 1

    packer = msgpack.Packer()
    buf = bytearray()
    for entry in entries:
        buf.extend(packer.pack(entry))
        if len(buf) >= FRAME_TARGET:
            pending.append(bytes(buf))
            buf.clear()
        while len(pending) > 1:
            seal(pending.pop(0), False)
    if buf:
        pending.append(bytes(buf))
    for i, plain in enumerate(pending):
        seal(plain, i == len(pending) - 1)
    return bytes(out)


def decode_version(keys: Keys, version_id: bytes, data: bytes, name: str) -> tuple[dict, Iterator[list]]:
    """(head, iterator of entries). Raises CorruptObject at once if any frame fails authentication."""
    check_header(data, VERSION_MAGIC, name)
    cipher = keys.object_cipher(b"version", version_id)
    frames: list[tuple[int, int]] = []
    pos = HEADER_LEN
    while pos < len(data):
        if pos + FRAME_LEN.size > len(data):
            raise CorruptObject(name, "truncated")
        (length,) = FRAME_LEN.unpack_from(data, pos)
        pos += FRAME_LEN.size
        if pos + length > len(data):
            raise CorruptObject(name, "truncated")
        frames.append((pos, length))
        pos += length
    if not frames:
        raise CorruptObject(name, "truncated")
    # Every frame is authenticated now, so damage shows before the caller uses any entry (and a
    # damaged download can be fetched again); frames are decompressed and parsed as they are read.
    opened = [cipher.open(_frame_nonce(n), data[start:start + length], _frame_ad(n, n == len(frames) - 1), name)
              for n, (start, length) in enumerate(frames)]

    def plain(n: int) -> bytes:
        try:
            return _decompress(opened[n])
        except zstandard.ZstdError:
            raise CorruptObject(name, "frame does not decompress") from None

    try:
        head = msgpack.unpackb(plain(0))
    except (ValueError, msgpack.UnpackException):
        raise CorruptObject(name, "header does not parse") from None

    def entries() -> Iterator[list]:
        unpacker = msgpack.Unpacker(raw=False)
        for n in range(1, len(frames)):
            unpacker.feed(plain(n))
            try:
                yield from unpacker
            except (ValueError, msgpack.UnpackException):
                raise CorruptObject(name, "entry does not parse") from None

    return head, entries()


# ---- file extents ---------------------------------------------------------------------------

def pack_extents(extents: Iterable[tuple[bytes, int]]) -> bytes:
    return b"".join(EXTENT.pack(block_id, length) for block_id, length in extents)


def unpack_extents(blob: bytes) -> list[tuple[bytes, int]]:
    return list(EXTENT.iter_unpack(blob))


def extent_ids(blob: bytes) -> Iterator[bytes]:
    """The block ids (and HOLE_IDs) of packed extents, without their lengths."""
    return (blob[i:i + 32] for i in range(0, len(blob), EXTENT.size))


# ---- tree entries ---------------------------------------------------------------------------
# A version's tree is a stream of entries, each a msgpack array with these fields, in this order
# (the same order as the local index's `nodes` columns). An entry's id is its 1-based position in
# the stream; `parent` is the id of an earlier entry (0 for the root, which comes first).
ENTRY_FIELDS = ("parent", "name", "type", "mode", "uid", "gid", "user", "grp", "mtime_ns", "atime_ns",
                "ctime_ns", "size", "ino", "dev", "nlink", "rdev", "target", "xattrs", "content")
(E_PARENT, E_NAME, E_TYPE, E_MODE, E_UID, E_GID, E_USER, E_GRP, E_MTIME, E_ATIME, E_CTIME, E_SIZE,
 E_INO, E_DEV, E_NLINK, E_RDEV, E_TARGET, E_XATTRS, E_CONTENT) = range(len(ENTRY_FIELDS))
# content: None, or [content hash (32 bytes), size, packed extents]; xattrs: None or {name: value}.
