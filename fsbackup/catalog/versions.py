"""Versions in the catalog: the list users see (`list_versions`, `resolve_version`, both through a
`VersionFilter`), recording a stored version and its tree (`record_version`: the nodes and the
contents they share), forgetting one, the tag records that change a version's tags, and this
machine's memory of versions that vanished without a forget."""
from __future__ import annotations

import itertools
import json
import os
import socket
from dataclasses import dataclass
from typing import Iterable, NamedTuple

import apsw
import blake3
import msgpack

from ..codec import wire
from ..codec.names import version_object
from ..errors import CorruptObject, VersionNotFound
from .connection import Catalog
from .schema import catalog_time

NODE_BATCH = 5000          # entries inserted with one executemany while a version is recorded
LAYOUT_BATCH = 500         # layouts bound in one `IN (...)` query


@dataclass(frozen=True, slots=True)
class VersionInfo:
    id: int
    name: str
    time_ns: int
    host: str
    paths: list[str]
    tags: list[str]            # its newest tag record's, else its header's
    file_count: int
    total_size: int
    bytes_added: int
    description: str | None = None

    @property
    def short_id(self) -> str:
        return self.name[:8]

    def as_json(self) -> dict:
        return {"id": self.name, "short_id": self.short_id, "time_ns": self.time_ns, "host": self.host,
                "paths": self.paths, "tags": self.tags, "file_count": self.file_count,
                "total_size": self.total_size, "bytes_added": self.bytes_added, "description": self.description}


# A version's tags: those of its newest tag record (largest generation, then time, then name), else
# its header's (docs/format.md "Tag records").
_TAGS = ("COALESCE((SELECT t.tags FROM tag_records t WHERE t.version = versions.name "
         "ORDER BY t.generation DESC, t.time_ns DESC, t.name DESC LIMIT 1), versions.tags)")
VERSION_COLUMNS = f"id, name, time_ns, host, paths, {_TAGS}, file_count, total_size, bytes_added, description"


def _version(row) -> VersionInfo:
    vid, name, time_ns, host, paths, tags, files, size, added, description = row
    return VersionInfo(vid, name, time_ns, host, json.loads(paths), json.loads(tags), files, size, added,
                       description)


@dataclass(frozen=True)
class VersionFilter:
    """Which versions a command works on (--host, --tag, --path; docs/machines.md "Choosing
    versions"), as restic chooses snapshots. A version matches when its host is one of `hosts`,
    it carries every tag of one of `tag_sets` (`--tag a,b` is one set: both; `--tag a --tag b`
    two: either), and its paths are exactly `paths`; an empty field matches every version."""
    hosts: frozenset[str] = frozenset()
    tag_sets: tuple[frozenset[str], ...] = ()
    paths: frozenset[str] = frozenset()

    @classmethod
    def of(cls, hosts: Iterable[str] = (), tags: Iterable[str] = (), paths: Iterable[str] = ()) -> "VersionFilter":
        """The filter of the options as given: `tags` holds comma-separated sets, `paths` are made
        absolute and normalised as backup records them."""
        return cls(frozenset(hosts), tuple(frozenset(t for t in spec.split(",") if t) for spec in tags),
                   frozenset(os.path.abspath(p) for p in paths))

    def matches(self, v: VersionInfo) -> bool:
        return ((not self.hosts or v.host in self.hosts)
                and (not self.tag_sets or any(wanted <= set(v.tags) for wanted in self.tag_sets))
                and (not self.paths or set(v.paths) == self.paths))

    def is_empty(self) -> bool:
        return not (self.hosts or self.tag_sets or self.paths)

    def on_host(self, host: str) -> "VersionFilter":
        """This filter, or when it names no host, this filter for versions of `host` alone."""
        return self if self.hosts else VersionFilter(frozenset((host,)), self.tag_sets, self.paths)

    def describe(self) -> str:
        """The filter as a user gave it ('host a, tag x,y, paths /p'), for messages."""
        said = []
        if self.hosts:
            said.append(("host " if len(self.hosts) == 1 else "hosts ") + " or ".join(sorted(self.hosts)))
        if self.tag_sets:
            said.append("tag " + " or ".join(",".join(sorted(t)) for t in self.tag_sets))
        if self.paths:
            said.append("paths " + " ".join(sorted(self.paths)))
        return ", ".join(said) or "any version"


