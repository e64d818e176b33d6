"""The mount's top level: the directories and links above the versions' own trees.

    /                            RootDir
    /versions/                   VersionsDir: one directory per version, named by its local time
    /versions/<time>/...         a version's tree (the view answers for it: view.RepositoryView)
    /latest -> versions/<newest> LatestLink
    /hosts/, /tags/              GroupsDir: a directory per host (per tag) some version has
    /hosts/<host>/<time>         GroupDir: that host's versions, the same directories as versions/<time>
    /hosts/<host>/latest         GroupLatestLink -> <time> of the host's newest version
    /history/<path>/             HistoryDir: what <path> held across the versions (below)

Each top-level entry is a small node class that answers lookup, readdir, getattr and readlink for
itself, and says which of the kernel's cached entries go stale when versions come or go. The view
asks the node; neither the view nor the FUSE adapter branches on inode numbers.

Every view shows the same versions: the `Versions` snapshot the view passes in, narrowed by the
mount's filter (host, tag, path) before it is made.

`history/<path>/` lists the names that were ever directly under <path> in a version (each again a
history directory) and, where <path> was not a directory (a file, a symlink...), one entry per
distinct content it had (the same bytes, or symlink target), named by the time of the first
version that had that content (the version's directory name) and being that version's node: its
metadata, and reads through the version's own inode. A path that was a file in some versions and
a directory in others lists both; a child whose name equals one of those time names hides that
entry (the file is still at versions/<time>/<path>, while the child's history has no other place).
Each history directory is open to whom the path was open in every version that has it: its
permission bits are those every such version grants (for a non-directory, read counts as
search), it belongs to the path's owner and group, and it is root's alone when they changed
across versions; an ACL there in any version leaves only the owner's bits. Its answers come from
indexed queries on the local index (catalog/history.py) that cost (versions x path depth) index
probes, or (versions x entries) for a listing, so they are marked `slow` for the FUSE adapter,
and kept per path for as long as the version list does not change.

Inode numbers: a node of a version's tree is `version row id << NODE_BITS | node id`, stable across
mounts of the same local index; its entries under hosts/, tags/ and history/ carry the same
numbers, so the kernel keeps one copy. Everything else lives below 1 << NODE_BITS: the fixed
nodes 1 to 6, and from FIRST_ALLOCATED_INODE up, numbers handed out in order to each host and tag
directory, its `latest` link and each history directory (by path) when first shown, and kept for
the life of the mount (`Namespace.allocate`): stable while mounted, never reused, never a
version's number; not stable across mounts.

The kernel is told what went stale when versions come or go (`Namespace.invalidations`) for
everything but history/, whose entries it caches for a second only (a mount may have numbered many
history directories; telling it about each one whenever a version appears would cost more).
"""
from __future__ import annotations

import datetime
import errno
import os
import stat
import threading
from collections import OrderedDict
from typing import Callable, Hashable, NamedTuple, TypeVar

from ..catalog import Catalog
from ..catalog.history import PathSummary, names_under, non_directories_at, path_summary
from ..catalog.tree import Node
from ..catalog.versions import VersionInfo

ROOT_INODE = 1
VERSIONS_INODE = 2
LATEST_INODE = 3
HOSTS_INODE = 4
TAGS_INODE = 5
HISTORY_INODE = 6
FIRST_ALLOCATED_INODE = 16
NODE_BITS = 36
NODE_MASK = (1 << NODE_BITS) - 1
VERSIONS_DIR = b"versions"
LATEST_LINK = b"latest"
HOSTS_DIR = b"hosts"
TAGS_DIR = b"tags"
HISTORY_DIR = b"history"
HISTORY_CACHED_PATHS = 4096     # paths whose summaries are kept (a few hundred bytes each) ...
HISTORY_CACHED_LISTINGS = 32    # ... and listings of history directories (one per entry each)


def in_version(ino: int) -> bool:
    """Whether `ino` names a node of a version's tree (else the top level, or nothing)."""
    return ino > NODE_MASK


