"""Forget (remove versions a retention policy does not keep) and prune (reclaim the space of
blocks no remaining version uses). docs/maintenance.md is the user's guide.

Prune's safety rests on one order, whatever point a crash interrupts it at:
- a volume is live while its index object exists; a volume is deleted by first unrecording it
  locally, then deleting its index object, then the volume (`Repository.delete_volume`);
- a repacked volume's live blocks are written to a new volume, which is stored (volume, then
  index object) and recorded with the blocks moved to it before the old volume is deleted;
- only volumes holding no block of a remaining version are deleted, and versions are forgotten
  before: no remaining version can point to deleted data.
Leftovers of a crash (a volume without index object, a repacked volume not yet deleted, an
index object whose volume is gone, or the temporary of a put that never finished) are found and
cleaned by the next prune, once older than `locks.leftover_age()`: backups share their lock, so
an object a stopped backup left looks exactly like one a running backup is still writing, and
a stopped backup's volumes serve the next backup meanwhile. Volumes that no version uses are
judged by the same age, for they are what a backup stores before its version.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable

from ..catalog.blocks import any_volume, volume_names
from ..catalog.usage import any_needed_unrecorded, live_blocks, mark_used_blocks, volume_usage
from ..catalog.versions import (
    GROUP_BY_DEFAULT,
    VersionGroup,
    VersionInfo,
    any_version,
    group_versions,
    orphan_tag_records,
)
from ..codec import wire
from ..errors import CorruptObject, FsbackupError, ListingContradiction, NoSpace
from ..progress import SILENT, Reporter, human_bytes
from ..repository import (
    Kind,
    Repository,
    block_runs,
    index_object,
    parse_object_name,
    version_object,
    volume_object,
)
from ..repository.locks import leftover_age
from ..repository.volumes import DEFAULT_VOLUME_SIZE, VolumeWriter
from ..retention import Decision, Policy, Version, apply

DEFAULT_MAX_UNUSED = 0.25
MAX_RUN_BYTES = 8 << 20     # live blocks lying back to back are fetched together, up to this much


# ---- forget ---------------------------------------------------------------------------------

@dataclass
class ForgetGroup:
    """Versions of one group (by default one host and set of paths: `--group-by`): retention
    applies to each group on its own."""
    group: VersionGroup
    decision: Decision

    def as_json(self) -> dict:
        return {**self.group.key_json(), "remove": [v.id for v in self.decision.remove],
                "keep": [{"id": v.id, "reasons": why} for v, why in self.decision.keep]}


def plan_forget(versions: list[VersionInfo], policy: Policy, now_ns: int | None = None,
                group_by: Iterable[str] = GROUP_BY_DEFAULT) -> list[ForgetGroup]:
    now = time.time_ns() if now_ns is None else now_ns
    return [ForgetGroup(g, apply([Version(v.name, v.time_ns, tuple(v.tags)) for v in g.versions], policy, now))
            for g in group_versions(versions, group_by)]


def forget_versions(repo: Repository, names: list[str]) -> None:
    for name in names:
        repo.delete_version(name)
    if names:
        repo.drop_unused_contents()


# ---- prune: what is used, and the plan ------------------------------------------------------

@dataclass
class VolumeUse:
    name: str
    size: int
    live_blocks: int
    live_bytes: int
    dead_bytes: int         # stored bytes of blocks recorded in this volume that no version uses

    @property
    def unused_share(self) -> float:
        return self.dead_bytes / self.size if self.size else 0.0


@dataclass
class PrunePlan:
    delete: list[VolumeUse] = field(default_factory=list)     # no live block: deleted whole
    repack: list[VolumeUse] = field(default_factory=list)     # live blocks copied out, then deleted
    kept: int = 0
    orphans: list[tuple[str, int]] = field(default_factory=list)   # remote leftovers: (object, size)
    unindexed: list[tuple[str, int]] = field(default_factory=list)  # volumes without index object: (name, size)
    # versions recorded as forgotten, still stored: kept (Repository.listed_though_forgotten), named
    unfinished_forgets: list[str] = field(default_factory=list)
    orphan_tags: list[str] = field(default_factory=list)  # tag records of versions that are gone
    young: int = 0          # volumes and leftovers left alone for now: younger than leftover_age()

    @property
    def bytes_to_move(self) -> int:
        return sum(v.live_bytes for v in self.repack)

    @property
    def bytes_freed(self) -> int:
        """About: deleted volumes and orphans, and what repacking leaves behind."""
        return (sum(v.size for v in self.delete) + sum(v.size - v.live_bytes for v in self.repack)
                + sum(size for _, size in self.orphans))

    def as_json(self) -> dict:
        return {"volumes_to_delete": len(self.delete), "volumes_to_repack": len(self.repack),
                "volumes_kept": self.kept, "orphans": [name for name, _ in self.orphans],
                "volumes_without_index": [volume_object(name) for name, _ in self.unindexed],
                "unfinished_forgets": [version_object(name) for name in self.unfinished_forgets],
                "too_young": self.young,
                "bytes_to_move": self.bytes_to_move, "bytes_freed": self.bytes_freed}


def volume_use(repo: Repository) -> list[VolumeUse]:
    """How much of each recorded volume the remaining versions use: every block they use is
    marked first (`catalog.usage.mark_used_blocks`), in one pass over the distinct contents."""
    mark_used_blocks(repo.catalog)
    rows = volume_usage(repo.catalog)
    return [VolumeUse(*row) for row in rows]


def _leftovers(repo: Repository, plan: PrunePlan, age: float) -> None:
    """The plan's orphans and unindexed volumes, those older than `age` (younger ones are
    counted in `plan.young`). Orphans: index objects of volumes that are gone and not recorded.
    Unindexed: volumes without an index object (a backup or prune interrupted between the two).
    Only safe while no backup is writing (the exclusive lock).

    An unindexed volume is not deleted on the listing's word (a listing of index/ that lacks it
    may be what is wrong): `Prune` reads its own table and deletes it only when none of its
    blocks is used, else adopts it."""
    volumes = repo.list_stored(Kind.VOLUME)
    indexes = repo.list_stored(Kind.INDEX)
    recorded = volume_names(repo.catalog)
    for name, index in sorted(indexes.items()):
        if name not in volumes and name not in recorded:
            if index.older_than(age):
                plan.orphans.append((index_object(name), index.size))
            else:
                plan.young += 1
    for name, volume in sorted(volumes.items()):
        if name not in indexes:
            if volume.older_than(age):
                plan.unindexed.append((name, volume.size))
            else:
                plan.young += 1


def plan_prune(repo: Repository, max_unused: float = DEFAULT_MAX_UNUSED) -> PrunePlan:
    """What prune would do. Refused while a version object does not read, and while a version is
    gone without having been forgotten (until the user accepts it): their blocks would look unused,
    and prune would delete the data of a version that may yet be repaired, or put back (one a
    machine without delete rights hid, as a B2 key with writeFiles alone may)."""
    for obj in repo.unreadable_versions():
        raise CorruptObject(obj, "does not read, so prune cannot tell which data it uses; run 'fsbackup check', "
                                 "then 'fsbackup repair --remove-damaged' before pruning")
    for gone in repo.vanished_versions():
        raise ListingContradiction(f"version {gone.name[:8]} is gone from the repository without having been "
                                   "forgotten, and prune would delete its data: find out why ('fsbackup check'; "
                                   "on B2 it may be hidden: docs/append-only.md), put it back, or accept the loss "
                                   "with --accept-missing")
    age = leftover_age()
    plan = PrunePlan(unfinished_forgets=repo.listed_though_forgotten(),
                     orphan_tags=[name for name, _ in orphan_tag_records(repo.catalog)])
    _leftovers(repo, plan, age)
    if not repo.accept_missing and not any_version(repo.catalog) and any_volume(repo.catalog):
        # Forget never removes the last version: no version at all beside stored data is a listing
        # to distrust (a versions/ folder moved away, on a machine whose index had nothing to compare).
        raise ListingContradiction("the repository lists no version objects (versions/) but holds data: prune "
                                   "would delete all of it; check that the repository's folders are all there "
                                   "and readable; if every version was removed on purpose, run prune again "
                                   "with --accept-missing")
    stored = repo.list_stored(Kind.VOLUME)
    for use in volume_use(repo):
        if use.live_blocks == 0:
            if use.name in stored and not stored[use.name].older_than(age):
                plan.young += 1         # maybe a stopped backup's, which the next backup uses
            else:
                plan.delete.append(use)
        elif use.unused_share > max_unused:
            plan.repack.append(use)
        else:
            plan.kept += 1
    return plan


# ---- prune: doing it ------------------------------------------------------------------------

@dataclass
class PruneStats:
    volumes_deleted: int = 0
    volumes_repacked: int = 0
    volumes_written: int = 0
    orphans_deleted: int = 0
    partial_uploads_deleted: int = 0     # temporaries of puts a stopped run never finished
    partial_upload_bytes: int = 0        # (counted in bytes_deleted too)
    blocks_moved: int = 0
    bytes_deleted: int = 0
    bytes_written: int = 0
    duration: float = 0.0

    def as_json(self) -> dict:
        return {**self.__dict__, "bytes_freed": self.bytes_deleted - self.bytes_written,
                "duration": round(self.duration, 3)}


class Prune:
    def __init__(self, repo: Repository, volume_size: int = DEFAULT_VOLUME_SIZE, reporter: Reporter | None = None,
                 again: str = "fsbackup prune"):
        self.repo = repo
        self.again = again          # the command that finishes a prune stopped for want of space
        self.volume_size = volume_size
        self.progress = (reporter or SILENT).progress()
        self.stats = PruneStats()
        self.writer: VolumeWriter | None = None
        self.emptied: list[VolumeUse] = []     # repacked volumes whose live blocks are all in `writer` or stored

    def run(self, plan: PrunePlan) -> PruneStats:
        """Carry out `plan`, made by `plan_prune` on this repository just before (its marks of the
        used blocks are read again here). Everything that only deletes comes first, repacking
        (which writes) last: on a full disk the deletions make the room, and a repack that finds
        none raises NoSpace saying how to go on, with every version intact."""
        started = time.monotonic()
        self.progress.start("prune", total_bytes=plan.bytes_to_move or None,
                            total_items=len(plan.orphans) + len(plan.unindexed) + len(plan.delete)
                            + len(plan.repack))
        partial, partial_bytes = self.repo.remove_partial_uploads()
        self.stats.partial_uploads_deleted += partial
        self.stats.partial_upload_bytes += partial_bytes
        self.stats.bytes_deleted += partial_bytes
        for obj, size in plan.orphans:
            self.repo.delete_object(*parse_object_name(obj))
            self.stats.orphans_deleted += 1
            self.stats.bytes_deleted += size
            self.progress.advance(items=1)
        # (a forget stopped between deleting a version and its tag records: they set nothing now)
        self.repo.delete_tag_records(plan.orphan_tags)
        self.stats.orphans_deleted += len(plan.orphan_tags)
        for use in plan.delete:
            self._delete(use)
        for name, size in plan.unindexed:
            self._settle_unindexed(name, size)
        try:
            with ThreadPoolExecutor(max(1, self.repo.connections), thread_name_prefix="fsbackup-prune") as pool:
                for use in plan.repack:
                    self._repack(use, pool)
            self._flush()
        except NoSpace as e:
            # What a stopped repack leaves is what a crash would (the module's docstring): the old
            # volumes still hold their blocks, a new volume stored without its index object is
            # deleted by the next prune.
            freed = self.stats.bytes_deleted - self.stats.bytes_written
            raise NoSpace(f"{e}: prune stopped while repacking; every version is intact, "
                          f"{human_bytes(max(0, freed))} freed so far; run `{self.again}` again once there is room "
                          f"(forget more versions first if need be), or `{self.again} --max-unused 100%`, which only "
                          "deletes and needs no room") from None
        self.progress.finish()
        self.stats.duration = time.monotonic() - started
        return self.stats

    def _settle_unindexed(self, name: str, size: int) -> None:
        """A volume without index object, judged by its own table: deleted when no remaining
        version needs any of its blocks from it (unused, or stored in a recorded volume too: a
        repack stopped before recording its new volume), else adopted. A volume whose table does
        not read is deleted, as the next backup would (no block of it can be found without it)."""
        try:
            entries = self.repo.read_volume_table(name, size)
        except CorruptObject:
            entries = []
        ids = [e.id for e in entries]
        live = any_needed_unrecorded(self.repo.catalog, ids)
        if live:
            self.repo.adopt_volume(name, size, entries)
        else:
            self.repo.delete_object(Kind.VOLUME, name)
            self.stats.orphans_deleted += 1
            self.stats.bytes_deleted += size
        self.progress.advance(items=1)

    def _delete(self, use: VolumeUse) -> None:
        self.repo.delete_volume(use.name)
        self.stats.volumes_deleted += 1
        self.stats.bytes_deleted += use.size
        self.progress.advance(items=1)

    def _repack(self, use: VolumeUse, pool: ThreadPoolExecutor) -> None:
        """Copy the volume's live blocks into the open new volume; the old one is deleted once
        every block it gave is stored and recorded in a new volume. Each block is fetched with
        one range read, authenticated and checked against its id, then encoded anew under the
        new volume's key. Memory: this volume's live blocks and the one new volume."""
        live = live_blocks(self.repo.catalog, use.name)
        fetched = pool.map(self._fetch_run, block_runs(live, MAX_RUN_BYTES))
        for block_id, data in (block for run in fetched for block in run):
            if self.writer is None:
                self.writer = VolumeWriter(self.repo)
            stored, plain_len = wire.encode_block(self.writer.cipher, block_id, data)
            self.writer.add(block_id, stored, plain_len)
            self.stats.blocks_moved += 1
            self.progress.advance(nbytes=len(stored))
            if self.writer.offset >= self.volume_size - wire.HEADER_LEN:
                self._flush()
        self.emptied.append(use)
        self.stats.volumes_repacked += 1
        self.progress.advance(items=1)

    def _fetch_run(self, run: list) -> list[tuple[bytes, bytes]]:
        """Blocks lying back to back, fetched with one range read, each authenticated and checked;
        a live block that cannot be had stops the prune (its volume stays)."""
        fetched = self.repo.fetch_run(run)
        blocks = []
        for block_id, _ in run:
            block = fetched[block_id]
            if isinstance(block, FsbackupError):
                raise block
            blocks.append((block_id, block))
        return blocks

    def _flush(self) -> None:
        """Store and record the new volume (its blocks now point there), then delete the old
        volumes it emptied."""
        vol, self.writer = self.writer, None
        if vol is not None and vol.entries:
            self.stats.bytes_written += vol.seal_and_store(self.repo)
            self.repo.record_volume(vol.name, vol.stored_size, vol.entries, moved=True)
            self.stats.volumes_written += 1
        for use in self.emptied:
            self.repo.delete_volume(use.name)
            self.stats.bytes_deleted += use.size
        self.emptied = []


def repository_size(repo: Repository) -> int:
    """Bytes of every object on the remote (for summaries and tests)."""
    return repo.stored_bytes()

