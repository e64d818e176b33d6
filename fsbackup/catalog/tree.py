"""A version's file tree, read from the catalog: the model the CLI (`ls`, `restore`) and the
mount stand on. Lookups of a name in a directory, ordered resumable directory listings and a
file's extents are each one indexed query; so are the mount's questions about the whole index
(a hard-linked file's inode, whether any node has xattrs, how many nodes there are).
"""
from __future__ import annotations

import os
from typing import Iterator, NamedTuple

import msgpack

from ..codec import wire
from ..errors import PathNotFound
from .connection import Catalog
from .schema import node_time
from .versions import VersionInfo

NODE_FIELDS = ("id", "parent", "name", "type", "mode", "uid", "gid", "user", "grp", "mtime_ns", "atime_ns",
               "ctime_ns", "size", "ino", "dev", "nlink", "rdev", "target", "xattrs", "content")
NODE_COLUMNS = ", ".join(NODE_FIELDS) + ", (SELECT stored FROM contents WHERE contents.id = nodes.content)"
# NODE_COLUMNS then the content's hash, size and extents, over nodes LEFT JOIN contents c
NODE_AND_CONTENT_COLUMNS = ", ".join(f"nodes.{f}" for f in NODE_FIELDS) + ", c.stored, c.hash, c.size, c.extents"
ROOT_ID = 1
CONTENT_BATCH = 500        # ids bound in one `IN (...)` query


class Node(NamedTuple):
    """One entry of a version's tree, as its `nodes` row holds it. (A NamedTuple, not a frozen
    dataclass: a listing makes one per entry, and a frozen dataclass costs six times as much to
    build, a large share of what `find` and `ls -l` cost through the mount.)"""
    id: int
    parent: int
    name: bytes
    type: str
    mode: int
    uid: int
    gid: int
    user: str | None
    grp: str | None
    mtime_ns: int
    atime_ns: int
    ctime_ns: int
    size: int
    ino: int
    dev: int
    nlink: int
    rdev: int
    target: bytes | None
    xattrs_packed: bytes | None
    content: int | None
    stored: int | None          # bytes of the content's data extents (its size less holes)

    @property
    def xattrs(self) -> dict[bytes, bytes]:
        return msgpack.unpackb(self.xattrs_packed) if self.xattrs_packed else {}

    def as_json(self, path: str) -> dict:
        """The node as `ls --json` lists it, at `path` (a node knows only its own name)."""
        return {"path": path, "type": self.type, "mode": self.mode, "uid": self.uid, "gid": self.gid,
                "user": self.user, "group": self.grp, "size": self.size, "mtime_ns": self.mtime_ns,
                "target": os.fsdecode(self.target) if self.target is not None else None}


_TIMES = slice(9, 12)      # mtime_ns, atime_ns, ctime_ns in a NODE_COLUMNS row


def node_from_row(row) -> Node:
    """A node from a NODE_COLUMNS row; times the index holds as BLOBs (catalog_time) become ints.
    (Made once per entry listed: the check is spelled out, a generator costs more than the rest.)"""
    if type(row[9]) is not int or type(row[10]) is not int or type(row[11]) is not int:
        row = list(row)
        row[_TIMES] = [node_time(t) for t in row[_TIMES]]
    return Node._make(row)


class Content(NamedTuple):
    id: int
    hash: bytes
    size: int
    extents: list[tuple[bytes, int]]   # (block id or HOLE_ID, length)


class Listed(NamedTuple):
    """A child in a listing, with its content's row (`ContentRow`) when it is a file."""
    node: Node
    content: ContentRow | None


class ContentRow(NamedTuple):
    """A content as its row holds it: the extents still packed (unpacked only when needed)."""
    id: int
    hash: bytes
    size: int
    packed_extents: bytes

    def unpack(self) -> Content:
        return Content(self.id, self.hash, self.size, wire.unpack_extents(self.packed_extents))


class FileOfNode(NamedTuple):
    """What opening a node needs: its type, and its content when it is a regular file."""
    type: str
    content: Content | None


