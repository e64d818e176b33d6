"""The on-remote encoding of every object kind (docs/format.md is the reference).

Pure functions over bytes: no I/O, no database. The repository layer names and stores objects;
this module turns blocks, tables and trees into authenticated ciphertext and back.
"""
from __future__ import annotations

import struct
import threading
from typing import Any, Iterable, Iterator, NamedTuple

import msgpack
import zstandard

from ..errors import CorruptObject
from .chunker import MAX_SIZE
from .crypto import ZERO_NONCE, Keys, ObjectCipher

# Written into every object header and new repositories' config. Version 2 seals index objects
# under a random nonce (they are written again by repair); new repositories also take a whole
# secret gear table and key objects that bind the config. Version 1 objects are read as they are.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)

VOLUME_MAGIC = b"FSBV"
INDEX_MAGIC = b"FSBI"
VERSION_MAGIC = b"FSBS"
LOCK_MAGIC = b"FSBL"
FORGOTTEN_MAGIC = b"FSBF"
TAGS_MAGIC = b"FSBG"
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

# Decompression bounds (docs/format.md, "Bounds"). python-zstandard allocates whatever size a
# frame declares, whatever max_output_size says, so the declared size is checked before anything
# is allocated, and a frame that does not declare one is streamed and cut off at the bound.
MAX_WINDOW = 8 << 20                 # largest zstd window a reader accepts (writers use up to 4 MiB)
MAX_BLOCK_LEN = MAX_SIZE             # a block's plaintext: at most the chunker's largest block
METADATA_FLOOR = 64 << 20            # a table, index object or version frame expands to at most
METADATA_RATIO = 64                  # max(METADATA_FLOOR, METADATA_RATIO x its compressed length)
STREAM_CHUNK = 1 << 20               # version frames are decompressed and parsed this much at a time


def metadata_limit(compressed_len: int) -> int:
    """The most plaintext a table, index object or version frame of `compressed_len` bytes may hold:
    a zstd bomb stops there, while a real one (mostly incompressible block ids) never comes close."""
    return max(METADATA_FLOOR, METADATA_RATIO * compressed_len)


def _zstd_c(level: int = ZSTD_LEVEL) -> zstandard.ZstdCompressor:
    """This thread's compressor for `level` (building one costs more than compressing a small block)."""
    compressors = getattr(_per_thread, "compressors", None)
    if compressors is None:
        compressors = _per_thread.compressors = {}
    compressor = compressors.get(level)
    if compressor is None:
        compressor = compressors[level] = zstandard.ZstdCompressor(level=level)
    return compressor


def _zstd_d() -> zstandard.ZstdDecompressor:
    decompressor = getattr(_per_thread, "decompressor", None)
    if decompressor is None:
        decompressor = _per_thread.decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
    return decompressor


def _decompress(data, limit: int) -> bytes:
    """A zstd frame's plaintext, of at most `limit` bytes; zstandard.ZstdError for anything else
    (a frame that declares or expands to more, a damaged frame)."""
    declared = zstandard.get_frame_parameters(data).content_size
    if declared == zstandard.CONTENTSIZE_UNKNOWN:
        return b"".join(_decompress_chunks(data, limit))
    if declared > limit:
        raise zstandard.ZstdError(f"frame declares {declared} bytes, more than {limit}")
    return _zstd_d().decompress(data)


def _decompress_chunks(data, limit: int) -> Iterator[bytes]:
    """A zstd frame's plaintext in pieces of at most STREAM_CHUNK bytes; zstandard.ZstdError once
    it passes `limit` bytes. Memory stays at one piece, whatever the frame holds."""
    declared = zstandard.get_frame_parameters(data).content_size
    if declared != zstandard.CONTENTSIZE_UNKNOWN and declared > limit:
        raise zstandard.ZstdError(f"frame declares {declared} bytes, more than {limit}")
    reader = _zstd_d().stream_reader(data, read_across_frames=False)
    total = 0
    while chunk := reader.read(STREAM_CHUNK):
        total += len(chunk)
        if total > limit:
            raise zstandard.ZstdError(f"frame expands to more than {limit} bytes")
        yield chunk


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
        compressed: Any = _zstd_c(level).multi_compress_to_buffer([data for _, data in blocks])
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
    if not 0 <= plain_len <= MAX_BLOCK_LEN:
        raise CorruptObject(object_name, f"a block is recorded with {plain_len} bytes, more than blocks hold")
    payload = cipher.open(block_nonce(block_id), stored, block_ad(block_id), object_name)
    codec, body = payload[0], memoryview(payload)[1:]
    try:
        data = _decompress(body, plain_len) if codec == CODEC_ZSTD else bytes(body)
    except zstandard.ZstdError:
        raise CorruptObject(object_name, "block does not decompress") from None
    if codec not in (CODEC_RAW, CODEC_ZSTD) or len(data) != plain_len or keys.block_id(data) != block_id:
        raise CorruptObject(object_name, "block does not match its id")
    return data


