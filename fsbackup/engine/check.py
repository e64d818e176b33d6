"""Verification of a repository, shared by `fsbackup check`, verify-after-backup and `repair`, and
repair itself (below).

Two depths, as in Duplicati and restic:
  structure  every version object authenticates; every index object authenticates and names a volume
             that exists with the size it records; every block a version uses is in some index object;
             the local index agrees with the remote (and catches up with what other runs stored).
  read data  whole volumes are downloaded: every block authenticates and matches its keyed id, and
             the volume's own table agrees with its index object.
Each damaged object becomes a `Problem` carrying the blocks it makes unavailable; `affected` maps
those blocks to the versions and paths that use them, through the local index.
"""
from __future__ import annotations

import math
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

from ..catalog.blocks import block_ids_in_order, blocks_in_volume, forget_places, volume_holding, volume_sizes
from ..catalog.tree import node_path
from ..catalog.usage import content_extents, nodes_using, used_extents
from ..catalog.versions import orphan_tag_records, version_names, version_names_by_id
from ..codec import wire
from ..errors import CorruptObject, NoSuchObject
from ..progress import SILENT, Reporter
from ..repository import (
    Kind,
    Repository,
    index_object,
    tag_object,
    unfinished_forget,
    version_object,
    volume_object,
)

PATHS_SHOWN = 20          # paths listed per damaged object and version; the rest are counted


@dataclass
class Problem:
    object: str                                        # the remote object at fault
    what: str                                          # one line: what is wrong with it
    blocks: set[bytes] = field(default_factory=set)    # blocks it makes unavailable
    version: str | None = None                         # a version object that does not read
    volume: str | None = None                          # the volume this is about, if any
    repairable: bool = False                           # `repair` fixes it without losing data
    affected: dict[str, dict] = field(default_factory=dict)   # version name -> {"count", "paths"}

    def as_json(self) -> dict:
        return {"object": self.object, "problem": self.what, "repairable": self.repairable,
                "unavailable_blocks": len(self.blocks), "version": self.version,
                "affected": self.affected}


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    versions: int = 0
    volumes: int = 0
    volumes_read: int = 0
    bytes_read: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict:
        return {"ok": self.ok, "versions": self.versions, "volumes": self.volumes,
                "volumes_read": self.volumes_read, "bytes_read": self.bytes_read,
                "problems": [p.as_json() for p in self.problems]}


# ---- choosing volumes to read ---------------------------------------------------------------

class Part(NamedTuple):
    """--read-data-subset n/m: the n-th of m deterministic parts of the volumes."""
    n: int
    m: int


class Percent(NamedTuple):
    """--read-data-subset P%: a random P percent of the volumes."""
    percent: float


def parse_subset(text: str) -> Part | Percent:
    """'n/m' (a deterministic part) or 'P%' (a random part); ValueError when neither."""
    text = text.strip()
    if text.endswith("%"):
        percent = float(text[:-1])
        if not 0 < percent <= 100:
            raise ValueError(text)
        return Percent(percent)
    n, m = (int(x) for x in text.split("/"))
    if not 1 <= n <= m:
        raise ValueError(text)
    return Part(n, m)


def select_volumes(names: list[str], subset: str | None, rng: random.Random | None = None) -> list[str]:
    """The volumes a read-data pass reads: all (subset None); for 'n/m' those whose name, read as a
    number (names are random, so this is a hash), is n-1 modulo m, so m runs with n = 1..m read
    every volume once; for 'P%' a random P percent (at least one)."""
    names = sorted(names)
    if subset is None:
        return names
    chosen = parse_subset(subset)
    if isinstance(chosen, Part):
        return [name for name in names if int(name[:16], 16) % chosen.m == chosen.n - 1]
    if not names:
        return []
    count = max(1, math.ceil(len(names) * chosen.percent / 100))
    return sorted((rng or random.SystemRandom()).sample(names, count))


# ---- the checker ----------------------------------------------------------------------------

