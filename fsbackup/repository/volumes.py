"""Writing volumes: the one way a volume and its index object are made (docs/format.md)."""
from __future__ import annotations

import secrets
from collections import deque
from concurrent.futures import Future

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
        self.batch: list[tuple[bytes, bytes]] = []                  # small blocks not yet handed off
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
