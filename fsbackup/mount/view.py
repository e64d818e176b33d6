"""A version's tree and its files as a filesystem: the model behind `fsbackup mount` (the top
level above the versions, and inode numbering: namespace.py).

Plain, synchronous and thread-safe: the FUSE adapter (fuse.py) calls it on the trio thread and
only translates; tests drive it directly, without a kernel. getattr, lookup and readdir are
answered from the local index alone; reads fetch only the blocks they need (reading.py). The local
index follows the repository (sync.py): versions and volumes other machines stored or removed are taken in
periodically, and at once when a read finds its block's volume gone (another machine's prune
moved the block).
"""
from __future__ import annotations

import errno
import os
import threading
from collections import OrderedDict
from typing import Callable

from ..catalog import Catalog
from ..catalog.blocks import stored_volume_bytes
from ..catalog.tree import ROOT_ID, ContentRow, Listed, Node, VersionTree, any_xattrs, link_group, node_count
from ..catalog.versions import VersionInfo, list_versions
from ..errors import BackendError, PathNotFound
from ..repository import Repository
from .diskcache import DiskCache
from .log import ThrottledLog, log
from .namespace import NODE_BITS, NODE_MASK, Attr, FsOpError, Invalidations, Namespace, Versions, in_version
from .reading import READ_ATTEMPTS, BlockLoader, OpenFile, PendingRead
from .sync import CatalogSync

BLOCK_SIZE = 4096
KEPT_CONTENTS = 1 << 15             # contents of listed files kept for their open (a few MiB) ...
KEPT_CONTENT_MAX_SIZE = 8 << 20      # ... for files of a few extents
# Linux lets only CAP_SYS_ADMIN see trusted.* xattrs: the mount shows them to root alone.
TRUSTED_PREFIX = b"trusted."