class Checker:
    def __init__(self, repo: Repository, reporter: Reporter | None = None):
        self.repo = repo
        self.reporter = reporter or SILENT
        self.progress = self.reporter.progress()
        self.report = Report()
        self.index_entries: dict[str, list[wire.BlockEntry]] = {}   # decoded index objects, by volume
        self.volume_sizes: dict[str, int] = {}                     # remote listing, by volume name
        self.index_names: set[str] = set()                         # volumes with an index object
        self.unreadable: set[str] = set()                          # volumes whose index object does not read

    def add(self, problem: Problem) -> None:
        self.report.problems.append(problem)

    # ---- structure ----

    def structure(self, trusted: bool = False) -> None:
        """`trusted`: the local index was just rebuilt from these very objects (repair), so the index
        and version objects it holds are not downloaded again; listings and references still are."""
        repo, catalog = self.repo, self.repo.catalog
        if not repo.catalog_is_built():
            repo.rebuild_catalog(self.progress, keep_going=True)   # damaged objects are reported below
        self.volume_sizes = repo.list_objects(Kind.VOLUME)
        self.index_names = set(repo.list_objects(Kind.INDEX))
        local_volumes = volume_sizes(catalog)
        local_versions = version_names(catalog)
        listed = set(repo.list_objects(Kind.VERSION))
        # Versions removed by another run are dropped (those gone without a forget, remembered).
        repo.follow_remote_versions(local_versions, listed)
        remote_versions = sorted(listed)
        for name in sorted(repo.forgotten_names(listed)):
            self.reporter.warn(unfinished_forget(name))
        to_read = sorted(self.index_names - set(local_volumes)) if trusted else sorted(self.index_names)
        versions_to_read = [n for n in remote_versions if not (trusted and n in local_versions)]
        self._start("checking structure", len(to_read) + len(versions_to_read))
        self._check_index_objects(local_volumes, to_read)
        if trusted:
            self._check_sizes(local_volumes)
        for name in sorted(set(local_volumes) - self.index_names - self._follow_prunes(local_volumes)):
            self._index_object_missing(name)
        for name in sorted(set(self.volume_sizes) - self.index_names - set(local_volumes)):
            self._index_object_missing(name)      # e.g. a backup cut off between its two uploads
        for name in versions_to_read:
            self._check_version(name, known=name in local_versions)
        for name, _ in repo.vanished_versions():
            self.add(Problem(version_object(name), "the version is gone without having been forgotten (deleted "
                             "outside fsbackup, or lost); if that was meant, accept it with --accept-missing"))
        self._check_tag_records()
        self._check_references()
        self.report.versions = len(remote_versions)
        self.report.volumes = len(self.volume_sizes)
        self._finish()

    def _follow_prunes(self, local_volumes: dict[str, int]) -> set[str]:
        """Volumes of the local index gone from the repository with their index objects, whose
        blocks that versions need are all held by other volumes too (new index objects, just
        recorded, name them): a prune's work, maybe another machine's, that repacked a volume or
        removed copies of blocks two backups running at once both stored. They are forgotten as a
        sync forgets them, not reported."""
        gone = set(local_volumes) - self.index_names - set(self.volume_sizes)
        if not gone:
            return set()
        pruned = gone - self.repo.volumes_needed_alone(gone)
        self.repo.forget_vanished_volumes(pruned)
        if pruned:
            self.reporter.note(f"{len(pruned)} volume(s) this machine knew were removed by a prune (each block a "
                               "version needs from them is held by another volume): forgotten")
        return pruned

    def _check_sizes(self, local_volumes: dict[str, int]) -> None:
        """Volumes recorded in the local index against the remote listing (trusted structure)."""
        for name, size in local_volumes.items():
            if name not in self.index_names:
                continue                              # reported as a missing index object
            remote_size = self.volume_sizes.get(name)
            if remote_size is None:
                self.add(Problem(volume_object(name), "volume is missing", set(self._local_blocks(name)), volume=name))
            elif remote_size != size:
                self.add(Problem(volume_object(name), f"volume has {remote_size} bytes, its index object says "
                                 f"{size}", set(self._local_blocks(name)), volume=name))

    def _check_index_objects(self, local_volumes: dict[str, int], names: list[str]) -> None:
        """Index objects are small: they are downloaded and decoded in threads, recorded here."""
        def decode(name: str):
            try:
                return name, self.decode_index(name), None
            except (CorruptObject, NoSuchObject) as e:
                return name, None, e

        with ThreadPoolExecutor(max(2, self.repo.connections)) as pool:
            for name, decoded, error in pool.map(decode, names):
                self._advance()
                if error is not None:
                    self.unreadable.add(name)
                    self.add(Problem(index_object(name), f"{error}", set(self._local_blocks(name)),
                                     volume=name, repairable=name in self.volume_sizes))
                    continue
                size, entries = decoded
                self.index_entries[name] = entries
                remote_size = self.volume_sizes.get(name)
                ids = {e.id for e in entries}
                if remote_size is None:
                    self.add(Problem(volume_object(name), "volume is missing", ids, volume=name))
                elif remote_size != size or local_volumes.get(name, size) != size:
                    self.add(Problem(volume_object(name), f"volume has {remote_size} bytes, its index object "
                                     f"says {size}", ids, volume=name))
                elif name not in local_volumes:
                    self.repo.record_volume(name, size, entries)   # stored by another run since

    def _index_object_missing(self, name: str) -> None:
        if name in self.volume_sizes:
            self.add(Problem(index_object(name), "index object is missing (repair re-creates it from its volume)",
                             set(self._local_blocks(name)), volume=name, repairable=True))
        else:
            self.add(Problem(volume_object(name), "volume and its index object are missing",
                             set(self._local_blocks(name)), volume=name))

    def _check_version(self, name: str, known: bool) -> None:
        try:
            head, entries = self.repo.load_version(name)
            if known:
                for _ in entries:                  # every entry must parse and check, not only authenticate
                    pass
            else:
                self.repo.record_version(name, head, entries)
        except (CorruptObject, NoSuchObject) as e:
            self.add(Problem(version_object(name), str(e), version=name))
        self._advance()

    def _check_tag_records(self) -> None:
        """Every tag record authenticates (a damaged one is skipped by every sync: its version keeps
        the tags it had)."""
        for name in sorted(self.repo.list_objects(Kind.TAGS)):
            try:
                self.repo.load_tag_record(name)
            except NoSuchObject:
                pass                              # superseded and deleted since the listing
            except CorruptObject as e:
                self.add(Problem(tag_object(name), f"{e}; the tags it sets are not applied (a new 'fsbackup "
                                 "tag --set' of that version replaces it)"))

    def _check_references(self) -> None:
        """Blocks that versions use but no index object of an existing volume lists (beyond those
        already blamed on a damaged object)."""
        blamed = set().union(*(p.blocks for p in self.report.problems)) if self.report.problems else set()
        used: set[bytes] = set()
        # (contents no version uses any more are left behind by removed versions: skipped)
        for extents in used_extents(self.repo.catalog):
            used.update(wire.extent_ids(extents))
        used.discard(wire.HOLE_ID)
        used -= blamed
        # A merge of two sorted streams: the used ids, and the blocks table in key order.
        missing: set[bytes] = set()
        stored = block_ids_in_order(self.repo.catalog)
        current = next(stored, None)
        for block_id in sorted(used):
            while current is not None and current < block_id:
                current = next(stored, None)
            if current != block_id:
                missing.add(block_id)
        if missing:
            self.add(Problem(Kind.INDEX.folder, f"{len(missing)} block(s) used by versions are in no index object "
                             f"of a stored volume", missing))

    def _local_blocks(self, volume: str) -> list[bytes]:
        return blocks_in_volume(self.repo.catalog, volume)

    def entries_of(self, name: str) -> list[wire.BlockEntry]:
        if name not in self.index_entries:
            self.index_entries[name] = self.decode_index(name)[1]
        return self.index_entries[name]

    def decode_index(self, name: str) -> tuple[int, list[wire.BlockEntry]]:
        return self.repo.load_index_object(name)

    # ---- read data ----

    def read_data(self, subset: str | None = None, first: list[str] | None = None, count: int | None = None) -> None:
        """Download and verify volumes: `subset` of all (select_volumes), or `first` and then random
        others up to `count` volumes (verify after backup)."""
        names = [n for n in self.volume_sizes if n in self.index_names and n not in self.unreadable]
        if count is None:
            chosen = select_volumes(names, subset)
        else:
            first = [n for n in (first or []) if n in names]
            rest = [n for n in names if n not in set(first)]
            random.shuffle(rest)
            chosen = (first + rest)[:count]
        total = sum(self.volume_sizes[n] for n in chosen)
        self.progress.start("reading data", total_bytes=total, total_items=len(chosen))
        with ThreadPoolExecutor(max(2, self.repo.connections)) as pool:
            for problems in pool.map(self.verify_volume, chosen):
                for p in problems:
                    self.add(p)
        self.report.volumes_read += len(chosen)
        self.report.bytes_read += total
        self._finish()

    def verify_volume(self, name: str) -> list[Problem]:
        """Download volume `name` whole and verify every block and its table (worker threads)."""
        obj = volume_object(name)
        try:
            expected = self.entries_of(name)
        except (CorruptObject, NoSuchObject) as e:
            return [Problem(index_object(name), str(e), volume=name, repairable=True)]
        found: list[Problem] = []

        def decode(data: bytes) -> None:
            found[:] = self._volume_problems(name, data, expected)
            if found:
                raise CorruptObject(obj, found[0].what)   # so get_checked downloads it once more

        try:
            self.repo.read_checked(Kind.VOLUME, name, decode)
        except NoSuchObject:
            found[:] = [Problem(obj, "volume is missing", {e.id for e in expected}, volume=name)]
        except CorruptObject:
            pass
        self.progress.advance(items=1, nbytes=self.volume_sizes.get(name, 0))
        return found

    def _volume_problems(self, name: str, data: bytes, expected: list[wire.BlockEntry]) -> list[Problem]:
        obj = volume_object(name)
        problems = []
        try:
            table = wire.open_volume_table(self.repo.keys, bytes.fromhex(name), data, obj)
            # repair --remove-damaged may drop entries from the index object; never add or move them
            if not set(expected) <= set(table):
                problems.append(Problem(obj, "its table does not match its index object", volume=name))
        except CorruptObject as e:
            problems.append(Problem(obj, f"its table is damaged ({e}); its blocks are read through its "
                                    f"index object", volume=name))
        cipher = self.repo.block_cipher(name)
        bad = set()
        for entry in expected:
            try:
                stored = data[entry.offset:entry.offset + entry.stored_length]
                wire.decode_block(self.repo.keys, cipher, entry.id, stored, entry.plain_length, obj)
            except CorruptObject:
                bad.add(entry.id)
        if bad:
            problems.insert(0, Problem(obj, f"{len(bad)} of {len(expected)} block(s) are damaged", bad, volume=name))
        return problems

    # ---- what the damage affects ----

    def explain(self) -> Report:
        """Fill in each problem's affected versions and paths from the local index."""
        versions = version_names_by_id(self.repo.catalog)
        for p in self.report.problems:
            if p.volume is not None and p.blocks:
                p.blocks = self._stored_only_there(p.blocks, p.volume)
            if p.version is not None:
                p.affected[p.version] = {"count": None, "paths": ["(the whole version: its object does not read)"]}
            for vid, node_ids in self.nodes_using(self.contents_using(p.blocks)).items():
                p.affected[versions[vid]] = {"count": len(node_ids),
                                             "paths": [self.path_of(vid, n) for n in node_ids[:PATHS_SHOWN]]}
        return self.report

    def _stored_only_there(self, blocks: set[bytes], volume: str) -> set[bytes]:
        """Of `blocks` in a damaged `volume`, those the index does not place in another volume."""
        elsewhere = set()
        for block_id in blocks:
            holder = volume_holding(self.repo.catalog, block_id)
            if holder is not None and holder != volume:
                elsewhere.add(block_id)
        return blocks - elsewhere

    def contents_using(self, blocks: set[bytes]) -> list[int]:
        """Ids of the contents with an extent in `blocks`: one pass over the packed extents."""
        if not blocks:
            return []
        return [cid for cid, extents in content_extents(self.repo.catalog)
                if any(block_id in blocks for block_id, _ in wire.unpack_extents(extents))]

    def nodes_using(self, content_ids: list[int]) -> dict[int, list[int]]:
        """version id -> node ids of the files whose content is one of `content_ids`."""
        return nodes_using(self.repo.catalog, content_ids)

    def path_of(self, version_id: int, node_id: int) -> str:
        return node_path(self.repo.catalog, version_id, node_id).decode("utf-8", "surrogateescape")

    # ---- progress ----

    def _start(self, label: str, total: int) -> None:
        self.progress.start(label, total_items=total)

    def _advance(self) -> None:
        self.progress.advance(items=1)

    def _finish(self) -> None:
        self.progress.finish()