class FsOpError(Exception):
    """A POSIX error for one request (ENOENT, ENOTDIR, ENODATA...)."""

    def __init__(self, err: int):
        super().__init__(os.strerror(err))
        self.errno = err


class Attr(NamedTuple):
    """An entry's attributes, as the kernel is told them (a NamedTuple: one is made per entry listed)."""
    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    blocks: int                      # 512-byte units actually stored: sparse holes count for nothing
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    immutable: bool                  # a version's content never changes: the kernel may cache it long


def version_dir_names(versions: list[VersionInfo]) -> dict[bytes, VersionInfo]:
    """Directory name of each version: its local time, with _2, _3... when two share a second."""
    names: dict[bytes, VersionInfo] = {}
    for v in versions:
        base = datetime.datetime.fromtimestamp(v.time_ns / 1e9).strftime("%Y-%m-%d_%H-%M-%S").encode()
        name, n = base, 1
        while name in names:
            n += 1
            name = base + b"_%d" % n
        names[name] = v
    return names


def folder_name(text: str) -> bytes | None:
    """A host name or tag as a directory name; None when it cannot be one (empty, `.`, `..`, or
    holding `/` or NUL: tags are free text, and versions made before host names were checked)."""
    name = os.fsencode(text)
    if name in (b"", b".", b"..") or b"/" in name or b"\0" in name:
        return None
    return name


class Group(NamedTuple):
    """The versions of one host (or tag), by directory name, oldest first."""
    members: dict[bytes, VersionInfo]
    latest: bytes                                 # directory name of the newest

    @property
    def newest_time_ns(self) -> int:
        return self.members[self.latest].time_ns


def _newest(names: dict[bytes, VersionInfo]) -> bytes:
    return max(names, key=lambda n: (names[n].time_ns, names[n].name))


def _groups(names: dict[bytes, VersionInfo], keys: Callable[[VersionInfo], list[str]]) -> dict[bytes, Group]:
    members: dict[bytes, dict[bytes, VersionInfo]] = {}
    for name, v in names.items():
        for key in keys(v):
            folder = folder_name(key)
            if folder is not None:
                members.setdefault(folder, {})[name] = v
    return {folder: Group(m, _newest(m)) for folder, m in sorted(members.items())}


class Versions(NamedTuple):
    """The versions the mount shows, as one snapshot: replaced whole when the list changes, so a
    reader holding it sees one consistent list without a lock."""
    by_name: dict[bytes, VersionInfo]             # directory name -> version, oldest first
    by_id: dict[int, tuple[bytes, VersionInfo]]   # version row id -> (directory name, version)
    latest: bytes | None                          # directory name of the newest version
    hosts: dict[bytes, Group]                     # host directory name -> its versions
    tags: dict[bytes, Group]                      # tag directory name -> its versions

    @classmethod
    def of(cls, versions: list[VersionInfo]) -> Versions:
        names = version_dir_names(versions)
        return cls(names, {v.id: (name, v) for name, v in names.items()}, _newest(names) if names else None,
                   _groups(names, lambda v: [v.host]), _groups(names, lambda v: v.tags))

    @property
    def newest_time_ns(self) -> int:
        return self.by_name[self.latest].time_ns if self.latest else 0


class Invalidations(NamedTuple):
    """What the kernel must forget when versions came or went: inodes (their attributes and
    listings) and (parent inode, name) entries."""
    inodes: list[int]
    entries: list[tuple[int, bytes]]