class RepositoryView:
    """The repository as a filesystem. `sync_seconds`: how often the local index is brought in step
    with the repository (None: only when a read finds its block's volume gone). `version_filter`:
    which versions every part of the mount shows (None: all). `messages`: the mount's throttled
    log, shared with the FUSE adapter."""

    def __init__(self, repo: Repository, cache_dir: str | None = None, cache_size: int = 1 << 30,
                 memory_cache: int = 64 << 20, fetch_threads: int = 16, max_prefetch: int = 16,
                 sync_seconds: float | None = None, version_filter: Callable[[VersionInfo], bool] | None = None):
        self.repo = repo
        self.version_filter = version_filter
        self.catalog_path = repo.catalog_path
        self.messages = ThrottledLog(log)
        self.sync = CatalogSync(repo, self.messages, sync_seconds)
        self._local = threading.local()
        disk = DiskCache(cache_dir, cache_size) if cache_dir and cache_size > 0 else None
        self.loader = BlockLoader(repo, self._catalog, self.sync, memory_cache, disk, fetch_threads, max_prefetch)
        self.memory, self.fetcher = self.loader.memory, self.loader.fetcher
        self.versions = Versions.of([])
        self.namespace = Namespace(lambda v: self._node_attr(v.id, self._node(v.id, ROOT_ID)), self._node_attr,
                                   self._catalog)
        self._versions_with_xattrs: dict[int, bool] = {}     # version id -> whether any node has xattrs
        self._contents_lock = threading.Lock()
        self._contents: OrderedDict[int, ContentRow] = OrderedDict()   # inode -> content, of files listed lately
        self.refresh_versions()

    # ---- plumbing -----------------------------------------------------------------------

    def _catalog(self) -> Catalog:
        """This thread's own connection to the local index (SQLite connections stay in their thread)."""
        catalog = getattr(self._local, "catalog", None)
        if catalog is None:
            catalog = self._local.catalog = Catalog(self.catalog_path)
        return catalog

    def close(self) -> None:
        self.loader.close()
        self.sync.close()
        self.messages.flush()

    def refresh_versions(self) -> set[bytes]:
        """Re-read the version list from the local index; returns the names of the version
        directories that appeared or vanished (empty when none did)."""
        shown = list_versions(self._catalog())
        if self.version_filter is not None:
            shown = [v for v in shown if self.version_filter(v)]
        versions = Versions.of(shown)
        changed = versions.by_name.keys() ^ self.versions.by_name.keys()
        if changed:
            self.versions = versions         # replaced whole: readers need no lock
        return changed

    @property
    def latest(self) -> bytes | None:
        """The newest version's directory name."""
        return self.versions.latest

    @property
    def by_name(self) -> dict[bytes, VersionInfo]:
        """The versions by directory name."""
        return self.versions.by_name

    def answers_slowly(self, ino: int) -> bool:
        """Whether a lookup in, a getattr or a listing of `ino` may take milliseconds of queries
        (history/ directories, whose queries span every version), rather than microseconds."""
        top = self.namespace.get(ino)
        return top is not None and top.slow

    def invalidations(self, changed: set[bytes]) -> Invalidations:
        """What the kernel must forget once the versions named `changed` came or went."""
        return self.namespace.invalidations(changed)

    def _version(self, version_id: int) -> tuple[bytes, VersionInfo]:
        found = self.versions.by_id.get(version_id)
        if found is None:
            raise FsOpError(errno.ENOENT)       # a version removed since the kernel learned its inode
        return found

    def _tree(self, version_id: int) -> VersionTree:
        """The version's tree, read through this thread's connection."""
        return VersionTree(self._catalog(), self._version(version_id)[1])

    def _node(self, version_id: int, node_id: int) -> Node:
        try:
            return self._tree(version_id).node(node_id)
        except PathNotFound:
            raise FsOpError(errno.ENOENT) from None

    # ---- attributes ---------------------------------------------------------------------

    def _node_attr(self, version_id: int, node: Node) -> Attr:
        """The attributes of a version's node. (Made once per entry listed: `find` and `ls -l` of a
        fresh mount cost mostly this and the listing's query, so the common case is kept short.)"""
        kind = node.type
        if node.nlink > 1 and kind != "d":        # hard-linked: one inode, its group's link count
            canonical, nlink = link_group(self._catalog(), version_id, node.dev, node.ino)
            ino = (version_id << NODE_BITS) | canonical
        else:
            ino, nlink = (version_id << NODE_BITS) | node.id, 1
        mtime = node.mtime_ns
        if node.id == ROOT_ID:                    # a version's directory shows the backup time
            mtime = self._version(version_id)[1].time_ns
        if kind == "f":
            size, blocks = node.size, (node.stored + 511) // 512 if node.stored else 0
        else:
            size, blocks = node.size if kind == "l" else 0, 0
        return Attr(ino, node.mode, nlink, node.uid, node.gid, node.rdev, size, blocks,
                    node.atime_ns, mtime, mtime, True)

    def getattr(self, ino: int) -> Attr:
        top = self.namespace.get(ino)
        if top is not None:
            return top.attr(self.versions)
        version_id, node_id = ino >> NODE_BITS, ino & NODE_MASK
        self._version(version_id)
        return self._node_attr(version_id, self._node(version_id, node_id))

    # ---- names --------------------------------------------------------------------------

    def lookup(self, parent: int, name: bytes) -> Attr:
        top = self.namespace.get(parent)
        if top is not None:
            attr = top.lookup(self.versions, name)
            return attr
        # (no query for the parent: the kernel looks names up only in directories, and no other
        # node has children)
        version_id = parent >> NODE_BITS
        child = self._tree(version_id).lookup(parent & NODE_MASK, name)
        if child is None:
            raise FsOpError(errno.ENOENT)
        return self._node_attr(version_id, child)

    def readdir(self, ino: int, offset: int, limit: int = 1000) -> list[tuple[bytes, Attr, int]]:
        """Up to `limit` (name, attributes, next offset) entries after `offset` (0 = from the start).
        Offsets are stable: a listing resumes by name, so 100 000 entries stream in pages."""
        top = self.namespace.get(ino)
        if top is not None:
            entries = top.entries(self.versions)
            return [(name, attr, offset + i + 1) for i, (name, attr) in enumerate(entries[offset:offset + limit])]
        # `ino` is a directory: opendir checked (any other node lists nothing). The offset is the
        # node id of the last entry returned: resume after its name.
        version_id = ino >> NODE_BITS
        listed = self._tree(version_id).children_with_contents(ino & NODE_MASK, offset or None, limit)
        self._keep_contents(version_id, listed)
        return [(child.name, self._node_attr(version_id, child), child.id) for child, _ in listed]

    def _keep_contents(self, version_id: int, listed: list[Listed]) -> None:
        """Keep the contents of the files just listed (the listing's query brought them along), so
        that opening them needs no query: a listing is how nearly every reader (cp, a file manager,
        find) finds the files it opens next. Files of many extents are left to their open's query."""
        files = [(node.id, content) for node, content in listed
                 if content is not None and node.type == "f" and content.size <= KEPT_CONTENT_MAX_SIZE]
        if not files:
            return
        with self._contents_lock:
            for node_id, content in files:
                self._contents[(version_id << NODE_BITS) | node_id] = content
            while len(self._contents) > KEPT_CONTENTS:
                self._contents.popitem(last=False)

    def readlink(self, ino: int) -> bytes:
        top = self.namespace.get(ino)
        if top is not None:
            return top.readlink(self.versions)
        node = self._node(ino >> NODE_BITS, ino & NODE_MASK)
        if node.type != "l":
            raise FsOpError(errno.EINVAL)
        return node.target or b""

    def _xattrs(self, ino: int, privileged: bool) -> dict[bytes, bytes]:
        if not in_version(ino):
            return {}
        version_id, node_id = ino >> NODE_BITS, ino & NODE_MASK
        if not self._has_xattrs(version_id):
            return {}                  # no query: `ls -l` asks twice per entry, and most versions hold none
        xattrs = self._tree(version_id).xattrs(node_id)
        if xattrs is None:
            raise FsOpError(errno.ENOENT)
        if privileged:
            return xattrs
        return {name: value for name, value in xattrs.items() if not name.startswith(TRUSTED_PREFIX)}

    def any_xattrs(self) -> bool:
        """Whether any node of any version has an xattr."""
        return any_xattrs(self._catalog())

    def warn_of_hidden_xattrs(self, names: set[bytes]) -> None:
        """For a mount that answers no xattr request: a line for each of the versions `names` (just
        appeared) that has xattrs it does not show."""
        by_name = self.versions.by_name
        new = [(name, by_name[name]) for name in names if name in by_name]
        for name, v in new:
            if self._has_xattrs(v.id):
                self.messages.warning(("hidden xattrs", name), f"version {os.fsdecode(name)} holds extended "
                                      "attributes or ACLs, which this mount does not show (it began with none, "
                                      "and told the kernel not to ask); mount again to see them")

    def _has_xattrs(self, version_id: int) -> bool:
        """Whether any node of the version has an xattr: asked once per version (a version never changes)."""
        known = self._versions_with_xattrs.get(version_id)
        if known is None:
            known = self._versions_with_xattrs[version_id] = self._tree(version_id).has_xattrs()
        return known

    def getxattr(self, ino: int, name: bytes, privileged: bool = False) -> bytes:
        """The value of xattr `name`; ENODATA when the entry has none. trusted.* xattrs exist
        only for a `privileged` caller (root), as on a local file system."""
        value = self._xattrs(ino, privileged).get(name)
        if value is None:
            raise FsOpError(errno.ENODATA)
        return value

    def listxattr(self, ino: int, privileged: bool = False) -> list[bytes]:
        """The names of the entry's xattrs; trusted.* ones only for a `privileged` caller (root)."""
        return list(self._xattrs(ino, privileged))

    def statfs(self) -> dict:
        stored = stored_volume_bytes(self._catalog())
        files = node_count(self._catalog())
        return {"bsize": BLOCK_SIZE, "blocks": (stored + BLOCK_SIZE - 1) // BLOCK_SIZE, "bfree": 0,
                "files": files + 3, "ffree": 0, "namemax": 255}

    def path_of(self, ino: int) -> str:
        """A readable path for log messages."""
        if not in_version(ino):
            top = self.namespace.get(ino)
            return top.path if top is not None else "/"
        version_id, node_id = ino >> NODE_BITS, ino & NODE_MASK
        name, _ = self._version(version_id)
        tree = self._tree(version_id)
        return os.fsdecode(b"/versions/" + name + tree.path_of(tree.node(node_id)))

    # ---- reading ------------------------------------------------------------------------

    def open(self, ino: int) -> OpenFile:
        """The file, as its directory's listing kept it, else found with one indexed query. The
        load of its first block begins, so the read that follows finds it on its way (with the
        blocks after it in its volume: the next files)."""
        if not in_version(ino):
            raise FsOpError(errno.EISDIR)
        listed = self._contents.get(ino)        # (one operation on the dict: no lock needed)
        if listed is None:
            version_id, node_id = ino >> NODE_BITS, ino & NODE_MASK
            found = self._tree(version_id).file(node_id)
            if found is None:
                raise FsOpError(errno.ENOENT)
            if found.type == "d":
                raise FsOpError(errno.EISDIR)
            if found.type != "f" or found.content is None:
                raise FsOpError(errno.EINVAL)
            content = found.content
        else:
            self._version(ino >> NODE_BITS)           # a version forgotten since: ENOENT
            content = listed.unpack()
        f = OpenFile(ino, content)
        self.loader.opened(f)
        return f

    def start_read(self, f: OpenFile, offset: int, size: int) -> bytes | memoryview | PendingRead:
        """`BlockLoader.start_read`: the bytes when they are in memory, else a PendingRead."""
        return self.loader.start_read(f, offset, size)

    def read(self, f: OpenFile, offset: int, size: int) -> bytes:
        """Exactly the bytes [offset, offset+size) of the file (fewer at its end), waiting for them.
        Raises the FsbackupError (CorruptObject, NoSuchObject, BackendError, PermissionDenied...) of a
        needed block that cannot be had: never wrong bytes. The caller reports it."""
        for _ in range(READ_ATTEMPTS):
            started = self.start_read(f, offset, size)
            if not isinstance(started, PendingRead):
                return bytes(started)
            for fut in started.waiting():
                fut.exception()                  # waits; assemble() raises what it holds
            data = started.assemble()
            if data is not None:
                return bytes(data)
        raise BackendError(f"a block of {self.path_of(f.ino)} was abandoned by {READ_ATTEMPTS} loads in a row")