def check(repo: Repository, read_data: bool = False, subset: str | None = None,
          reporter: Reporter | None = None) -> Report:
    checker = Checker(repo, reporter)
    checker.structure()
    if read_data or subset:
        checker.read_data(subset)
    return checker.explain()


def verify_backup(repo: Repository, version: str, new_volumes: dict[str, int], samples: int = 1,
                  percent: float = 0.0, reporter: Reporter | None = None) -> Report:
    """Verify after backup: the new volumes and their index objects are listed with the sizes
    written, the new version object reads, and `samples` volumes (or `percent` of all, if more) are
    downloaded and verified, this backup's own first, then random older ones."""
    checker = Checker(repo, reporter)
    checker.volume_sizes = repo.list_objects(Kind.VOLUME)
    checker.index_names = set(repo.list_objects(Kind.INDEX))
    for name, size in new_volumes.items():
        listed = checker.volume_sizes.get(name)
        if listed is None:
            checker.add(Problem(volume_object(name), "volume is missing right after upload", volume=name))
        elif listed != size:
            checker.add(Problem(volume_object(name), f"volume has {listed} bytes, {size} were written", volume=name))
        if name not in checker.index_names:
            checker.add(Problem(index_object(name), "index object is missing right after upload", volume=name))
    checker._check_version(version, known=True)
    count = max(samples, math.ceil(len(checker.volume_sizes) * percent / 100))
    if count:
        candidates = [n for n in new_volumes if n in checker.index_names and n in checker.volume_sizes]
        checker.read_data(first=candidates, count=count)
    return checker.explain()


