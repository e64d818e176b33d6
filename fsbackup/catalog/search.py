"""Questions across versions, answered by the catalog alone (nothing is downloaded): `find`
(entries by name, place, time and size in many versions) and `diff` (what changed between two
versions).

Each is one statement over the nodes of every version it concerns, not a walk in Python: `find`
picks the matching entries of all its versions in one pass over their nodes (by the primary key,
version by version) and builds the paths of those matches only, going up their parents (one
primary-key step each), or below a path walks down from that path's node in each version
(`nodes_by_name`); `diff` builds both trees' paths going down from the top (`nodes_by_name`),
pairs them by path and returns only the entries that differ.
"""
from __future__ import annotations

import json
import os
from typing import NamedTuple

from ..errors import PathNotFound
from .connection import Catalog
from .schema import node_time
from .tree import ROOT_ID, Node, VersionTree, node_from_row
from .versions import VersionInfo

_INT64_MIN, _INT64_MAX = -2**63, 2**63 - 1


class FindQuery(NamedTuple):
    """What `find` looks for: a name glob (SQLite's GLOB: *, ?, [...], [^...], case-sensitive, on
    the name alone), entries at or below `under` (an absolute path; '/' for everywhere), an mtime
    in [newer_ns, older_ns) and a size in [min_size, max_size] (None: unbounded)."""
    pattern: str
    under: bytes = b"/"
    newer_ns: int | None = None
    older_ns: int | None = None
    min_size: int | None = None
    max_size: int | None = None


class Found(NamedTuple):
    version: VersionInfo
    path: bytes
    type: str
    size: int
    mtime_ns: int

    def as_json(self) -> dict:
        return {"version": self.version.name, "short_id": self.version.short_id,
                "version_time_ns": self.version.time_ns, "path": os.fsdecode(self.path), "type": self.type,
                "size": self.size, "mtime_ns": self.mtime_ns}


# Everywhere: the matches of every version asked about (json_each of their row ids: one
# primary-key range each), then their paths, one parent up per step, each a primary-key lookup.
FIND = """
WITH RECURSIVE hit(version, id, up, type, size, mtime_ns, path) AS (
    SELECT version, id, parent, type, size, mtime_ns, CAST(x'2f' || name AS BLOB) FROM nodes
    WHERE version IN (SELECT value FROM json_each(?1)) AND id > 1 AND CAST(name AS TEXT) GLOB ?2
      AND size BETWEEN ?3 AND ?4 AND mtime_ns >= ?5 AND mtime_ns < ?6
  UNION ALL
    SELECT hit.version, hit.id, n.parent, hit.type, hit.size, hit.mtime_ns, CAST(x'2f' || n.name || hit.path AS BLOB)
    FROM hit CROSS JOIN nodes n ON n.version = hit.version AND n.id = hit.up
    WHERE hit.up > 1
)
SELECT version, type, size, mtime_ns, path FROM hit WHERE up <= 1 ORDER BY version, path
"""

# Below a path: down from that path's node in each version ([version, node] pairs of ?1), one
# directory's children per step (`nodes_by_name`, named: SQLite would otherwise scan the whole
# version at each step), so only the entries below it are read.
FIND_BELOW = """
WITH RECURSIVE below(version, id, type, size, mtime_ns, name, path) AS (
    SELECT n.version, n.id, n.type, n.size, n.mtime_ns, n.name, CAST(?7 AS BLOB)
    FROM json_each(?1) j CROSS JOIN nodes n
      ON n.version = json_extract(j.value, '$[0]') AND n.id = json_extract(j.value, '$[1]')
  UNION ALL
    SELECT n.version, n.id, n.type, n.size, n.mtime_ns, n.name, CAST(below.path || '/' || n.name AS BLOB)
    FROM below CROSS JOIN nodes n INDEXED BY nodes_by_name ON n.version = below.version AND n.parent = below.id
)
SELECT version, type, size, mtime_ns, path FROM below
WHERE CAST(name AS TEXT) GLOB ?2 AND size BETWEEN ?3 AND ?4 AND mtime_ns >= ?5 AND mtime_ns < ?6
ORDER BY version, path
"""


def find(catalog: Catalog, versions: list[VersionInfo], query: FindQuery) -> list[Found]:
    """The entries of `versions` that `query` matches, by version (in the order given), then path."""
    by_id = {v.id: v for v in versions}
    bounds = (query.pattern, 0 if query.min_size is None else query.min_size,
              _INT64_MAX if query.max_size is None else query.max_size,
              _INT64_MIN if query.newer_ns is None else query.newer_ns,
              _INT64_MAX if query.older_ns is None else query.older_ns)
    if query.under == b"/":
        rows = catalog.rows(FIND, (json.dumps(list(by_id)), *bounds)) if by_id else []
    else:
        tops = []
        for v in versions:                 # (a few lookups per version: the path's components)
            try:
                tops.append([v.id, VersionTree(catalog, v).resolve(query.under).id])
            except PathNotFound:
                continue
        rows = catalog.rows(FIND_BELOW, (json.dumps(tops), *bounds, query.under)) if tops else []
    order = {v.id: i for i, v in enumerate(versions)}
    found = [Found(by_id[vid], bytes(path), typ, size, node_time(mtime)) for vid, typ, size, mtime, path in rows]
    found.sort(key=lambda f: order[f.version.id])          # (stable: paths stay in order)
    return found