EVERY_VERSION = VersionFilter()


def list_versions(catalog: Catalog, chosen: VersionFilter = EVERY_VERSION) -> list[VersionInfo]:
    """Every version `chosen` matches, oldest first."""
    versions = [_version(r) for r in catalog.rows(f"SELECT {VERSION_COLUMNS} FROM versions ORDER BY time_ns, name")]
    return versions if chosen.is_empty() else [v for v in versions if chosen.matches(v)]


GROUP_BY_DEFAULT = ("host", "paths")


@dataclass(frozen=True)
class VersionGroup:
    """Versions that share the fields grouped by (`group_versions`): None for a field not grouped by."""
    host: str | None
    paths: list[str] | None
    tags: list[str] | None
    versions: list[VersionInfo]

    def key_json(self) -> dict:
        """The fields grouped by, as --json shows a group."""
        return {k: v for k, v in (("host", self.host), ("paths", self.paths), ("tags", self.tags)) if v is not None}

    def title(self) -> str:
        """The group in a line: 'host a, paths /x /y, tags t'."""
        said = [f"host {self.host}"] if self.host is not None else []
        if self.paths is not None:
            said.append("paths " + " ".join(self.paths))
        if self.tags is not None:
            said.append("tags " + (",".join(self.tags) or "(none)"))
        return ", ".join(said) or "every version"


def group_versions(versions: list[VersionInfo], by: Iterable[str] = GROUP_BY_DEFAULT) -> list[VersionGroup]:
    """`versions` (oldest first) in groups of equal host, paths and/or tags (those of `by`; paths
    and tags compared as sets), each group's versions oldest first, the groups ordered by their
    fields."""
    by = set(by)
    groups: dict[tuple, list[VersionInfo]] = {}
    for v in versions:
        key = (v.host if "host" in by else None, tuple(sorted(v.paths)) if "paths" in by else None,
               tuple(sorted(set(v.tags))) if "tags" in by else None)
        groups.setdefault(key, []).append(v)
    return [VersionGroup(host, list(paths) if paths is not None else None, list(tags) if tags is not None else None,
                         members)
            for (host, paths, tags), members in sorted(groups.items(), key=lambda kv: repr(kv[0]))]


def version_hosts(catalog: Catalog) -> list[str]:
    """The hosts that have versions, sorted."""
    return [host for (host,) in catalog.rows("SELECT DISTINCT host FROM versions ORDER BY host")]


def latest_version(catalog: Catalog, chosen: VersionFilter, this_host: str) -> VersionInfo:
    """What 'latest' means (docs/machines.md "Choosing versions"): the newest version `chosen`
    matches, of `this_host` unless `chosen` names hosts. VersionNotFound says which hosts have
    versions when none of this host does."""
    scoped = chosen.on_host(this_host)
    if len(scoped.hosts) == 1 and not scoped.tag_sets and not scoped.paths:
        # (the common case, answered by one step down `versions_by_host`)
        row = catalog.row(f"SELECT {VERSION_COLUMNS} FROM versions WHERE host=? ORDER BY time_ns DESC, name DESC "
                          "LIMIT 1", tuple(scoped.hosts))
        if row is not None:
            return _version(row)
    else:
        matching = list_versions(catalog, scoped)
        if matching:
            return matching[-1]
    hosts = version_hosts(catalog)
    if not hosts:
        raise VersionNotFound("the repository has no versions yet; run 'fsbackup backup PATH' first")
    if not chosen.hosts and this_host not in hosts:
        raise VersionNotFound(f"'latest' is the newest version of this host, {this_host}, which has none; versions "
                              f"exist of host(s) {', '.join(hosts)}: give --host NAME")
    raise VersionNotFound(f"no version matches {scoped.describe()}; see 'fsbackup versions'")


