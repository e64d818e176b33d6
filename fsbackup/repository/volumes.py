"""Writing volumes: the one way a volume and its index object are made (docs/format.md), and
the one way a run stores new blocks in them (`BlockSink`)."""
from __future__ import annotations

import secrets
from collections import deque
from concurrent.futures import Executor, Future

from ..codec import wire
from ..errors import FsbackupError
from .repository import Repository

DEFAULT_VOLUME_SIZE = 32 * 1024 * 1024


class VolumeWriter:
    """A volume being filled: blocks encoded under its own cipher (some still encoding, in
    order), then sealed with its table, verified by reading that table back, and stored with its
    index object (`seal_and_store`). Backup fills them, and prune when it repacks live blocks."""

    def __init__(self, repo: Repository):
        self.name = secrets.token_hex(32)
        self.cipher = repo.block_cipher(self.name)
        self.parts: list[bytes] = [wire.header(wire.VOLUME_MAGIC)]
        self.offset = wire.HEADER_LEN
        self.entries: list[wire.BlockEntry] = []
        self.encoding: deque[tuple[list[bytes], Future]] = deque()   # batches being encoded, in order
        self.batch: list[tuple[bytes, bytes | memoryview]] = []     # small blocks not yet handed off
        self.batch_bytes = 0
        self.plain_encoding = 0
        self.stored_size = 0

    def take_oldest(self) -> None:
        block_ids, fut = self.encoding.popleft()
        for block_id, (stored, plain_len) in zip(block_ids, fut.result()):
            self.plain_encoding -= plain_len
            self.add(block_id, stored, plain_len)

    def add(self, block_id: bytes, stored: bytes, plain_len: int) -> None:
        """Append one block, encoded under this volume's cipher."""
        self.entries.append(wire.BlockEntry(block_id, self.offset, len(stored), plain_len))
        self.parts.append(stored)
        self.offset += len(stored)

    def seal(self, keys) -> tuple[bytes, bytes]:
        """(the volume, its index object): the table and footer appended, read back to verify."""
        self.parts.append(wire.seal_table(keys, bytes.fromhex(self.name), self.entries, self.offset))
        data = b"".join(self.parts)
        self.parts = []
        self.stored_size = len(data)
        # Verify what we wrote: re-read our own table before it leaves the machine.
        if wire.open_volume_table(keys, bytes.fromhex(self.name), data, self.name) != self.entries:
            raise FsbackupError(f"internal error: volume {self.name} does not read back as written")
        return data, wire.encode_index(keys, bytes.fromhex(self.name), len(data), self.entries)

    def seal_and_store(self, repo: Repository) -> int:
        """Seal, then upload the volume and its index object; returns the bytes uploaded.
        Thread-safe: backups run it in their upload threads."""
        data, index_obj = self.seal(repo.keys)
        repo.store_volume(self.name, data, index_obj)
        return len(data) + len(index_obj)


# Blocks are looked up in the catalog in batches (one query per block costs more than the lookup),
# and small blocks travel to the encoders in batches (one hand-off per block costs more, in GIL
# hand-offs, than encoding it).
LOOKUP_BLOCKS = 256          # blocks looked up in one query...
LOOKUP_BYTES = 8 << 20       # ...or fewer, when they hold this much data
BATCH_BYTES = 1 << 20        # blocks handed to an encoder together: about this many bytes...
BATCH_BLOCKS = 256           # ...or this many blocks


