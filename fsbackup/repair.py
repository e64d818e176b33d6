"""Repair: what `fsbackup repair` does after rebuilding the local index.

  re-create index objects    a volume whose index object is missing or damaged still holds its own
                             encrypted table: the index object is written again from it.
  remove damaged files       (--remove-damaged) each version using unavailable blocks is written again
                             without those files (the new object first, then the old one is deleted);
                             the damaged blocks leave their volume's index object so that the next
                             backup stores them again; an index object whose volume is gone is deleted.
Nothing is removed silently: every removed path is told to the reporter.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import format as fmt
from .catalog.blocks import forget_places
from .catalog.versions import version_names_by_id
from .check import Checker, Report
from .errors import CorruptObject
from .progress import SILENT, Reporter
from .repository import Kind, Repository, index_object, volume_object


@dataclass
class RepairResult:
    rebuilt: dict                       # what the rebuild of the local index found (Repository.rebuild_index)
    recreated: list[str]                # volumes whose index object was written again
    report: Report                      # the damage found after that (and left, unless removed)
    removed: dict[str, list[str]]       # version -> paths removed from it (--remove-damaged)

    def as_json(self) -> dict:
        return {**self.rebuilt, "recreated_index_objects": [index_object(n) for n in self.recreated],
                "report": self.report.as_json(), "removed": self.removed}


def repair(repo: Repository, read_data: bool, subset: str | None, remove: bool,
           reporter: Reporter | None = None) -> RepairResult:
    """What `fsbackup repair` does, under its exclusive lock."""
    reporter = reporter or SILENT
    result = repo.rebuild_index(reporter.progress(), keep_going=True)
    reporter.info(f"rebuilt the local index: {result['versions']} versions, {result['volumes']} volumes")
    checker = Checker(repo, reporter)
    checker.structure(trusted=True)      # the objects the rebuild just read are not read again
    recreated = []
    for name in [p.volume for p in checker.report.problems if p.repairable and p.object.startswith(Kind.INDEX.folder)]:
        try:
            recreate_index_object(repo, name)
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
    return RepairResult(result, recreated, report, removed)


def recreate_index_object(repo: Repository, name: str) -> None:
    """Write index/<name> again from volume <name>'s own table, and record the volume."""
    obj = volume_object(name)
    volume_id = bytes.fromhex(name)
    size, entries = repo.read_checked(Kind.VOLUME, name, lambda data: (
        len(data), fmt.open_volume_table(repo.keys, volume_id, data, obj)))
    repo.adopt_volume(name, size, entries)


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
    versions = version_names_by_id(repo.index)
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
    kept, removed, new_id, paths = [], [], {0: 0}, {}
    dropped_size = 0
    for old_id, e in enumerate(entries, start=1):
        parent_path = paths.get(e[fmt.E_PARENT], b"")
        paths[old_id] = path = b"/" if old_id == 1 else parent_path.rstrip(b"/") + b"/" + bytes(e[fmt.E_NAME])
        if old_id in drop:
            removed.append(path.decode("utf-8", "surrogateescape"))
            dropped_size += e[fmt.E_CONTENT][1] if e[fmt.E_CONTENT] else 0
            continue
        e = list(e)
        e[fmt.E_PARENT] = new_id[e[fmt.E_PARENT]]
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
            keep: list[fmt.BlockEntry] = []
        else:
            size, entries = checker.decode_index(p.volume)
            keep = [e for e in entries if e.id not in unavailable]
            repo.store_index_object(p.volume, size, keep)
        if not keep:
            repo.unrecord_volume(p.volume)
            continue
        forget_places(repo.index, p.volume, p.blocks)


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