def resolve_version(catalog: Catalog, spec: str, chosen: VersionFilter = EVERY_VERSION,
                    this_host: str | None = None) -> VersionInfo:
    """A version by full id, unambiguous id prefix, or 'latest' (`latest_version`: of `this_host`,
    default this machine's host name). An id is taken as it is, whatever `chosen` says."""
    if spec == "latest":
        return latest_version(catalog, chosen, this_host or default_host())
    spec_l = spec.lower()
    if not spec_l or any(c not in "0123456789abcdef" for c in spec_l):
        raise VersionNotFound(f"'{spec}' is not a version id or 'latest'; see 'fsbackup versions'")
    rows = catalog.rows(f"SELECT {VERSION_COLUMNS} FROM versions WHERE name >= ? AND name < ? ORDER BY name LIMIT 2",
                      (spec_l, spec_l + "g"))
    if not rows:
        raise VersionNotFound(f"no version with id {spec}; see 'fsbackup versions'")
    if len(rows) > 1:
        raise VersionNotFound(f"version id {spec} is ambiguous; give more digits (see 'fsbackup versions')")
    return _version(rows[0])


class VersionSpec(NamedTuple):
    """A VERSION[:SUBPATH] argument: the version (what `resolve_version` takes) and the path in
    it, absolute, or None when none was given."""
    version: str
    subpath: str | None


def split_version_spec(text: str) -> VersionSpec:
    """'latest:/home/alice/Documents' -> ('latest', '/home/alice/Documents'); '3f2a9c1e' ->
    ('3f2a9c1e', None). The split is at the first ':' (a version id, an id prefix and 'latest'
    hold none); a SUBPATH without a leading '/' is taken from the version's root. ValueError
    (saying what is wrong, for a usage error) when the ':' has nothing on one side."""
    version, colon, subpath = text.partition(":")
    if not colon:
        return VersionSpec(text, None)
    if not version:
        raise ValueError(f"'{text}' names no version before ':' (e.g. latest:/home/alice/Documents)")
    if not subpath:
        raise ValueError(f"'{text}' names no path after ':' (e.g. {version}:/home/alice/Documents)")
    return VersionSpec(version, subpath if subpath.startswith("/") else "/" + subpath)


def default_host() -> str:
    """This machine's host name: what backup records, and whose versions 'latest' means."""
    return socket.gethostname()


def version_names(catalog: Catalog) -> set[str]:
    """The names of every recorded version."""
    return {name for (name,) in catalog.rows("SELECT name FROM versions")}


def version_names_by_id(catalog: Catalog) -> dict[int, str]:
    """Row id -> name of every recorded version."""
    return {vid: name for vid, name in catalog.rows("SELECT id, name FROM versions")}


def any_version(catalog: Catalog) -> bool:
    """Whether any version is recorded."""
    return catalog.row("SELECT 1 FROM versions LIMIT 1") is not None


def record_version(catalog: Catalog, name: str, head: dict, entries: Iterable[list],
                   content_ids: dict[bytes, int] | None = None, version_id: int | None = None) -> int:
    """Record a stored version and its tree in one transaction. Returns the version's row id:
    `version_id` (a rebuild keeps a version's id) or a new one no version ever had.
    `content_ids` (extents -> row id) is every contents row there is, kept across calls by a
    rebuild: a content not in it is new, and nothing needs looking up.

    The header and every entry are checked as they are recorded (`wire.TreeCheck`): a version
    that fails raises CorruptObject naming its object and leaves nothing recorded (nor in
    `content_ids`)."""
    obj = version_object(name)
    head = wire.check_head(head, obj)
    entries = wire.checked_entries(entries, obj)
    known_contents = len(content_ids) if content_ids is not None else 0
    try:
        with catalog.transaction() as db:
            # Another process syncing the same index (a mount, a second command) may have recorded
            # it meanwhile: the version is the same object, so its rows are too.
            row = db.execute("SELECT id FROM versions WHERE name=?", (name,)).fetchone()
            if row:
                return row[0]
            if version_id is None:
                version_id = catalog.allocate_ids(db, "versions")
            description = head.get("description")
            db.execute("INSERT INTO versions(id, name, time_ns, host, paths, tags, file_count, total_size, "
                       "bytes_added, description) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (version_id, name, head["time_ns"], head["host"], json.dumps(head["paths"]),
                        json.dumps(head["tags"]), head["file_count"], head["total_size"], head["bytes_added"],
                        description if isinstance(description, str) else None))
            batch: list[list] = []
            node_id = 0
            for e in entries:
                batch.append(e)
                if len(batch) >= NODE_BATCH:
                    node_id = _record_nodes(catalog, db, obj, version_id, node_id, batch, content_ids)
                    batch.clear()
            _record_nodes(catalog, db, obj, version_id, node_id, batch, content_ids)
    except CorruptObject:
        if content_ids is not None:        # the rows they name were rolled back
            for extents in list(itertools.islice(content_ids, known_contents, None)):
                del content_ids[extents]
        raise
    return version_id