class BlockSink:
    """Where the blocks a run writes go: taken in order (`take`), looked up in the catalog in
    batches, those the repository lacks packed into volumes (`VolumeWriter`) encoded in
    `encode_pool`, each full volume stored by `upload_pool` with at most `uploads_in_flight` at
    once, and recorded in the catalog once stored (publish, then record). A block taken twice
    before it is recorded is stored once. Backup and copy fill one each; `finish` stores the
    rest, `abort` cancels what has not started. Called from one thread.

    Counters: `blocks_new`/`bytes_new` (plaintext of the blocks stored, or that a dry run would
    store), `blocks_known`/`bytes_known` (the repository had them), `bytes_stored` (volumes and
    index objects uploaded), `volumes`; `written`: each stored volume's name and size."""

    def __init__(self, repo: Repository, encode_pool: Executor, upload_pool: Executor, *, volume_size: int,
                 compression: int, uploads_in_flight: int, encode_window: int, dry_run: bool = False):
        self.repo = repo
        self.encode_pool, self.upload_pool = encode_pool, upload_pool
        self.volume_size, self.compression = volume_size, compression
        self.uploads_in_flight, self.encode_window, self.dry_run = uploads_in_flight, encode_window, dry_run
        self.pending_ids: set[bytes] = set()             # taken, not yet recorded (nor found known)
        self.unlooked: list[tuple[bytes, bytes | memoryview]] = []    # taken, not yet looked up
        self.unlooked_bytes = 0
        self.volume: VolumeWriter | None = None
        self.uploads: deque[tuple[VolumeWriter, Future]] = deque()
        self.written: dict[str, int] = {}
        self.blocks_new = self.bytes_new = self.blocks_known = self.bytes_known = 0
        self.bytes_stored = self.volumes = 0

    def take(self, block_id: bytes, data: bytes | memoryview) -> None:
        """A block of what is being written: stored unless the repository or this sink has it."""
        if block_id in self.pending_ids:
            return
        self.pending_ids.add(block_id)
        self.unlooked.append((block_id, data))
        self.unlooked_bytes += len(data)
        if len(self.unlooked) >= LOOKUP_BLOCKS or self.unlooked_bytes >= LOOKUP_BYTES:
            self._look_up()

    def finish(self) -> None:
        """Store every block taken and record their volumes; returns once all are recorded."""
        self._look_up()
        self._seal_volume()
        while self.uploads:
            self._record_oldest_upload()

    def abort(self) -> None:
        for _, fut in self.uploads:
            fut.cancel()

    def _look_up(self) -> None:
        batch, self.unlooked, self.unlooked_bytes = self.unlooked, [], 0
        if not batch:
            return
        known = self.repo.known_blocks([block_id for block_id, _ in batch])
        for block_id, data in batch:
            if block_id in known:
                self.pending_ids.discard(block_id)
                self.blocks_known += 1
                self.bytes_known += len(data)
            else:
                self._store(block_id, data)

    def _store(self, block_id: bytes, data: bytes | memoryview) -> None:
        self.blocks_new += 1
        self.bytes_new += len(data)
        if self.dry_run:
            return
        vol = self.volume
        if vol is None:
            vol = self.volume = VolumeWriter(self.repo)
        vol.batch.append((block_id, data))
        vol.batch_bytes += len(data)
        vol.plain_encoding += len(data)
        if vol.batch_bytes >= BATCH_BYTES or len(vol.batch) >= BATCH_BLOCKS:
            self._hand_off(vol)
        # Stored size is at most the plain size (+ tag): when the estimate reaches the limit,
        # wait for the blocks in flight to learn the real size before deciding to close.
        if vol.offset + vol.plain_encoding >= self.volume_size:
            self._hand_off(vol)
            while vol.encoding:
                vol.take_oldest()
            if vol.offset >= self.volume_size - wire.HEADER_LEN:
                self._seal_volume()

    def _hand_off(self, vol: VolumeWriter) -> None:
        if not vol.batch:
            return
        batch, vol.batch, vol.batch_bytes = vol.batch, [], 0
        encoded = self.encode_pool.submit(wire.encode_blocks, vol.cipher, batch, self.compression)
        vol.encoding.append(([block_id for block_id, _ in batch], encoded))
        while len(vol.encoding) > self.encode_window:
            vol.take_oldest()

    def _seal_volume(self) -> None:
        vol, self.volume = self.volume, None
        if vol is None:
            return
        self._hand_off(vol)
        while vol.encoding:
            vol.take_oldest()
        if not vol.entries:
            return
        while len(self.uploads) >= self.uploads_in_flight:
            self._record_oldest_upload()
        self.uploads.append((vol, self.upload_pool.submit(vol.seal_and_store, self.repo)))

    def _record_oldest_upload(self) -> None:
        vol, fut = self.uploads.popleft()
        nbytes = fut.result()
        self.repo.record_volume(vol.name, vol.stored_size, vol.entries)
        self.written[vol.name] = vol.stored_size
        self.pending_ids.difference_update(e.id for e in vol.entries)
        self.bytes_stored += nbytes
        self.volumes += 1