# ---- repair -------------------------------------------------------------------------------------
#
# Repair: what `fsbackup repair` does after rebuilding the local index.
#
#   settle leftovers           (before the rebuild) what stopped runs left, once older than
#                              locks.leftover_age(): Repository.settle_leftovers
#   re-create index objects    a volume whose index object is missing or damaged still holds its own
#                              encrypted table: the index object is written again from it.
#   remove damaged files       (--remove-damaged) each version using unavailable blocks is written again
#                              without those files (the new object first, then the old one is deleted);
#                              the damaged blocks leave their volume's index object so that the next
#                              backup stores them again; an index object whose volume is gone is deleted.
# Nothing is removed silently: every removed path is told to the reporter.


@dataclass
class RepairResult:
    rebuilt: dict                       # what the rebuild of the local index found (Repository.rebuild_catalog)
    recreated: list[str]                # volumes whose index object was written again
    report: Report                      # the damage found after that (and left, unless removed)
    removed: dict[str, list[str]]       # version -> paths removed from it (--remove-damaged)
    settled: list[str]                  # what was done with stopped runs' leftovers, one note each

    def as_json(self) -> dict:
        return {**self.rebuilt, "recreated_index_objects": [index_object(n) for n in self.recreated],
                "report": self.report.as_json(), "removed": self.removed, "leftovers": self.settled}