def _record_nodes(catalog: Catalog, db, obj: str, version_id: int, last_node_id: int, entries: list[list],
                  content_ids: dict[bytes, int] | None) -> int:
    """Insert a batch of a version's checked entries (nodes last_node_id+1...) and the contents
    rows they need; returns the last node id. One query looks a batch's contents up, not one each."""
    known = content_ids if content_ids is not None else {}
    new: dict[bytes, list] = {}                       # extents -> content, not yet in the index
    for e in entries:
        content = e[wire.E_CONTENT]
        if content is not None and content[2] not in known:
            new[content[2]] = content
    layouts = {extents: blake3.blake3(extents).digest() for extents in new}
    if content_ids is None and new:
        by_layout = {layout: extents for extents, layout in layouts.items()}
        wanted = list(by_layout)
        for i in range(0, len(wanted), LAYOUT_BATCH):
            part = wanted[i:i + LAYOUT_BATCH]
            for content_id, layout in db.execute(
                    f"SELECT id, layout FROM contents WHERE layout IN ({','.join('?' * len(part))})", part):
                extents = by_layout[layout]
                known[extents] = content_id
                del new[extents]
    if new:
        # Ids are handed out here (the transaction holds the write lock): one executemany.
        next_id = catalog.allocate_ids(db, "contents", len(new))
        content_rows = []
        for content_id, (extents, (content_hash, size, _)) in enumerate(new.items(), start=next_id):
            known[extents] = content_id
            content_rows.append((content_id, layouts[extents], content_hash, size, _stored_bytes(size, extents),
                                 extents))
        db.executemany("INSERT INTO contents(id, layout, hash, size, stored, extents) VALUES (?, ?, ?, ?, ?, ?)",
                       content_rows)
    rows = []
    for node_id, e in enumerate(entries, start=last_node_id + 1):
        content = e[wire.E_CONTENT]
        xattrs = msgpack.packb(e[wire.E_XATTRS]) if e[wire.E_XATTRS] else None
        row = [version_id, node_id, *e[:wire.E_XATTRS], xattrs, known[content[2]] if content is not None else None]
        for i in NODE_TIMES:
            row[i] = catalog_time(row[i])
        rows.append(row)
    try:
        db.executemany(INSERT_NODE, rows)
    except apsw.ConstraintError:
        raise CorruptObject(obj, "two entries of one directory have the same name") from None
    return last_node_id + len(entries)


def _stored_bytes(size: int, extents: bytes) -> int:
    """Bytes of a content's data extents: its size less its holes."""
    if wire.HOLE_ID not in extents:      # (a false match only costs the exact sum)
        return size
    return sum(length for block_id, length in wire.unpack_extents(extents) if block_id != wire.HOLE_ID)