def decode_blocks(keys: Keys, cipher: ObjectCipher, blocks: list[tuple[bytes, bytes | memoryview, int]],
                  object_name: str) -> list[bytes | CorruptObject]:
    """`decode_block` for each (block id, stored bytes, plain length) of a run of one volume: the
    block, or the CorruptObject that stands for it. The run's frames are decompressed in one call,
    into exactly the recorded lengths (a frame that expands to more or less fails), with the GIL
    released once for the run instead of held block by block: a mount's trio thread, which
    answers every request, waits on the GIL less while a run decodes in a fetch thread."""
    out: list = [None] * len(blocks)
    frames: list[bytes | bytearray | memoryview] = []     # zstd frames...
    framed: list[int] = []                                 # ...and the index in `blocks` of each
    for i, (block_id, stored, plain_len) in enumerate(blocks):
        if not 0 <= plain_len <= MAX_BLOCK_LEN:
            out[i] = CorruptObject(object_name, f"a block is recorded with {plain_len} bytes, more than blocks hold")
            continue
        try:
            payload = cipher.open(block_nonce(block_id), stored, block_ad(block_id), object_name)
        except CorruptObject as e:
            out[i] = e
            continue
        if payload[0] == CODEC_ZSTD:
            frames.append(memoryview(payload)[1:])
            framed.append(i)
        elif payload[0] == CODEC_RAW:
            out[i] = bytes(memoryview(payload)[1:])
        else:
            out[i] = CorruptObject(object_name, "block does not match its id")
    if frames:
        sizes = struct.pack(f"<{len(frames)}Q", *(blocks[i][2] for i in framed))
        try:
            plain = _zstd_d().multi_decompress_to_buffer(frames, decompressed_sizes=sizes)
            for j, i in enumerate(framed):
                out[i] = plain[j].tobytes()
        except zstandard.ZstdError:          # one frame is bad: find which, one by one
            for frame, i in zip(frames, framed):
                try:
                    out[i] = _decompress(frame, blocks[i][2])
                except zstandard.ZstdError:
                    out[i] = CorruptObject(object_name, "block does not decompress")
    for i, (block_id, _, plain_len) in enumerate(blocks):
        data = out[i]
        if isinstance(data, bytes) and (len(data) != plain_len or keys.block_id(data) != block_id):
            out[i] = CorruptObject(object_name, "block does not match its id")
    return out


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
        return _unpack_table(_decompress(raw, metadata_limit(len(raw))), name)
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
        doc = msgpack.unpackb(_decompress(raw, metadata_limit(len(raw))))
        size, blocks = int(doc["size"]), doc["blocks"]
    except (ValueError, TypeError, KeyError, msgpack.UnpackException, zstandard.ZstdError):
        raise CorruptObject(name, "does not parse") from None
    return size, _table_entries(blocks, name)


# ---- small objects: locks and forgotten records ---------------------------------------------
#
# A small map, msgpack-encoded (not compressed), sealed under the object's key for `purpose` with
# a random nonce stored after the header: a lock is rewritten under its name at every refresh, a
# forgotten record when its version is forgotten again.

def _seal_map(keys: Keys, magic: bytes, purpose: bytes, object_id: bytes, doc: dict) -> bytes:
    return header(magic) + keys.object_cipher(purpose, object_id).seal_random(msgpack.packb(doc), purpose + b"\0")


def _open_map(keys: Keys, magic: bytes, purpose: bytes, object_id: bytes, data: bytes, name: str) -> dict:
    check_header(data, magic, name)
    raw = keys.object_cipher(purpose, object_id).open_random(data[HEADER_LEN:], purpose + b"\0", name)
    try:
        doc = msgpack.unpackb(raw)
        if not isinstance(doc, dict):
            raise ValueError
        return doc
    except (ValueError, TypeError, msgpack.UnpackException):
        raise CorruptObject(name, "does not parse") from None