class TopNode:
    """A directory or link of the top level. Versions are passed in (`Versions`), so that one
    request sees one list. Requests a kind of node cannot answer fail as a file system would."""

    ino: int
    path: str                     # where it is in the mount, for log lines
    slow = False                  # its answers may take milliseconds of queries (history/)
    invalidated = True            # the kernel is told when it goes stale (else: short timeouts)

    def attr(self, versions: Versions) -> Attr:
        raise NotImplementedError

    def lookup(self, versions: Versions, name: bytes) -> Attr:
        raise FsOpError(errno.ENOTDIR)

    def entries(self, versions: Versions) -> list[tuple[bytes, Attr]]:
        """Every entry, in a stable order (a listing resumes by position)."""
        raise FsOpError(errno.ENOTDIR)

    def readlink(self, versions: Versions) -> bytes:
        raise FsOpError(errno.EINVAL)

    def stale_names(self, changed: set[bytes]) -> list[bytes]:
        """Names in this directory whose kernel entries are stale once the versions whose directory
        names are `changed` came or went."""
        return []

    @staticmethod
    def _dir_attr(ino: int, time_ns: int) -> Attr:
        return Attr(ino, stat.S_IFDIR | 0o555, 2, os.getuid(), os.getgid(), 0, 0, 0, time_ns, time_ns, time_ns,
                    False)

    @staticmethod
    def _link_attr(ino: int, target: bytes, time_ns: int) -> Attr:
        return Attr(ino, stat.S_IFLNK | 0o777, 1, os.getuid(), os.getgid(), 0, len(target), 0,
                    time_ns, time_ns, time_ns, False)


class LatestLink(TopNode):
    """`latest`: a symlink to the newest version's directory; absent when there is none."""

    ino = LATEST_INODE
    path = "/latest"

    def attr(self, versions: Versions) -> Attr:
        return self._link_attr(self.ino, VERSIONS_DIR + b"/" + (versions.latest or b""), versions.newest_time_ns)

    def readlink(self, versions: Versions) -> bytes:
        if not versions.latest:
            raise FsOpError(errno.ENOENT)
        return VERSIONS_DIR + b"/" + versions.latest


class VersionsDir(TopNode):
    """`versions/`: a directory per version, named by its local time; each is its version's root
    (`version_root` gives that root's attributes)."""

    ino = VERSIONS_INODE
    path = "/versions"

    def __init__(self, version_root: Callable[[VersionInfo], Attr]):
        self.version_root = version_root

    def attr(self, versions: Versions) -> Attr:
        return self._dir_attr(self.ino, versions.newest_time_ns)

    def lookup(self, versions: Versions, name: bytes) -> Attr:
        v = versions.by_name.get(name)
        if v is None:
            raise FsOpError(errno.ENOENT)
        return self.version_root(v)

    def entries(self, versions: Versions) -> list[tuple[bytes, Attr]]:
        return [(name, self.version_root(v)) for name, v in sorted(versions.by_name.items())]

    def stale_names(self, changed: set[bytes]) -> list[bytes]:
        return sorted(changed)


GROUP_KINDS = {HOSTS_DIR: lambda versions: versions.hosts, TAGS_DIR: lambda versions: versions.tags}


class GroupLatestLink(TopNode):
    """`hosts/<host>/latest` (or a tag's): a symlink to the group's newest version, beside it."""

    def __init__(self, ino: int, group_dir: GroupDir):
        self.ino, self.group_dir = ino, group_dir
        self.path = group_dir.path + "/latest"

    def attr(self, versions: Versions) -> Attr:
        group = self.group_dir.group(versions)
        return self._link_attr(self.ino, group.latest, group.newest_time_ns)

    def readlink(self, versions: Versions) -> bytes:
        return self.group_dir.group(versions).latest


