"""The mount's top level: the directories and links above the versions' own trees.

    /                        RootDir
    /versions/               VersionsDir: one directory per version, named by its local time
    /versions/<time>/...     a version's tree (the view answers for it: view.RepositoryView)
    /latest -> versions/<newest>    LatestLink

Each top-level entry is a small node class that answers lookup, readdir, getattr and readlink for
itself, and says which of the kernel's cached entries go stale when versions come or go. The view
asks the node; neither the view nor the FUSE adapter branches on inode numbers, so a new view of
the repository (per host, per file) is one more class here.

Inode numbers: a node of a version's tree is `version row id << NODE_BITS | node id`, stable across
mounts of the same local index; the top level uses the numbers below 1 << NODE_BITS.
"""
from __future__ import annotations

import datetime
import errno
import os
import stat
from typing import Callable, NamedTuple

from ..catalog.versions import VersionInfo

ROOT_INODE = 1
VERSIONS_INODE = 2
LATEST_INODE = 3
NODE_BITS = 36
NODE_MASK = (1 << NODE_BITS) - 1
VERSIONS_DIR = b"versions"
LATEST_LINK = b"latest"


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


class Versions(NamedTuple):
    """The versions the mount shows, as one snapshot: replaced whole when the list changes, so a
    reader holding it sees one consistent list without a lock."""
    by_name: dict[bytes, VersionInfo]             # directory name -> version
    by_id: dict[int, tuple[bytes, VersionInfo]]   # version row id -> (directory name, version)
    latest: bytes | None                          # directory name of the newest version

    @classmethod
    def of(cls, versions: list[VersionInfo]) -> Versions:
        names = version_dir_names(versions)
        latest = max(names, key=lambda n: (names[n].time_ns, names[n].name)) if names else None
        return cls(names, {v.id: (name, v) for name, v in names.items()}, latest)

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
    def _dir_attr(ino: int, versions: Versions) -> Attr:
        newest = versions.newest_time_ns
        return Attr(ino, stat.S_IFDIR | 0o555, 2, os.getuid(), os.getgid(), 0, 0, 0, newest, newest, newest, False)


class LatestLink(TopNode):
    """`latest`: a symlink to the newest version's directory; absent when there is none."""

    ino = LATEST_INODE

    def _target(self, versions: Versions) -> bytes:
        if not versions.latest:
            raise FsOpError(errno.ENOENT)
        return VERSIONS_DIR + b"/" + versions.latest

    def attr(self, versions: Versions) -> Attr:
        newest = versions.newest_time_ns
        size = len(VERSIONS_DIR + b"/" + (versions.latest or b""))
        return Attr(self.ino, stat.S_IFLNK | 0o777, 1, os.getuid(), os.getgid(), 0, size, 0,
                    newest, newest, newest, False)

    def readlink(self, versions: Versions) -> bytes:
        return self._target(versions)


class VersionsDir(TopNode):
    """`versions/`: a directory per version, named by its local time; each is its version's root
    (`version_root` gives that root's attributes)."""

    ino = VERSIONS_INODE

    def __init__(self, version_root: Callable[[VersionInfo], Attr]):
        self.version_root = version_root

    def attr(self, versions: Versions) -> Attr:
        return self._dir_attr(self.ino, versions)

    def lookup(self, versions: Versions, name: bytes) -> Attr:
        v = versions.by_name.get(name)
        if v is None:
            raise FsOpError(errno.ENOENT)
        return self.version_root(v)

    def entries(self, versions: Versions) -> list[tuple[bytes, Attr]]:
        return [(name, self.version_root(v)) for name, v in sorted(versions.by_name.items())]

    def stale_names(self, changed: set[bytes]) -> list[bytes]:
        return sorted(changed)


class RootDir(TopNode):
    """The mount's root: `versions/` and, when there is a version, `latest`."""

    ino = ROOT_INODE

    def __init__(self, versions_dir: VersionsDir, latest: LatestLink):
        self.versions_dir = versions_dir
        self.latest = latest

    def attr(self, versions: Versions) -> Attr:
        return self._dir_attr(self.ino, versions)

    def _children(self, versions: Versions) -> list[tuple[bytes, TopNode]]:
        children: list[tuple[bytes, TopNode]] = [(VERSIONS_DIR, self.versions_dir)]
        if versions.latest:
            children.append((LATEST_LINK, self.latest))
        return children

    def lookup(self, versions: Versions, name: bytes) -> Attr:
        for child_name, child in self._children(versions):
            if child_name == name:
                return child.attr(versions)
        raise FsOpError(errno.ENOENT)

    def entries(self, versions: Versions) -> list[tuple[bytes, Attr]]:
        return [(name, child.attr(versions)) for name, child in self._children(versions)]

    def stale_names(self, changed: set[bytes]) -> list[bytes]:
        return [LATEST_LINK]             # the newest version may have changed


class Namespace:
    """The top-level nodes by inode number."""

    def __init__(self, version_root: Callable[[VersionInfo], Attr]):
        latest, versions_dir = LatestLink(), VersionsDir(version_root)
        self.nodes: dict[int, TopNode] = {node.ino: node for node in (RootDir(versions_dir, latest),
                                                                       versions_dir, latest)}

    def get(self, ino: int) -> TopNode | None:
        """The top-level node `ino`, or None for an inode of a version's tree."""
        return self.nodes.get(ino)

    def invalidations(self, changed: set[bytes]) -> Invalidations:
        """What the kernel must forget once the versions whose directory names are `changed` came or
        went: every top-level node (their listings and times follow the newest version), and the
        stale entries each directory names (a vanished version's directory must not stay
        reachable from the kernel's cache)."""
        return Invalidations(list(self.nodes),
                             [(node.ino, name) for node in self.nodes.values() for name in node.stale_names(changed)])