def repair(repo: Repository, read_data: bool, subset: str | None, remove: bool,
           reporter: Reporter | None = None) -> RepairResult:
    """What `fsbackup repair` does, under its exclusive lock: what stopped runs left is settled
    first (`Repository.settle_leftovers`: backups no longer do it, as they share their lock)."""
    reporter = reporter or SILENT
    settled = repo.settle_leftovers()
    for note in settled:
        reporter.note(note)
    result = repo.rebuild_catalog(reporter.progress(), keep_going=True)
    reporter.info(f"rebuilt the local index: {result['versions']} versions, {result['volumes']} volumes")
    # Under the exclusive lock no tag changes run, and the catalog was just rebuilt: a tag record
    # whose version it lacks, and the repository does not list (a damaged version keeps its
    # tags), was left by a forget that stopped.
    repo.follow_tag_records()
    listed = set(repo.list_objects(Kind.VERSION))
    orphan_tags = [name for name, version in orphan_tag_records(repo.catalog) if version not in listed]
    if orphan_tags:
        repo.delete_tag_records(orphan_tags)
        settled.append(f"removed {len(orphan_tags)} tag record(s) of versions that are gone")
    checker = Checker(repo, reporter)
    checker.structure(trusted=True)      # the objects the rebuild just read are not read again
    recreated = []
    for name in [p.volume for p in checker.report.problems
                 if p.repairable and p.volume is not None and p.object.startswith(Kind.INDEX.folder)]:
        try:
            repo.adopt_volume(name, checker.volume_sizes[name],
                              repo.read_volume_table(name, checker.volume_sizes[name]))
        except CorruptObject as e:       # its table is damaged too: the index object stays reported
            reporter.warn(f"cannot re-create {index_object(name)} from its volume: {e}")
            continue
        recreated.append(name)
        reporter.info(f"re-created {index_object(name)} from its volume")
    if recreated:                        # look again, now that those volumes are recorded
        checker = Checker(repo, reporter)
        checker.structure(trusted=True)
    if read_data or subset:
        checker.read_data(subset)
    report = checker.explain()
    removed = remove_damaged(repo, checker, reporter) if remove else {}
    return RepairResult(result, recreated, report, removed, settled)