class GroupDir(TopNode):
    """`hosts/<host>/` (or `tags/<tag>/`): the group's versions, each its version's root as in
    versions/ (the same names and inodes), and `latest`."""

    def __init__(self, ino: int, kind: bytes, name: bytes, namespace: Namespace):
        self.ino, self.kind, self.name = ino, kind, name
        self.path = "/" + os.fsdecode(kind + b"/" + name)
        self._groups = GROUP_KINDS[kind]
        self.latest = namespace.allocate(("latest", kind, name), lambda ino: GroupLatestLink(ino, self))
        self.version_root = namespace.version_root

    def group(self, versions: Versions) -> Group:
        """The group in `versions`; ENOENT when it has no version there any more."""
        group = self._groups(versions).get(self.name)
        if group is None:
            raise FsOpError(errno.ENOENT)
        return group

    def attr(self, versions: Versions) -> Attr:
        return self._dir_attr(self.ino, self.group(versions).newest_time_ns)

    def lookup(self, versions: Versions, name: bytes) -> Attr:
        group = self.group(versions)
        if name == LATEST_LINK:
            return self.latest.attr(versions)
        v = group.members.get(name)
        if v is None:
            raise FsOpError(errno.ENOENT)
        return self.version_root(v)

    def entries(self, versions: Versions) -> list[tuple[bytes, Attr]]:
        members = self.group(versions).members
        return [*((name, self.version_root(v)) for name, v in members.items()),
                (LATEST_LINK, self.latest.attr(versions))]

    def stale_names(self, changed: set[bytes]) -> list[bytes]:
        return [*sorted(changed), LATEST_LINK]


class GroupsDir(TopNode):
    """`hosts/` (or `tags/`): a directory per host (tag) that some shown version has."""

    def __init__(self, ino: int, kind: bytes, namespace: Namespace):
        self.ino, self.kind, self.namespace = ino, kind, namespace
        self.path = "/" + os.fsdecode(kind)
        self._groups = GROUP_KINDS[kind]
        self._seen: set[bytes] = set()           # every group name shown: one may vanish

    def _child(self, name: bytes) -> GroupDir:
        self._seen.add(name)
        return self.namespace.allocate((self.kind, name), lambda ino: GroupDir(ino, self.kind, name, self.namespace))

    def attr(self, versions: Versions) -> Attr:
        return self._dir_attr(self.ino, versions.newest_time_ns)

    def lookup(self, versions: Versions, name: bytes) -> Attr:
        if name not in self._groups(versions):
            raise FsOpError(errno.ENOENT)
        return self._child(name).attr(versions)

    def entries(self, versions: Versions) -> list[tuple[bytes, Attr]]:
        return [(name, self._child(name).attr(versions)) for name in self._groups(versions)]

    def stale_names(self, changed: set[bytes]) -> list[bytes]:
        return sorted(self._seen)


Value = TypeVar("Value")


class History:
    """The queries behind history/ (catalog/history.py), through the calling thread's connection
    (`catalog`), with their answers kept per path while the version list stays the same: a
    listing's summaries answer the lookups and getattrs that follow it without a query."""

    def __init__(self, catalog: Callable[[], Catalog], node_attr: Callable[[int, Node], Attr]):
        self.catalog = catalog
        self.node_attr = node_attr
        self._lock = threading.Lock()
        self._summaries: OrderedDict[bytes, tuple[Versions, PathSummary | None]] = OrderedDict()
        self._listings: OrderedDict[tuple[str, bytes], tuple[Versions, object]] = OrderedDict()

    @staticmethod
    def _ids(versions: Versions) -> list[int]:
        return list(versions.by_id)

    def _kept(self, cache: OrderedDict, key: Hashable, versions: Versions, make: Callable[[], Value],
              bound: int) -> Value:
        """`make()`, or what it gave for `key` while `versions` was the list (versions are replaced
        whole when the list changes, so identity tells)."""
        with self._lock:
            kept = cache.get(key)
            if kept is not None and kept[0] is versions:
                cache.move_to_end(key)
                return kept[1]
        value = make()                           # (outside the lock: another thread may ask meanwhile)
        self._keep(cache, key, versions, value, bound)
        return value

    def _keep(self, cache: OrderedDict, key: Hashable, versions: Versions, value, bound: int) -> None:
        with self._lock:
            cache[key] = (versions, value)
            cache.move_to_end(key)
            while len(cache) > bound:
                cache.popitem(last=False)

    def summary(self, versions: Versions, path: bytes) -> PathSummary | None:
        """`path` summed up over the shown versions; None when none has it."""
        return self._kept(self._summaries, path, versions,
                          lambda: path_summary(self.catalog(), self._ids(versions), path), HISTORY_CACHED_PATHS)

    def names_under(self, versions: Versions, path: bytes) -> list[PathSummary]:
        """Every name ever directly under `path`, each summed up (and kept for its lookup)."""
        def query() -> list[PathSummary]:
            found = names_under(self.catalog(), self._ids(versions), path)
            for s in found:
                self._keep(self._summaries, _join(path, s.name), versions, s, HISTORY_CACHED_PATHS)
            return found
        return self._kept(self._listings, ("names", path), versions, query, HISTORY_CACHED_LISTINGS)

    def contents(self, versions: Versions, path: bytes) -> dict[bytes, Attr]:
        """Where `path` was not a directory: one entry per distinct content (bytes, symlink target,
        device), named by the first version (by time) that had it, with that version's node's
        attributes. Oldest first."""
        def query() -> dict[bytes, Attr]:
            first: dict[tuple, tuple[tuple[int, str], bytes, Attr]] = {}
            for found in non_directories_at(self.catalog(), self._ids(versions), path):
                name, v = versions.by_id[found.version_id]
                node = found.node
                key = (node.type, found.content_hash if node.type == "f" else node.target if node.type == "l"
                       else node.rdev)
                order = (v.time_ns, v.name)
                if key not in first or order < first[key][0]:
                    # A name under history/ may come to mean another version's node (an older one
                    # recorded later): the kernel keeps it for a second only.
                    first[key] = (order, name, self.node_attr(v.id, node)._replace(immutable=False))
            return {name: attr for _, name, attr in sorted(first.values())}
        return self._kept(self._listings, ("contents", path), versions, query, HISTORY_CACHED_LISTINGS)


