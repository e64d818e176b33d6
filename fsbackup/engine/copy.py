"""Copy versions from another repository (its own keys) into this one, as restic's `copy`.

Block ids and content hashes are keyed hashes, and the two repositories have different keys: a
block's id differs between them. So every block a copied version needs is fetched from the source
(in volume order, as runs of one range read each, as restore fetches them), decrypted, and given
its destination id from its plaintext; blocks the destination already holds are skipped, the rest
are compressed, encrypted under the destination's keys and packed into new volumes. Files keep
the source's block boundaries: the destination's own chunker (its secret gear table) cuts
elsewhere, so later backups into the destination deduplicate less against copied data (it is
readable all the same: readers never cut). Each file's destination content hash is computed from
its data as it passes.

Crash safety is the backup's ("publish, then record", docs/design.md): volumes are stored with
their index objects and recorded, and each version object is stored only after every volume it
needs, then recorded. A copy that stops leaves the destination valid, its versions whole or
absent, and the next copy finds the blocks already uploaded through the catalog sync and does not
upload them again.

Which versions are missing from the destination: those with no version of the same (time_ns,
host, paths) there. A copied version's header records the source version in `copied_from`
(docs/format.md).

Threading (docs/design.md): the calling thread owns both local indexes, computes destination ids
and content hashes and packs volumes; fetch threads download and decode runs of source blocks, one
batch ahead; encoder threads compress and encrypt; upload threads seal and store volumes.
"""
from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import msgpack

from .. import __version__
from ..catalog.tree import VersionTree
from ..catalog.versions import VersionInfo, list_versions
from ..codec import wire
from ..codec.crypto import ContentHasher
from ..errors import CorruptObject, FsbackupError, NoSpace, UsageError, os_error_kind
from ..private import private_temp_file
from ..progress import SILENT, Reporter
from ..repository import Repository, block_runs
from ..repository.volumes import DEFAULT_VOLUME_SIZE, BlockSink

BATCH_BYTES = 16 << 20       # file data whose blocks are fetched together (one batch ahead of the writer)
RUN_BYTES = 4 << 20          # a range read covers neighbouring blocks up to this many bytes ...
RUN_GAP = 64 << 10           # ... reading over gaps this small (as restore does)
LOOKUP_BLOCKS = 256          # destination blocks looked up in the index in one query


def _raise_no_space(e: OSError, folder: str) -> None:
    """The spool's folder (beside the local index) is full: say so, as the index would."""
    if os_error_kind(e) is NoSpace:
        raise NoSpace(f"no space left for the copied version's file list in {folder} (beside the local index); "
                      "free space there, or put the index on another disk with --index") from None


def version_key(v: VersionInfo) -> tuple:
    """What makes two versions the same backup: its start time, host and paths."""
    return v.time_ns, v.host, tuple(sorted(v.paths))


def missing_versions(candidates: Iterable[VersionInfo], dest: Repository) -> list[VersionInfo]:
    """The versions among `candidates` (source versions) that the destination lacks, oldest first:
    those of whose (time_ns, host, paths) it has no version."""
    present = {version_key(v) for v in list_versions(dest.catalog)}
    unique = {v.name: v for v in candidates if version_key(v) not in present}
    return sorted(unique.values(), key=lambda v: (v.time_ns, v.name))


@dataclass
class CopyOptions:
    dry_run: bool = False
    volume_size: int = DEFAULT_VOLUME_SIZE
    compression: int = wire.ZSTD_LEVEL
    workers: int = max(2, os.cpu_count() or 2)