def remove_damaged(repo: Repository, checker: Checker, reporter: Reporter) -> dict[str, list[str]]:
    """Remove every file using an unavailable block from the versions holding it, and unreadable
    version objects. Returns {old version name: removed paths}."""
    report = checker.report
    removed: dict[str, list[str]] = {}
    for p in report.problems:
        if p.version is not None:
            repo.delete_version(p.version, why="repair")
            reporter.info(f"removed version {p.version[:8]}: its object does not read, so all its files are lost")
            removed[p.version] = ["(the whole version)"]
    unavailable = set().union(*(p.blocks for p in report.problems)) if report.problems else set()
    if not unavailable:
        return removed
    versions = version_names_by_id(repo.catalog)
    for vid, node_ids in checker.nodes_using(checker.contents_using(unavailable)).items():
        name = versions[vid]
        removed[name] = rewrite_version(repo, name, set(node_ids))
        for path in removed[name]:
            reporter.info(f"removed from version {name[:8]}: {path}")
    _forget_blocks(repo, checker, unavailable)
    return removed


def rewrite_version(repo: Repository, name: str, drop: set[int]) -> list[str]:
    """Store version `name` again without the entries at positions `drop` (files: leaves of the
    tree), then delete the old object. Returns the removed paths."""
    head, entries = repo.load_version(name)
    kept, removed, new_id = [], [], {0: 0}
    paths: dict[int, bytes] = {}
    dropped_size = 0
    for old_id, e in enumerate(entries, start=1):
        parent_path = paths.get(e[wire.E_PARENT], b"")
        paths[old_id] = path = b"/" if old_id == 1 else parent_path.rstrip(b"/") + b"/" + bytes(e[wire.E_NAME])
        if old_id in drop:
            removed.append(path.decode("utf-8", "surrogateescape"))
            dropped_size += e[wire.E_CONTENT][1] if e[wire.E_CONTENT] else 0
            continue
        e = list(e)
        e[wire.E_PARENT] = new_id[e[wire.E_PARENT]]
        kept.append(e)
        new_id[old_id] = len(kept)
    head = dict(head, file_count=head["file_count"] - len(removed), total_size=head["total_size"] - dropped_size,
                repaired_from=name)
    new_name = repo.store_version(head, kept)          # the new object first: a crash keeps both
    repo.record_version(new_name, head, kept)
    repo.delete_version(name, why="repair")
    return removed


def _forget_blocks(repo: Repository, checker: Checker, unavailable: set[bytes]) -> None:
    """Drop unavailable blocks from their volumes' index objects and from the local index, so a
    later backup stores those blocks again instead of deduplicating against damage."""
    for p in checker.report.problems:
        if p.volume is None or not p.blocks:
            continue
        if p.volume not in checker.volume_sizes:      # the volume is gone: so goes its index object
            repo.delete_object(Kind.INDEX, p.volume)
            keep: list[wire.BlockEntry] = []
        else:
            size, entries = checker.decode_index(p.volume)
            keep = [e for e in entries if e.id not in unavailable]
            repo.store_index_object(p.volume, size, keep)
        if not keep:
            repo.unrecord_volume(p.volume)
            continue
        forget_places(repo.catalog, p.volume, p.blocks)


def summary(report: Report) -> list[str]:
    """One line per version that uses damaged or missing data."""
    lines = []
    by_version: dict[str, int | None] = {}
    for p in report.problems:
        for version, hit in p.affected.items():
            count = hit["count"]
            by_version[version] = None if count is None or by_version.get(version, 0) is None \
                else by_version.get(version, 0) + count
    for version, count in sorted(by_version.items()):
        lines.append(f"version {version[:8]}: " + ("its object does not read" if count is None
                                                     else f"{count} file(s) use damaged or missing data"))
    return lines