def _join(path: bytes, name: bytes) -> bytes:
    return path.rstrip(b"/") + b"/" + name


class HistoryDir(TopNode):
    """`history/<path>/`: the names ever under <path> (history directories) and, where <path> was
    not a directory, its distinct contents (module docstring)."""

    slow = True
    invalidated = False           # its entries are given short timeouts instead

    def __init__(self, ino: int, path: bytes, history: History, namespace: Namespace):
        self.ino, self.hpath, self.history, self.namespace = ino, path, history, namespace
        self.path = "/" + os.fsdecode(HISTORY_DIR + path.rstrip(b"/"))

    def _child(self, name: bytes) -> HistoryDir:
        path = _join(self.hpath, name)
        return self.namespace.allocate(("history", path),
                                       lambda ino: HistoryDir(ino, path, self.history, self.namespace))

    def _summary(self, versions: Versions) -> PathSummary:
        s = self.history.summary(versions, self.hpath)
        if s is None:
            raise FsOpError(errno.ENOENT)      # no shown version has the path (any more)
        return s

    @staticmethod
    def _attr_of(ino: int, s: PathSummary, versions: Versions) -> Attr:
        """A history directory's attributes, from its path's summary (module docstring)."""
        uid, gid, bits = s.uid, s.gid, s.mode_bits & 0o555
        if not s.one_owner:
            uid, gid, bits = 0, 0, 0o500
        elif s.acl:
            bits &= 0o700
        newest = versions.newest_time_ns
        return Attr(ino, stat.S_IFDIR | bits, 2, uid, gid, 0, 0, 0, newest, newest, newest, False)

    def attr(self, versions: Versions) -> Attr:
        return self._attr_of(self.ino, self._summary(versions), versions)

    def lookup(self, versions: Versions, name: bytes) -> Attr:
        s = self.history.summary(versions, _join(self.hpath, name))
        if s is not None:
            return self._attr_of(self._child(name).ino, s, versions)
        if self._summary(versions).has_other:
            attr = self.history.contents(versions, self.hpath).get(name)
            if attr is not None:
                return attr
        raise FsOpError(errno.ENOENT)

    def entries(self, versions: Versions) -> list[tuple[bytes, Attr]]:
        children = [(s.name, self._attr_of(self._child(s.name).ino, s, versions))
                    for s in self.history.names_under(versions, self.hpath)]
        if not self._summary(versions).has_other:
            return children
        taken = {name for name, _ in children}
        contents = [(name, attr) for name, attr in self.history.contents(versions, self.hpath).items()
                    if name not in taken]
        return contents + children