class VersionTree:
    """One version's file tree."""

    def __init__(self, catalog: Catalog, version: VersionInfo):
        self.catalog = catalog
        self.version = version

    def node(self, node_id: int) -> Node:
        row = self.catalog.row(f"SELECT {NODE_COLUMNS} FROM nodes WHERE version=? AND id=?", (self.version.id, node_id))
        if row is None:
            raise PathNotFound(f"node {node_id} is not in version {self.version.short_id}")
        return node_from_row(row)

    @property
    def root(self) -> Node:
        return self.node(ROOT_ID)

    def lookup(self, parent_id: int, name: bytes) -> Node | None:
        row = self.catalog.row(f"SELECT {NODE_COLUMNS} FROM nodes WHERE version=? AND parent=? AND name=?",
                             (self.version.id, parent_id, name))
        return node_from_row(row) if row else None

    def children(self, parent_id: int, after: int | None = None, limit: int = -1) -> list[Node]:
        """Children ordered by name; `after` (a child's node id) resumes a listing past its name."""
        return [node_from_row(r) for r in self._children_rows(NODE_COLUMNS, parent_id, after, limit)]

    def children_with_contents(self, parent_id: int, after: int | None = None, limit: int = -1) -> list[Listed]:
        """`children`, each with its content (files only), in the same one query."""
        rows = self._children_rows(NODE_AND_CONTENT_COLUMNS, parent_id, after, limit,
                                   "LEFT JOIN contents c ON c.id = nodes.content")
        return [Listed(node_from_row(r[:-3]), ContentRow(r[19], r[-3], r[-2], r[-1]) if r[19] is not None else None)
                for r in rows]

    def _children_rows(self, columns: str, parent_id: int, after: int | None, limit: int, join: str = "") -> list:
        if after is None:
            return self.catalog.rows(f"SELECT {columns} FROM nodes {join} WHERE version=? AND parent=? "
                                "ORDER BY name LIMIT ?", (self.version.id, parent_id, limit))
        return self.catalog.rows(f"SELECT {columns} FROM nodes {join} WHERE version=? AND parent=? AND "
                            "name > (SELECT name FROM nodes WHERE version=? AND id=?) ORDER BY name LIMIT ?",
                            (self.version.id, parent_id, self.version.id, after, limit))

    def resolve(self, path: bytes | str) -> Node:
        """The node at an absolute path inside the version ('/' is the root)."""
        path_b = os.fsencode(path)
        node = self.root
        for part in path_b.split(b"/"):
            if part in (b"", b"."):
                continue
            child = self.lookup(node.id, part)
            if child is None:
                raise PathNotFound(f"{os.fsdecode(path_b)} is not in version {self.version.short_id}")
            node = child
        return node

    def path_of(self, node: Node) -> bytes:
        """The node's absolute path inside the version (`node_path`)."""
        if node.id == ROOT_ID:
            return b"/"
        return node_path(self.catalog, self.version.id, node.parent).rstrip(b"/") + b"/" + node.name

    def walk(self, top: Node, top_path: bytes) -> Iterator[tuple[bytes, Node]]:
        """(path, node) for `top` and everything below it, parents before children, by name."""
        stack = [(top_path, top)]
        while stack:
            path, node = stack.pop()
            yield path, node
            if node.type == "d":
                base = path.rstrip(b"/")
                # (a child never has a smaller id than its parent: wire.TreeCheck; an index recorded
                # before that was checked must not make a walk loop)
                kids = [k for k in self.children(node.id) if k.id > node.id]
                stack.extend((base + b"/" + k.name, k) for k in reversed(kids))

    def _content_rows(self, content_ids: list[int]) -> Iterator[tuple]:
        """(id, hash, size, packed extents) of many contents, in few queries (missing ids left out)."""
        for i in range(0, len(content_ids), CONTENT_BATCH):
            part = content_ids[i:i + CONTENT_BATCH]
            yield from self.catalog.rows("SELECT id, hash, size, extents FROM contents "
                                    f"WHERE id IN ({','.join('?' * len(part))})", part)

    def contents(self, content_ids: list[int]) -> dict[int, Content]:
        """Many contents by id, in few queries (a missing id is left out)."""
        return {r[0]: Content(r[0], r[1], r[2], wire.unpack_extents(r[3])) for r in self._content_rows(content_ids)}

    def content_entries(self, content_ids: list[int]) -> dict[int, list]:
        """Many contents by id as a version entry holds them: [hash, size, packed extents]."""
        return {r[0]: [r[1], r[2], r[3]] for r in self._content_rows(content_ids)}

    def file_contents(self) -> Iterator[tuple[int, ContentRow]]:
        """(node id, content) of every file of the version, by node id (a node id is the entry's
        place in the version object, so two versions stored from one tree pair up by it)."""
        for row in self.catalog.rows("SELECT n.id, c.id, c.hash, c.size, c.extents FROM nodes n "
                                     "JOIN contents c ON c.id = n.content WHERE n.version=? ORDER BY n.id",
                                     (self.version.id,)):
            yield row[0], ContentRow(*row[1:])

    def file(self, node_id: int) -> FileOfNode | None:
        """The node's type and content, in one query (what the mount's open needs); None when the
        version has no such node."""
        row = self.catalog.row("SELECT n.type, c.id, c.hash, c.size, c.extents FROM nodes n "
                             "LEFT JOIN contents c ON c.id = n.content WHERE n.version=? AND n.id=?",
                             (self.version.id, node_id))
        if row is None:
            return None
        content = Content(row[1], row[2], row[3], wire.unpack_extents(row[4])) if row[1] is not None else None
        return FileOfNode(row[0], content)

    def has_xattrs(self) -> bool:
        """Whether any node of the version has an xattr (the index `nodes_with_xattrs` answers)."""
        return self.catalog.row("SELECT EXISTS (SELECT 1 FROM nodes WHERE version=? AND xattrs IS NOT NULL)",
                              (self.version.id,))[0] == 1

    def xattrs(self, node_id: int) -> dict[bytes, bytes] | None:
        """The node's xattrs; None when the version has no such node."""
        row = self.catalog.row("SELECT xattrs FROM nodes WHERE version=? AND id=?", (self.version.id, node_id))
        if row is None:
            return None
        return msgpack.unpackb(row[0]) if row[0] else {}

    def content(self, content_id: int, catalog: Catalog | None = None) -> Content:
        """A file's content; another thread passes its own `index` connection."""
        row = (catalog or self.catalog).row("SELECT id, hash, size, extents FROM contents WHERE id=?", (content_id,))
        if row is None:
            raise PathNotFound(f"content {content_id} is missing from the local index; run 'fsbackup repair'")
        return Content(row[0], row[1], row[2], wire.unpack_extents(row[3]))