@dataclass
class CopyStats:
    versions: list[dict] = field(default_factory=list)    # {"source": name, "destination": name or None}
    files: int = 0
    blocks_uploaded: int = 0
    bytes_new: int = 0            # plaintext bytes of the blocks uploaded (a dry run: that would be)
    bytes_uploaded: int = 0       # stored bytes of the volumes and index objects written
    blocks_skipped: int = 0
    bytes_skipped: int = 0        # plaintext bytes of blocks the destination already held
    bytes_read: int = 0           # plaintext bytes of the source's blocks read
    volumes: int = 0
    duration: float = 0.0

    def as_json(self) -> dict:
        return {"versions_copied": self.versions, "files": self.files, "blocks_uploaded": self.blocks_uploaded,
                "bytes_new": self.bytes_new, "bytes_uploaded": self.bytes_uploaded,
                "blocks_skipped": self.blocks_skipped, "bytes_skipped": self.bytes_skipped,
                "bytes_read": self.bytes_read, "volumes": self.volumes, "duration": round(self.duration, 3)}


class _File:
    """A source content being copied: its destination hash and extents as its blocks pass."""
    __slots__ = ("key", "size", "hasher", "extents")

    def __init__(self, key: bytes, size: int, hasher: ContentHasher):
        self.key, self.size, self.hasher = key, size, hasher
        self.extents: list[tuple[bytes, int]] = []