class RootDir(TopNode):
    """The mount's root: `versions/`, `latest` when there is a version, `hosts/`, `tags/` and
    `history/`."""

    ino = ROOT_INODE
    path = "/"

    def __init__(self, children: list[tuple[bytes, TopNode]]):
        self.children = children

    def attr(self, versions: Versions) -> Attr:
        return self._dir_attr(self.ino, versions.newest_time_ns)

    def _children(self, versions: Versions) -> list[tuple[bytes, TopNode]]:
        return [(name, child) for name, child in self.children if versions.latest or child.ino != LATEST_INODE]

    def lookup(self, versions: Versions, name: bytes) -> Attr:
        for child_name, child in self._children(versions):
            if child_name == name:
                return child.attr(versions)
        raise FsOpError(errno.ENOENT)

    def entries(self, versions: Versions) -> list[tuple[bytes, Attr]]:
        return [(name, child.attr(versions)) for name, child in self._children(versions)]

    def stale_names(self, changed: set[bytes]) -> list[bytes]:
        return [LATEST_LINK]             # the newest version may have changed


Node_ = TypeVar("Node_", bound=TopNode)


class Namespace:
    """The top-level nodes by inode number: the fixed ones, and those numbered as they are first
    shown (`allocate`). `version_root` gives a version's root directory's attributes, `node_attr`
    a version's node's, `catalog` the calling thread's connection to the local index."""

    def __init__(self, version_root: Callable[[VersionInfo], Attr], node_attr: Callable[[int, Node], Attr],
                 catalog: Callable[[], Catalog]):
        self.version_root = version_root
        self._lock = threading.RLock()           # (a node made by `allocate` may allocate its own)
        self._allocated: dict[Hashable, TopNode] = {}
        self._next_ino = FIRST_ALLOCATED_INODE
        latest, versions_dir = LatestLink(), VersionsDir(version_root)
        hosts, tags = GroupsDir(HOSTS_INODE, HOSTS_DIR, self), GroupsDir(TAGS_INODE, TAGS_DIR, self)
        history = HistoryDir(HISTORY_INODE, b"/", History(catalog, node_attr), self)
        children: list[tuple[bytes, TopNode]] = [(VERSIONS_DIR, versions_dir), (LATEST_LINK, latest),
                                                 (HOSTS_DIR, hosts), (TAGS_DIR, tags), (HISTORY_DIR, history)]
        self.nodes: dict[int, TopNode] = {node.ino: node for node in (RootDir(children), *(c for _, c in children))}

    def get(self, ino: int) -> TopNode | None:
        """The top-level node `ino`, or None for an inode of a version's tree."""
        return self.nodes.get(ino)

    def allocate(self, key: Hashable, make: Callable[[int], Node_]) -> Node_:
        """The node for `key`, made with the next free number the first time it is asked for; the
        same node (and number) for the life of the mount afterwards."""
        with self._lock:
            node = self._allocated.get(key)
            if node is None:
                if self._next_ino > NODE_MASK:     # 2**36 numbers: never in practice, but never a version's
                    raise FsOpError(errno.EOVERFLOW)
                ino, self._next_ino = self._next_ino, self._next_ino + 1
                node = self._allocated[key] = self.nodes[ino] = make(ino)
            return node  # type: ignore[return-value]

    def invalidations(self, changed: set[bytes]) -> Invalidations:
        """What the kernel must forget once the versions whose directory names are `changed` came or
        went: every top-level node (their listings and times follow the newest version), and the
        stale entries each directory names (a vanished version's directory must not stay
        reachable from the kernel's cache). History directories are left to their short timeouts."""
        with self._lock:
            nodes = [node for node in self.nodes.values() if node.invalidated]
        return Invalidations([node.ino for node in nodes],
                             [(node.ino, name) for node in nodes for name in node.stale_names(changed)])