def encode_lock(keys: Keys, lock_id: bytes, doc: dict) -> bytes:
    """A lock object (locks.py says what `doc` holds)."""
    return _seal_map(keys, LOCK_MAGIC, b"lock", lock_id, doc)


def decode_lock(keys: Keys, lock_id: bytes, data: bytes, name: str) -> dict:
    return _open_map(keys, LOCK_MAGIC, b"lock", lock_id, data, name)


def encode_forgotten(keys: Keys, version_id: bytes, doc: dict) -> bytes:
    """The record that a version was forgotten (`forgotten/<version name>`), stored before the
    version object is deleted: a version that vanishes without one was deleted behind fsbackup's
    back, or lost."""
    return _seal_map(keys, FORGOTTEN_MAGIC, b"forgotten", version_id, doc)


def decode_forgotten(keys: Keys, version_id: bytes, data: bytes, name: str) -> dict:
    return _open_map(keys, FORGOTTEN_MAGIC, b"forgotten", version_id, data, name)


def encode_tag_record(keys: Keys, record_id: bytes, version: str, tags: list[str], generation: int,
                      time_ns: int) -> bytes:
    """A tag record (`tags/<record id>`, written once under a fresh random name): from now on
    version `version` carries `tags`, unless a record of it with a larger (generation, time_ns,
    record name) says otherwise (docs/format.md "Tag records")."""
    return _seal_map(keys, TAGS_MAGIC, b"tags", record_id,
                     {"version": version, "tags": [_wire_text(t) for t in tags], "generation": generation,
                      "time_ns": time_ns})


def decode_tag_record(keys: Keys, record_id: bytes, data: bytes, name: str) -> dict:
    """A tag record's map, checked: `version` (a version name), `tags` (text), `generation` (at
    least 1) and `time_ns`; CorruptObject for anything else."""
    doc = _open_map(keys, TAGS_MAGIC, b"tags", record_id, data, name)
    version, tags = doc.get("version"), doc.get("tags")
    generation, time_ns = doc.get("generation"), doc.get("time_ns")
    if not (isinstance(version, str) and len(version) == 64 and all(c in "0123456789abcdef" for c in version)
            and isinstance(tags, list) and all(isinstance(t, (str, bytes)) for t in tags)
            and _is_int(generation, 1, INT64_MAX) and _is_int(time_ns, INT64_MIN, INT64_MAX)):
        raise CorruptObject(name, "is not a tag record")
    return {**doc, "tags": [_memory_text(t) for t in tags]}


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
    pending: list[bytes] = [msgpack.packb(encode_head(head))]   # frame plaintexts not yet sealed (keep one back)
    frame_no = 0

    def seal(plain: bytes, last: bool) -> None:
        nonlocal frame_no
        sealed = cipher.seal(_frame_nonce(frame_no), compressor.compress(plain), _frame_ad(frame_no, last))
        out.extend(FRAME_LEN.pack(len(sealed)))
        out.extend(sealed)
        frame_no += 1

    packer = entry_packer()
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


def decode_version(keys: Keys, version_id: bytes, data: bytes, name: str) -> tuple[dict, Iterator]:
    """(head, iterator of entries). Raises CorruptObject at once if any frame fails authentication
    or the header frame does not parse; entries are decompressed and parsed a piece of a frame at
    a time as they are read (raising CorruptObject then). Neither is checked: `check_head` and
    `checked_entries` tell whether they make a version."""
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
    try:
        head = decode_head(msgpack.unpackb(_decompress(opened[0], metadata_limit(len(opened[0])))))
    except zstandard.ZstdError as e:
        raise CorruptObject(name, f"header frame does not decompress: {e}") from None
    except (ValueError, msgpack.UnpackException):
        raise CorruptObject(name, "header does not parse") from None

    def entries() -> Iterator[list]:
        for frame in opened[1:]:
            limit = metadata_limit(len(frame))
            unpacker = msgpack.Unpacker(raw=False, max_buffer_size=limit)
            fed = 0
            try:
                for piece in _decompress_chunks(frame, limit):
                    unpacker.feed(piece)
                    fed += len(piece)
                    yield from unpacker
                if unpacker.tell() != fed:
                    raise CorruptObject(name, "an entry is cut off at the end of a frame")
            except zstandard.ZstdError as e:
                raise CorruptObject(name, f"frame does not decompress: {e}") from None
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