class Copy:
    """Copies versions from `source` into `dest` (the destination, which the caller holds an
    append lock on; its local index brought in step first). Reads nothing from the source but
    its index, version objects and volumes, and takes no lock on it."""

    def __init__(self, source: Repository, dest: Repository, options: CopyOptions | None = None,
                 reporter: Reporter | None = None):
        self.source, self.dest = source, dest
        self.options = options or CopyOptions()
        self.reporter = reporter or SILENT
        self.progress = self.reporter.progress()
        self.stats = CopyStats()
        self.before_commit: Callable[[], None] = lambda: None    # the caller's: checks its lock is still held
        self.contents: dict[bytes, list] = {}        # source content hash -> destination [hash, size, extents]
        self.dest_ids: dict[bytes, bytes] = {}       # source block id -> destination block id
        self.batch: list[tuple[_File, list[tuple[bytes, int]], bool]] = []   # (file, extents, last piece)
        self.batch_bytes = 0
        self.fetching: deque[tuple[list, dict[bytes, Future]]] = deque()
        self.learned: set[str] = set()               # source versions whose copies' contents were taken

    # ---- entry point --------------------------------------------------------------------

    def run(self, versions: list[VersionInfo]) -> CopyStats:
        """Copy `versions` (source versions, oldest first), each stored whole or not at all."""
        if self.source.id == self.dest.id:
            raise UsageError("the source repository is the destination; copy between two repositories")
        started = time.monotonic()
        self.progress.start("copy", total_bytes=sum(v.total_size for v in versions) or None)
        self.fetch_pool = ThreadPoolExecutor(max(2, self.source.connections), thread_name_prefix="fsbackup-fetch")
        self.encode_pool = ThreadPoolExecutor(self.options.workers, thread_name_prefix="fsbackup-encode")
        self.upload_pool = ThreadPoolExecutor(max(1, self.dest.connections), thread_name_prefix="fsbackup-upload")
        self.sink = BlockSink(self.dest, self.encode_pool, self.upload_pool, volume_size=self.options.volume_size,
                              compression=self.options.compression, uploads_in_flight=max(1, self.dest.connections),
                              encode_window=2 * self.options.workers + 2, dry_run=self.options.dry_run)
        try:
            for v in versions:
                self.stats.versions.append({"source": v.name, "destination": self._copy_version(v)})
        except BaseException:
            self.sink.abort()
            raise
        finally:
            for pool in (self.fetch_pool, self.encode_pool, self.upload_pool):
                pool.shutdown(wait=True, cancel_futures=True)
            sink = self.sink
            self.stats.blocks_uploaded, self.stats.bytes_new = sink.blocks_new, sink.bytes_new
            self.stats.blocks_skipped, self.stats.bytes_skipped = sink.blocks_known, sink.bytes_known
            self.stats.bytes_uploaded, self.stats.volumes = sink.bytes_stored, sink.volumes
        self.progress.finish()
        self.stats.duration = time.monotonic() - started
        return self.stats

    def _copy_version(self, v: VersionInfo) -> str | None:
        """Copy one version: its files' blocks, then its object; its destination name (None for
        a dry run)."""
        stored_before = self.sink.bytes_stored
        self._learn_from_earlier_copy(v)
        head, entries = self.source.load_version(v.name)
        for entry in entries:
            if entry[wire.E_TYPE] == "f":
                self.stats.files += 1
                self._take_content(entry[wire.E_CONTENT])
        self._flush_batch()
        while self.fetching:
            self._process_oldest_batch()
        self.sink.finish()
        if self.options.dry_run:
            return None
        # The source's header, but for its tags (those its tag records give it now), its parent
        # (that version's copy here, if any), what this copy added, and where it comes from.
        new_head = {"time_ns": head["time_ns"], "host": head["host"], "paths": head["paths"], "tags": list(v.tags),
                    "parent": self._dest_parent(head.get("parent")), "file_count": head["file_count"],
                    "total_size": head["total_size"], "bytes_added": self.sink.bytes_stored - stored_before,
                    "fsbackup": __version__, "copied_from": v.name}
        if head.get("description") is not None:
            new_head["description"] = head["description"]
        self.before_commit()
        return self._store_version(new_head, v.name)

    def _store_version(self, head: dict, source_name: str) -> str:
        """Store the version object, then record it; its entries are spooled to a private file
        beside the destination's index as they are stored, so the source's version object is
        downloaded once more, not twice."""
        folder = os.path.join(os.path.dirname(self.dest.catalog_path), "spool")
        packer = wire.entry_packer(unicode_errors="surrogateescape")
        try:
            spool = private_temp_file(folder)
        except OSError as e:
            _raise_no_space(e, folder)
            raise

        def spooled() -> Iterator[list]:
            for entry in self._dest_entries(source_name):
                try:
                    spool.write(packer.pack(entry))
                except OSError as e:
                    _raise_no_space(e, folder)
                    raise
                yield entry
        with spool:
            name = self.dest.store_version(head, spooled())
            spool.seek(0)
            self.dest.record_version(name, head, msgpack.Unpacker(spool, raw=False, unicode_errors="surrogateescape",
                                                                  max_buffer_size=1 << 30))
        return name

    def _dest_entries(self, source_name: str) -> Iterator[list]:
        """The source version's entries, each file's content given as the destination knows it."""
        _, entries = self.source.load_version(source_name)
        for entry in entries:
            if entry[wire.E_TYPE] == "f":
                entry[wire.E_CONTENT] = self.contents[entry[wire.E_CONTENT][0]]
            yield entry

    def _dest_parent(self, source_parent) -> str | None:
        """The destination's copy of the source version's parent, if it has one."""
        if not isinstance(source_parent, str):
            return None
        parents = [v for v in list_versions(self.source.catalog) if v.name == source_parent]
        if not parents:
            return None
        key = version_key(parents[0])
        return next((d.name for d in list_versions(self.dest.catalog) if version_key(d) == key), None)

    def _learn_from_earlier_copy(self, v: VersionInfo) -> None:
        """Take the destination contents of the files of the newest earlier version of the same
        host and paths that is in both repositories: a copy keeps every entry's place, so its
        files pair up by node id with the source's, and an unchanged file's blocks are neither
        fetched nor hashed again. Only contents whose blocks the destination's index still
        records are taken: data the destination lost since (a sync forgets vanished volumes)
        is copied again."""
        copies = {version_key(d): d for d in list_versions(self.dest.catalog)}
        earlier = [s for s in list_versions(self.source.catalog)
                   if s.host == v.host and sorted(s.paths) == sorted(v.paths) and s.time_ns < v.time_ns
                   and version_key(s) in copies]
        if not earlier or earlier[-1].name in self.learned:
            return
        source_version = earlier[-1]
        self.learned.add(source_version.name)
        pairs = zip(VersionTree(self.source.catalog, source_version).file_contents(),
                    VersionTree(self.dest.catalog, copies[version_key(source_version)]).file_contents())
        learned: dict[bytes, list] = {}
        for (source_node, source_content), (dest_node, dest_content) in pairs:
            if source_node != dest_node or source_content.size != dest_content.size:
                return              # not a copy of it after all: learn nothing
            learned[source_content.hash] = [dest_content.hash, dest_content.size, dest_content.packed_extents]
        blocks = list({block_id for _, _, packed in learned.values() for block_id in wire.extent_ids(packed)}
                      - {wire.HOLE_ID})
        known: set[bytes] = set()
        for i in range(0, len(blocks), LOOKUP_BLOCKS):
            known |= self.dest.known_blocks(blocks[i:i + LOOKUP_BLOCKS])
        self.contents.update((key, content) for key, content in learned.items()
                             if all(block_id in known or block_id == wire.HOLE_ID
                                    for block_id in wire.extent_ids(content[2])))

    # ---- contents: fetched in batches, hashed in file order -------------------------------

    def _take_content(self, content: list) -> None:
        """Queue a file's content for copying, unless a content with the same data was taken before."""
        content_hash, size, packed = content
        if content_hash in self.contents:
            self.progress.advance(files=1, nbytes=size)
            return
        self.contents[content_hash] = []       # (filled in when its last piece is processed)
        file = _File(content_hash, size, self.dest.keys.content_hasher())
        extents = wire.unpack_extents(packed)
        piece: list[tuple[bytes, int]] = []
        for extent in extents:
            piece.append(extent)
            if extent[0] != wire.HOLE_ID:
                self.batch_bytes += extent[1]
            if self.batch_bytes >= BATCH_BYTES:
                self.batch.append((file, piece, False))
                piece = []
                self._flush_batch()
        self.batch.append((file, piece, True))

    def _flush_batch(self) -> None:
        """Start fetching the blocks of the batch (runs in volume order, in fetch threads); process
        the batch before it, so that one batch is fetched while the one before is written."""
        batch, self.batch, self.batch_bytes = self.batch, [], 0
        if not batch:
            return
        wanted = {block_id for _, piece, _ in batch for block_id, _ in piece if block_id != wire.HOLE_ID}
        places = self.source.block_locations(wanted)
        missing = wanted - places.keys()
        if missing:
            raise CorruptObject(f"{len(missing)} block(s) of the source",
                                "the source's index names them in no stored volume; run 'fsbackup check' on it")
        futures: dict[bytes, Future] = {}
        ordered = sorted(places.items(), key=lambda item: (item[1].volume, item[1].offset))
        for run in block_runs(ordered, RUN_BYTES, RUN_GAP):
            fut = self.fetch_pool.submit(self.source.fetch_run, run)
            for block_id, _ in run:
                futures[block_id] = fut
        self.fetching.append((batch, futures))
        while len(self.fetching) > 1:
            self._process_oldest_batch()

    def _process_oldest_batch(self) -> None:
        batch, futures = self.fetching.popleft()
        for file, piece, last in batch:
            for block_id, length in piece:
                if block_id == wire.HOLE_ID:
                    file.hasher.hole(length)
                    file.extents.append((wire.HOLE_ID, length))
                    continue
                data = futures[block_id].result()[block_id]
                if isinstance(data, FsbackupError):
                    raise data
                file.hasher.data(data)
                self.stats.bytes_read += len(data)
                self.progress.advance(nbytes=len(data))
                dest_id = self.dest_ids.get(block_id)
                if dest_id is None:
                    dest_id = self.dest_ids[block_id] = self.dest.keys.block_id(data)
                    self.sink.take(dest_id, data)
                file.extents.append((dest_id, length))
            if last:
                self.contents[file.key] = [file.hasher.digest(), file.size, wire.pack_extents(file.extents)]
                self.progress.advance(files=1)