NODE_TIMES = tuple(2 + i for i in (wire.E_MTIME, wire.E_ATIME, wire.E_CTIME))   # their places in an INSERT_NODE row
INSERT_NODE = ("INSERT INTO nodes(version, id, parent, name, type, mode, uid, gid, user, grp, mtime_ns, atime_ns, "
               "ctime_ns, size, ino, dev, nlink, rdev, target, xattrs, content) "
               "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def unrecord_version(catalog: Catalog, name: str) -> None:
    """Forget version `name` and its tree (its contents stay: `drop_unused_contents`)."""
    with catalog.transaction() as db:
        row = db.execute("SELECT id FROM versions WHERE name=?", (name,)).fetchone()
        if row:
            db.execute("DELETE FROM nodes WHERE version=?", row)
            db.execute("DELETE FROM versions WHERE id=?", row)


def drop_unused_contents(catalog: Catalog) -> None:
    """Forget file contents no recorded version refers to any more (after versions are removed)."""
    with catalog.transaction() as db:
        db.execute("DELETE FROM contents WHERE id NOT IN (SELECT content FROM nodes WHERE content IS NOT NULL)")


class TagRecord(NamedTuple):
    """A tag record (`tags/<name>`, docs/format.md "Tag records"): the whole set of tags of version
    `version` from its writing on, unless a record of that version with a larger (generation,
    time_ns, name) is listed."""
    name: str
    version: str
    generation: int
    time_ns: int
    tags: list[str]


def tag_record_names(catalog: Catalog) -> set[str]:
    """The names of the tag records the catalog mirrors."""
    return {name for (name,) in catalog.rows("SELECT name FROM tag_records")}


def tag_records_of(catalog: Catalog, version: str) -> list[TagRecord]:
    """The tag records of version `version` the catalog mirrors, the newest last."""
    return [TagRecord(name, v, gen, t, json.loads(tags)) for name, v, gen, t, tags in catalog.rows(
        "SELECT name, version, generation, time_ns, tags FROM tag_records WHERE version=? "
        "ORDER BY generation, time_ns, name", (version,))]


def orphan_tag_records(catalog: Catalog) -> list[tuple[str, str]]:
    """(record name, version) of the tag records the catalog mirrors whose version it does not
    hold (left by a forget that stopped between deleting a version and deleting its records)."""
    return [(name, version) for name, version in catalog.rows(
        "SELECT name, version FROM tag_records WHERE version NOT IN (SELECT name FROM versions) ORDER BY name")]


def follow_tag_records(catalog: Catalog, added: Iterable[TagRecord], gone: Iterable[str]) -> None:
    """Mirror tag records stored (`added`) and deleted (`gone`, by name), in one transaction."""
    with catalog.transaction() as db:
        db.executemany("INSERT OR REPLACE INTO tag_records(name, version, generation, time_ns, tags) "
                       "VALUES (?, ?, ?, ?, ?)",
                       [(r.name, r.version, r.generation, r.time_ns, json.dumps(r.tags)) for r in added])
        db.executemany("DELETE FROM tag_records WHERE name=?", [(name,) for name in gone])


class VanishedVersion(NamedTuple):
    """A version this machine saw vanish from the repository without a forget."""
    name: str
    time_ns: int | None        # when it was made (None when this machine never recorded it)


def remember_vanished(catalog: Catalog, names: Iterable[str], now_ns: int, accept_all: bool) -> None:
    """Remember versions `names` as vanished, noticed at `now_ns`, in one transaction;
    `accept_all` then forgets every vanished version (the user accepted the loss)."""
    with catalog.transaction() as db:
        for name in names:
            row = db.execute("SELECT time_ns FROM versions WHERE name=?", (name,)).fetchone()
            db.execute("INSERT OR IGNORE INTO vanished_versions(name, time_ns, noticed_ns) VALUES (?, ?, ?)",
                       (name, row[0] if row else None, now_ns))
        if accept_all:
            db.execute("DELETE FROM vanished_versions")


def vanished_versions(catalog: Catalog) -> list[VanishedVersion]:
    """The versions this machine saw vanish without a forget (not yet accepted), oldest first."""
    return [VanishedVersion._make(row)
            for row in catalog.rows("SELECT name, time_ns FROM vanished_versions ORDER BY time_ns, name")]