# ---- the version header ---------------------------------------------------------------------
# In memory, paths, tags and the host are str, non-UTF-8 bytes held as surrogate escapes (as
# os.fsdecode gives them). In the object, each is a msgpack str when it is valid UTF-8, else bin
# with its bytes: any path round-trips, and a reader that predates bin still reads every other.

INT64_MIN, INT64_MAX = -2**63, 2**63 - 1
HEAD_COUNTS = ("file_count", "total_size", "bytes_added")


def _wire_text(text):
    if not isinstance(text, str):
        return text                      # (check_head tells a header with such a value corrupt)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")


def _memory_text(value):
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def encode_head(head: dict) -> dict:
    """A version header as stored: paths, tags, host and description as str or, when not UTF-8, bin."""
    return _map_texts(head, _wire_text)


def decode_head(head) -> dict:
    """A stored version header as held in memory (paths, tags and host as str); `check_head`
    tells whether it is one."""
    return _map_texts(head, _memory_text) if isinstance(head, dict) else head


def _map_texts(head: dict, convert) -> dict:
    out = dict(head)
    for key in ("host", "description"):
        if key in out:
            out[key] = convert(out[key])
    for key in ("paths", "tags"):
        if isinstance(out.get(key), list):
            out[key] = [convert(text) for text in out[key]]
    return out


def check_head(head, name: str) -> dict:
    """`head` when it is a version header the local index can hold, else CorruptObject: a field
    missing, of another type, or a number out of range. Keys it does not know are allowed."""
    if not isinstance(head, dict):
        raise CorruptObject(name, "header is not a map")
    try:
        paths, tags, host, parent = head["paths"], head["tags"], head["host"], head["parent"]
        numbers = [head[key] for key in ("time_ns", *HEAD_COUNTS)]
    except KeyError as e:
        raise CorruptObject(name, f"header lacks {e.args[0]}") from None
    if not isinstance(paths, list) or not isinstance(tags, list):
        raise CorruptObject(name, "header paths or tags are not lists")
    texts = [host, *paths, *tags]
    if not all(isinstance(text, str) for text in texts):
        raise CorruptObject(name, "header host, paths or tags are not text")
    if not _is_int(numbers[0], INT64_MIN, INT64_MAX) or not all(_is_int(n, 0, INT64_MAX) for n in numbers[1:]):
        raise CorruptObject(name, "header time or counts are out of range")
    if parent is not None and not isinstance(parent, str):
        raise CorruptObject(name, "header parent is not a version name")
    if not isinstance(head.get("description", ""), str):
        raise CorruptObject(name, "header description is not text")
    return head