def node_path(catalog: Catalog, version_id: int, node_id: int) -> bytes:
    """The absolute path of node `node_id` of version `version_id` ('/' for the root), one query
    per directory up; PathNotFound when a node on the way is missing."""
    parts = []
    while node_id > ROOT_ID:
        row = catalog.row("SELECT parent, name FROM nodes WHERE version=? AND id=?", (version_id, node_id))
        if row is None:
            raise PathNotFound(f"node {node_id} is not in version id {version_id} of the local index")
        node_id, name = row
        parts.append(bytes(name))
    return b"/" + b"/".join(reversed(parts))


class LinkGroup(NamedTuple):
    """The names of one hard-linked file inside a version: the smallest node id among them (the
    mount's inode) and how many there are (its link count)."""
    first: int
    links: int


def link_group(catalog: Catalog, version_id: int, dev: int, ino: int) -> LinkGroup:
    """The hard-link group of source inode (`dev`, `ino`) in the version (`nodes_by_source_inode`)."""
    return LinkGroup._make(catalog.row(
        "SELECT min(id), count(*) FROM nodes WHERE version=? AND dev=? AND ino=? AND nlink>1",
        (version_id, dev, ino)))


def any_xattrs(catalog: Catalog) -> bool:
    """Whether any node of any version has an xattr."""
    return catalog.row("SELECT EXISTS (SELECT 1 FROM nodes WHERE xattrs IS NOT NULL)")[0] == 1


def node_count(catalog: Catalog) -> int:
    """Nodes of every version together (the mount's statfs)."""
    return catalog.row("SELECT count(*) FROM nodes")[0]
