"""A path's history across versions, read from the catalog: what the mount's `history/` shows.

A path is found in every version at once with one query: a recursive walk that starts at the
root of each version asked about and takes one component per step through the index
`nodes_by_name` (version, parent, name), so its cost is (versions) x (components) index probes,
whatever the size of the versions' trees; nothing else is read. The components are split inside
SQLite: a name holds no `/` (wire.TreeCheck), so the path travels as one BLOB.

Which versions count is the caller's: it passes their row ids (the mount passes those it shows,
so a filter, or a version recorded since it last read the list, is honoured).
"""
from __future__ import annotations

import json
from typing import NamedTuple

from .connection import Catalog
from .tree import NODE_COLUMNS, ROOT_ID, Node, node_from_row

# The node at a path in each version: `walk` ends, for each version that has the whole path,
# with a row whose `rest` is empty. ?1: the versions' row ids (a JSON array); ?2: the path's
# components, each followed by a `/` (empty for the root).
_WALK = f"""
WITH RECURSIVE walk(wv, wid, rest) AS (
    SELECT value, {ROOT_ID}, ?2 FROM json_each(?1)
    UNION ALL
    SELECT n.version, n.id, substr(w.rest, instr(w.rest, x'2f') + 1)
    FROM walk w JOIN nodes n ON n.version = w.wv AND n.parent = w.wid
         AND n.name = substr(w.rest, 1, instr(w.rest, x'2f') - 1)
    WHERE length(w.rest) > 0
),
found(wv, wid) AS (SELECT wv, wid FROM walk WHERE length(rest) = 0)
"""

# A POSIX access ACL, as its xattr's name appears in a node's packed xattrs (a value holding these
# bytes makes a false match, which only makes a history folder stricter).
_ACCESS_ACL = b"system.posix_acl_access"

# What the versions that have a name hold there, summed up (see PathSummary). `bits` are the
# permission bits of each node as a folder's: for a non-directory, read also grants search (so
# whoever may read the file may list its contents in history/). Each permission bit is kept only
# when every version grants it: the sum of the nine minimums.
_BITS = "CASE WHEN n.type = 'd' THEN n.mode & 511 ELSE (n.mode & 292) | ((n.mode & 292) >> 2) END"
_EVERY_VERSION_GRANTS = " + ".join(f"min(bits & {1 << k})" for k in range(9))
_SUMMARY = f"""
SELECT name, min(uid), min(gid), {_EVERY_VERSION_GRANTS},
       min(uid) = max(uid) AND min(gid) = max(gid), coalesce(max(acl), 0),
       max(type = 'd'), max(type != 'd')
FROM (SELECT n.name AS name, n.uid AS uid, n.gid AS gid, n.type AS type, {_BITS} AS bits,
             instr(n.xattrs, ?3) > 0 AS acl
      FROM found f CROSS JOIN nodes n ON {{join}})
GROUP BY name
"""


class PathSummary(NamedTuple):
    """What the versions asked about hold at one path, taken together."""
    name: bytes
    uid: int                   # the owner and group (the same in every version when `one_owner`)
    gid: int
    mode_bits: int             # permission bits every version grants (for a non-directory, read counts as search)
    one_owner: bool            # every version has the same owner and group there
    acl: bool                  # some version has a POSIX access ACL there
    has_dir: bool              # a directory in some version
    has_other: bool            # something else (a file, a symlink...) in some version


class PathNode(NamedTuple):
    """A version's node at a path, with its content's hash when it is a regular file."""
    version_id: int
    node: Node
    content_hash: bytes | None


def _components(path: bytes) -> bytes:
    """An absolute path as _WALK takes it: its components, each followed by `/`."""
    parts = [p for p in path.split(b"/") if p]
    return b"".join(p + b"/" for p in parts)


def _summaries(catalog: Catalog, version_ids: list[int], walk_to: bytes, join: str, args: tuple = (),
               where: str = "") -> list[PathSummary]:
    sql = _WALK + _SUMMARY.format(join=join + where) + " ORDER BY name"
    rows = catalog.rows(sql, (json.dumps(version_ids), _components(walk_to), _ACCESS_ACL, *args))
    return [PathSummary(bytes(r[0]), r[1], r[2], r[3], bool(r[4]), bool(r[5]), bool(r[6]), bool(r[7])) for r in rows]


def names_under(catalog: Catalog, version_ids: list[int], path: bytes) -> list[PathSummary]:
    """Every name that is directly under `path` (absolute) in any of the versions, ordered by
    name, each summed up over the versions that have it."""
    return _summaries(catalog, version_ids, path, "n.version = f.wv AND n.parent = f.wid")


def path_summary(catalog: Catalog, version_ids: list[int], path: bytes) -> PathSummary | None:
    """`path` (absolute) summed up over the versions that have it; None when none does. The root's
    name is empty."""
    parent, _, name = path.rstrip(b"/").rpartition(b"/")
    if not name:                                         # the root: every version has one
        found = _summaries(catalog, version_ids, b"/", "n.version = f.wv AND n.id = f.wid")
    else:
        found = _summaries(catalog, version_ids, parent or b"/",
                           "n.version = f.wv AND n.parent = f.wid AND n.name = ?4", (name,))
    return found[0] if found else None


def non_directories_at(catalog: Catalog, version_ids: list[int], path: bytes) -> list[PathNode]:
    """The node at `path` (absolute) in each of the versions where it is not a directory (a
    file, a symlink, a device...), in no particular order."""
    sql = _WALK + (f"SELECT f.wv, {NODE_COLUMNS}, (SELECT hash FROM contents WHERE contents.id = nodes.content) "
                   "FROM found f CROSS JOIN nodes ON nodes.version = f.wv AND nodes.id = f.wid WHERE nodes.type != 'd'")
    return [PathNode(r[0], node_from_row(r[1:-1]), r[-1]) for r in catalog.rows(sql, (json.dumps(version_ids),
                                                                              _components(path)))]