def _is_int(value, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


# ---- entry timestamps -----------------------------------------------------------------------
# A time is nanoseconds since the epoch, signed, anywhere in the range of the kernel's times
# (a signed 64-bit count of seconds and the nanoseconds within it). In an entry it is a msgpack
# integer when it fits one (int64 or uint64: 1677 to 2554), else a msgpack timestamp (extension
# type -1), which holds signed 64-bit seconds. Readers take both.

TIME_MIN, TIME_MAX = INT64_MIN * 1_000_000_000, INT64_MAX * 1_000_000_000 + 999_999_999


def _wide_time(value):
    """msgpack calls this for what it cannot pack: in an entry, only a time outside its integers."""
    if type(value) is int and TIME_MIN <= value <= TIME_MAX:
        return msgpack.Timestamp.from_unix_nano(value)
    raise TypeError(f"cannot encode {value!r} in a tree entry")


def entry_packer(**options) -> msgpack.Packer:
    """A msgpack packer for tree entries (and anything holding them): times of any range."""
    return msgpack.Packer(default=_wide_time, **options)


def _time_ns(value) -> int | None:
    """A stored time as nanoseconds, or None when it is not one."""
    if type(value) is int:
        return value if TIME_MIN <= value <= TIME_MAX else None
    if isinstance(value, msgpack.Timestamp):
        return value.to_unix_nano()
    return None


# ---- names and tree shape -------------------------------------------------------------------
# What every reader relies on, so that no entry can name a place outside the tree or make a walk
# of it loop: checked as a version is read (decode_version) and as it is recorded (record_version).

ENTRY_TYPES = frozenset("fdlpcb")
_SMALL_INTS = (E_MODE, E_UID, E_GID, E_SIZE, E_INO, E_DEV, E_NLINK, E_RDEV)
_TIMES = (E_MTIME, E_ATIME, E_CTIME)


def bad_name(name) -> str | None:
    """Why `name` cannot be an entry's name (the root's is empty), or None when it can."""
    if not isinstance(name, bytes):
        return "is not bytes"
    if name in (b"", b".", b".."):
        return f"is {name.decode()!r}" if name else "is empty"
    if b"/" in name or b"\0" in name:
        return "holds '/' or NUL"
    return None


class TreeCheck:
    """Checks a version's entries in stream order (docs/format.md, "Names and tree shape"); each
    call returns the entry with its times as int nanoseconds, or raises CorruptObject naming `name`.

    Entry 1 is the root: parent 0, empty name, a directory. Every other entry has a parent that
    is an earlier entry (so the tree has no cycle) and a directory, and a name that is not empty,
    `.` or `..` and holds no `/` or NUL. Fields have their types and the ranges the local index
    holds; the entries of one hard-linked file (nlink > 1, same dev and ino) share one type that
    is not a directory. Memory: one byte per entry, and one item per hard-linked file."""

    def __init__(self, name: str):
        self.name = name
        self.types = bytearray(1)                  # entry id -> its type (0: no entry)
        self.links: dict[tuple[int, int], str] = {}

    def __call__(self, e) -> list:
        entry_id = len(self.types)
        why = self._fault(e, entry_id)
        if why:
            raise CorruptObject(self.name, f"entry {entry_id} {why}")
        self.types.append(ord(e[E_TYPE]))
        return e

    def _fault(self, e, entry_id: int) -> str | None:
        if not isinstance(e, list) or len(e) < len(ENTRY_FIELDS):
            return "is not a tree entry"
        parent, kind = e[E_PARENT], e[E_TYPE]
        if type(kind) is not str or kind not in ENTRY_TYPES:
            return "has an unknown type"
        if entry_id == 1:
            if parent != 0 or e[E_NAME] != b"" or kind != "d":
                return "is not a root directory"
        else:
            if type(parent) is not int or not 0 < parent < entry_id:
                return "has a parent that is not an earlier entry"
            if self.types[parent] != ord("d"):
                return "has a parent that is not a directory"
            why = bad_name(e[E_NAME])
            if why:
                return f"has a name that {why}"
        if not all(_is_int(e[i], 0, INT64_MAX) for i in _SMALL_INTS):
            return "has a number out of range"
        for i in _TIMES:
            ns = _time_ns(e[i])
            if ns is None:
                return f"has a {ENTRY_FIELDS[i]} that is not a time"
            e[i] = ns
        if not all(v is None or isinstance(v, str) for v in (e[E_USER], e[E_GRP])):
            return "has an owner name that is not text"
        target, xattrs, content = e[E_TARGET], e[E_XATTRS], e[E_CONTENT]
        if kind == "l" and not (isinstance(target, bytes) and target and b"\0" not in target):
            return "is a symlink without a target"
        if xattrs is not None and not (isinstance(xattrs, dict) and all(
                isinstance(k, bytes) and k and b"\0" not in k and isinstance(v, bytes) for k, v in xattrs.items())):
            return "has malformed xattrs"
        if (content is None) != (kind != "f") or content is not None and not (
                isinstance(content, list) and len(content) == 3 and isinstance(content[0], bytes)
                and len(content[0]) == 32 and _is_int(content[1], 0, INT64_MAX)
                and isinstance(content[2], bytes) and len(content[2]) % EXTENT.size == 0):
            return "has malformed content"
        if e[E_NLINK] > 1 and kind != "d":
            if self.links.setdefault((e[E_DEV], e[E_INO]), kind) != kind:
                return "is a hard link to an entry of another type"
        return None

    def finish(self) -> None:
        if len(self.types) == 1:
            raise CorruptObject(self.name, "has no root entry")


class CheckedEntries:
    """An iterator of a version's entries that `TreeCheck` passes as they come: CorruptObject
    from the first bad one, or at the end when there is no entry at all."""

    def __init__(self, entries: Iterable, name: str):
        self._entries = iter(entries)
        self._check = TreeCheck(name)

    def __iter__(self) -> "CheckedEntries":
        return self

    def __next__(self) -> list:
        try:
            e = next(self._entries)
        except StopIteration:
            self._check.finish()
            raise
        return self._check(e)


def checked_entries(entries: Iterable, name: str) -> CheckedEntries:
    """`entries` checked as they are iterated (already checked ones are passed as they are)."""
    return entries if isinstance(entries, CheckedEntries) else CheckedEntries(entries, name)