class Change(NamedTuple):
    """One path that differs between two versions: `kind` is 'added', 'removed', 'modified' (the
    type, the content, a symlink's target or a device number differs) or 'metadata' (only what
    `changed` names: mode, owner, mtime, xattrs). `before`/`after` are the nodes (None where absent)."""
    kind: str
    path: bytes
    before: Node | None
    after: Node | None
    changed: tuple[str, ...] = ()

    def as_json(self) -> dict:
        node = self.after or self.before
        assert node is not None
        doc: dict = {"path": os.fsdecode(self.path), "type": node.type,
               "size": self.after.size if self.after else None,
               "size_before": self.before.size if self.before else None}
        if self.kind == "metadata":
            doc["changed"] = list(self.changed)
        return doc


_NODE = ("{t}.id, {t}.parent, {t}.name, {t}.type, {t}.mode, {t}.uid, {t}.gid, {t}.user, {t}.grp, {t}.mtime_ns, "
         "{t}.atime_ns, {t}.ctime_ns, {t}.size, {t}.ino, {t}.dev, {t}.nlink, {t}.rdev, {t}.target, {t}.xattrs, "
         "{t}.content, NULL")
_NODE_WIDTH = 21

# Both trees' paths going down from the top (`nodes_by_name`: CROSS JOIN keeps SQLite from
# scanning a whole version at each step), paired by path; only the pairs that differ come back,
# with both nodes and their contents' hashes.
DIFF = f"""
WITH RECURSIVE
a(id, path) AS (
    SELECT ?2, CAST(?3 AS BLOB) WHERE ?2 IS NOT NULL
  UNION ALL
    SELECT n.id, CAST(a.path || '/' || n.name AS BLOB) FROM a CROSS JOIN nodes n ON n.version = ?1 AND n.parent = a.id
),
b(id, path) AS (
    SELECT ?5, CAST(?3 AS BLOB) WHERE ?5 IS NOT NULL
  UNION ALL
    SELECT n.id, CAST(b.path || '/' || n.name AS BLOB) FROM b CROSS JOIN nodes n ON n.version = ?4 AND n.parent = b.id
),
pairs(path, aid, bid) AS (
    SELECT a.path, a.id, b.id FROM a LEFT JOIN b ON b.path = a.path
  UNION ALL
    SELECT b.path, NULL, b.id FROM b WHERE NOT EXISTS (SELECT 1 FROM a WHERE a.path = b.path)
)
SELECT p.path, {_NODE.format(t="x")}, {_NODE.format(t="y")}, cx.hash, cy.hash
FROM pairs p
LEFT JOIN nodes x ON x.version = ?1 AND x.id = p.aid
LEFT JOIN nodes y ON y.version = ?4 AND y.id = p.bid
LEFT JOIN contents cx ON cx.id = x.content
LEFT JOIN contents cy ON cy.id = y.content
WHERE p.aid IS NULL OR p.bid IS NULL OR x.type != y.type OR x.content IS NOT y.content OR x.target IS NOT y.target
   OR x.rdev != y.rdev OR x.mode != y.mode OR x.uid != y.uid OR x.gid != y.gid OR x.user IS NOT y.user
   OR x.grp IS NOT y.grp OR x.mtime_ns != y.mtime_ns OR x.xattrs IS NOT y.xattrs
ORDER BY p.path
"""

_METADATA = (("mode", "mode"), ("uid", "owner"), ("gid", "group"), ("user", "owner"), ("grp", "group"),
             ("mtime_ns", "mtime"), ("xattrs_packed", "xattrs"))


def diff(catalog: Catalog, before: VersionInfo, before_top: int | None, after: VersionInfo, after_top: int | None,
         top_path: bytes) -> list[Change]:
    """What changed from version `before` to `after` at and below `top_path` (whose node is
    `before_top` in one and `after_top` in the other; None where it does not exist), by path."""
    start = b"" if top_path == b"/" else top_path
    changes = []
    for row in catalog.rows(DIFF, (before.id, before_top, start, after.id, after_top)):
        path = bytes(row[0]) or b"/"
        x = _node(row[1:1 + _NODE_WIDTH])
        y = _node(row[1 + _NODE_WIDTH:1 + 2 * _NODE_WIDTH])
        hash_x, hash_y = row[-2], row[-1]
        if x is None:
            changes.append(Change("added", path, None, y))
        elif y is None:
            changes.append(Change("removed", path, x, None))
        elif x.type != y.type or hash_x != hash_y or x.target != y.target or x.rdev != y.rdev:
            changes.append(Change("modified", path, x, y))
        else:
            changed = tuple(dict.fromkeys(what for field, what in _METADATA if getattr(x, field) != getattr(y, field)))
            if changed:
                changes.append(Change("metadata", path, x, y, changed))
    return changes


def _node(row) -> Node | None:
    """The node of one side of a diff's row; None when that side has none (an outer join's NULLs)."""
    return node_from_row(row) if row[0] is not None else None


__all__ = ["Change", "FindQuery", "Found", "ROOT_ID", "diff", "find"]
