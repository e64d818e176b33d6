"""Changing the tags of stored versions (`fsbackup tag`).

A version object is never written again (docs/format.md), so a version's tags change through a
tag record: a small object, `tags/<new random name>`, holding the version's whole new set of
tags and a generation one above that of the newest record of that version the local index knows
(docs/format.md "Tag records"). The order keeps every crash harmless: the new record is stored
first, and only then are the records it supersedes deleted. Interrupted between the two, the
version has its new tags (its newest record wins on every machine) and the older records linger,
to be deleted by the next change of that version's tags (or its forget). The version object
itself is never touched, so no step can lose it.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..catalog.versions import VersionInfo, tag_records_of
from ..repository import Repository


@dataclass(frozen=True)
class TagChange:
    """What to do to each version's tags: `set` replaces them (when not None), then `add` and
    `remove` apply."""
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    set: tuple[str, ...] | None = None

    def applied(self, tags: list[str]) -> list[str]:
        """`tags` changed, in a stable order (the old ones first, then the added ones)."""
        base = list(self.set) if self.set is not None else list(tags)
        result = [t for t in dict.fromkeys(base + list(self.add)) if t not in self.remove]
        return result


@dataclass(frozen=True)
class TagResult:
    version: VersionInfo
    before: list[str]
    after: list[str]

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def as_json(self) -> dict:
        return {"id": self.version.name, "before": self.before, "after": self.after, "changed": self.changed}


def change_tags(repo: Repository, versions: list[VersionInfo], change: TagChange,
                dry_run: bool = False) -> list[TagResult]:
    """Apply `change` to each of `versions` (as the local index knows them, just synced): a
    version whose tags it leaves as they are gets no record."""
    results = []
    for v in versions:
        result = TagResult(v, list(v.tags), change.applied(v.tags))
        results.append(result)
        if not result.changed or dry_run:
            continue
        older = tag_records_of(repo.catalog, v.name)
        generation = max((r.generation for r in older), default=0) + 1
        repo.store_tag_record(v.name, result.after, generation)
        repo.delete_tag_records([r.name for r in older])
    return results
