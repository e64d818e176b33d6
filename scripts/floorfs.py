"""floorfs: the floor of the mount benchmark, a read-only FUSE filesystem served from memory.

scripts/bench compares `fsbackup mount` with restic's and borg's mounts. Those numbers say who
is faster, not how much faster fsbackup's mount could still get. floorfs answers that: it
serves the same backup versions through the same pyfuse3 on trio, but from memory, with no
repository, index, decryption or decompression behind it, every request answered on the trio
thread. What it measures is what pyfuse3 and the kernel's FUSE round trips themselves cost on
this machine: the lower bound a Python FUSE mount can reach, so fsbackup/floor says how far
fsbackup's mount is above that floor.

It answers what a backup mount must answer, as fsbackup's does: lookup, getattr, readdir with
attributes (readdirplus), opendir, open (keep_cache), read, readlink, statfs, and xattr requests
(with ACL support on, as fsbackup has it, the kernel asks for ACLs: no xattr exists, ENODATA).
It defines no flush handler: pyfuse3 answers ENOSYS and the kernel stops sending FLUSH.

Usage (with a python that has pyfuse3 and trio):

    floorfs.py SNAPSHOTS MOUNTPOINT

SNAPSHOTS is a folder of LABEL.tar files, each a snapshot of a directory made with
`tar --format=posix -cf LABEL.tar -C / SOURCE` (POSIX tar keeps times to the nanosecond;
xattrs are not served). At start every snapshot is read whole into memory (equal file contents
are kept once), then MOUNTPOINT/LABEL/<source's absolute path> shows it, as borg's mount shows
an archive. It serves in the foreground until unmounted (fusermount3 -u) or sent SIGINT/SIGTERM.
"""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import sys
import tarfile
import time
from decimal import Decimal
from pathlib import Path

import pyfuse3
import trio

TIMEOUT = 3600.0          # entry and attribute timeouts: a snapshot never changes
BLOCK_SIZE = 128 * 1024   # st_blksize, the same as fsbackup's mount (cp and cat size their reads by it)
MOUNT_OPTIONS = {"fsname=floorfs", "ro", "default_permissions"}
FILE_TYPES = {tarfile.REGTYPE: stat.S_IFREG, tarfile.AREGTYPE: stat.S_IFREG,
              tarfile.CONTTYPE: stat.S_IFREG, tarfile.DIRTYPE: stat.S_IFDIR,
              tarfile.SYMTYPE: stat.S_IFLNK, tarfile.CHRTYPE: stat.S_IFCHR,
              tarfile.BLKTYPE: stat.S_IFBLK, tarfile.FIFOTYPE: stat.S_IFIFO}


def components(name: str) -> list[str]:
    """A member's path as its components: no empty ones, no "."."""
    return [p for p in name.split("/") if p not in ("", ".")]


def nanoseconds(member: tarfile.TarInfo, key: str) -> int:
    """A time of the member to the nanosecond (POSIX tar's extended header), else mtime."""
    text = member.pax_headers.get(key)
    return int(Decimal(text) * 10**9) if text else int(member.mtime) * 10**9


class Tree:
    """Every snapshot in memory: one EntryAttributes per inode, made once and answered as is."""

    def __init__(self) -> None:
        self.attrs: list[pyfuse3.EntryAttributes | None] = [None]  # indexed by inode; 0 unused
        self.children: dict[int, dict[bytes, int]] = {}  # directory -> name -> inode
        self.listings: dict[int, list[tuple[bytes, int]]] = {}  # directory -> entries, in order
        self.data: dict[int, memoryview] = {}  # regular file -> its bytes
        self.targets: dict[int, bytes] = {}  # symlink -> its target
        self.blobs: dict[bytes, bytes] = {}  # equal contents are kept once
        self.total_bytes = 0
        now = time.time_ns()
        self.add(stat.S_IFDIR | 0o755, os.getuid(), os.getgid(), times=(now, now, now))  # ROOT_INODE

    def add(self, mode: int, uid: int = 0, gid: int = 0, size: int = 0, rdev: int = 0,
            times: tuple[int, int, int] = (0, 0, 0)) -> int:
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino = len(self.attrs)
        e.generation = 0
        e.entry_timeout = e.attr_timeout = TIMEOUT
        e.st_mode, e.st_uid, e.st_gid, e.st_rdev, e.st_size = mode, uid, gid, rdev, size
        e.st_nlink = 1
        e.st_blksize = BLOCK_SIZE
        e.st_blocks = (size + 511) // 512
        e.st_atime_ns, e.st_mtime_ns, e.st_ctime_ns = times
        self.attrs.append(e)
        if stat.S_ISDIR(mode):
            self.children[ino] = {}
        return ino

    def link(self, parent: int, name: bytes, ino: int) -> None:
        self.children[parent][name] = ino

    def directory(self, parent: int, name: bytes, times: tuple[int, int, int]) -> int:
        """The directory name in parent, made (0755, root's) if the snapshot did not list it."""
        ino = self.children[parent].get(name)
        if ino is None:
            ino = self.add(stat.S_IFDIR | 0o755, times=times)
            self.link(parent, name, ino)
        return ino

    def load(self, snapshot: Path) -> None:
        st = snapshot.stat()
        when = (st.st_mtime_ns,) * 3
        version = self.directory(pyfuse3.ROOT_INODE, os.fsencode(snapshot.stem), when)
        by_name: dict[str, int] = {}  # member name -> inode, for hard links
        with tarfile.open(snapshot) as tar:
            for m in tar:
                parts = components(m.name)
                if not parts:
                    continue
                parent = version
                for part in parts[:-1]:
                    parent = self.directory(parent, os.fsencode(part), when)
                name = os.fsencode(parts[-1])
                if m.islnk():  # a hard link: one more name for an earlier member's inode
                    ino = by_name["/".join(components(m.linkname))]
                    self.attrs[ino].st_nlink += 1
                    self.link(parent, name, ino)
                    continue
                times = (nanoseconds(m, "atime"), nanoseconds(m, "mtime"), nanoseconds(m, "ctime"))
                mode = FILE_TYPES[m.type] | m.mode
                existing = self.children[parent].get(name)
                if m.isdir() and existing is not None:  # made as a parent already: its real attributes
                    e = self.attrs[existing]
                    e.st_mode, e.st_uid, e.st_gid = mode, m.uid, m.gid
                    e.st_atime_ns, e.st_mtime_ns, e.st_ctime_ns = times
                    by_name["/".join(parts)] = existing
                    continue
                size = len(m.linkname.encode()) if m.issym() else m.size if m.isreg() else 0
                rdev = os.makedev(m.devmajor, m.devminor) if m.ischr() or m.isblk() else 0
                ino = self.add(mode, m.uid, m.gid, size, rdev, times)
                if m.isreg():
                    data = tar.extractfile(m).read()
                    self.data[ino] = memoryview(self.blobs.setdefault(data, data))
                    self.total_bytes += size
                elif m.issym():
                    self.targets[ino] = os.fsencode(m.linkname)
                self.link(parent, name, ino)
                by_name["/".join(parts)] = ino

    def finish(self) -> None:
        """Directory link counts (2 + subdirectories) and the listings readdir pages through."""
        for ino, entries in self.children.items():
            self.attrs[ino].st_nlink = 2 + sum(stat.S_ISDIR(self.attrs[i].st_mode)
                                               for i in entries.values())
            self.listings[ino] = list(entries.items())
        self.blobs.clear()  # the memoryviews keep the contents


class FloorFS(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = True  # as fsbackup's mount: the kernel asks for ACLs, and getxattr answers

    def __init__(self, tree: Tree):
        super().__init__()
        self.tree = tree

    async def lookup(self, parent_inode, name, ctx=None):
        ino = self.tree.children[parent_inode].get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.tree.attrs[ino]

    async def getattr(self, inode, ctx=None):
        return self.tree.attrs[inode]

    async def opendir(self, inode, ctx):
        if inode not in self.tree.listings:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh, start_id, token):
        listing, attrs = self.tree.listings[fh], self.tree.attrs
        for i in range(start_id, len(listing)):
            name, ino = listing[i]
            if not pyfuse3.readdir_reply(token, name, attrs[ino], i + 1):
                return

    async def releasedir(self, fh):
        return None

    async def open(self, inode, flags, ctx):
        if inode not in self.tree.data:
            raise pyfuse3.FUSEError(errno.EISDIR if inode in self.tree.listings else errno.EACCES)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh, off, size):
        return self.tree.data[fh][off:off + size]  # a memoryview: no copy before the reply

    async def release(self, fh):
        return None

    async def readlink(self, inode, ctx):
        return self.tree.targets[inode]

    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = (self.tree.total_bytes + 4095) // 4096
        s.f_bfree = s.f_bavail = s.f_ffree = s.f_favail = 0
        s.f_files = len(self.tree.attrs) - 1
        s.f_namemax = 255
        return s

    async def getxattr(self, inode, name, ctx):
        raise pyfuse3.FUSEError(errno.ENODATA)

    async def listxattr(self, inode, ctx):
        return []


async def serve() -> None:
    """pyfuse3's loop until unmounted, or until SIGINT/SIGTERM ends it (then close unmounts)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_signals)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def stop_on_signals() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            pyfuse3.terminate()
            return


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: floorfs.py SNAPSHOTS MOUNTPOINT", file=sys.stderr)
        return 2
    snapshots, mountpoint = Path(argv[0]), argv[1]
    tree = Tree()
    for snapshot in sorted(snapshots.glob("*.tar")):
        tree.load(snapshot)
    tree.finish()
    pyfuse3.init(FloorFS(tree), mountpoint, MOUNT_OPTIONS)
    try:
        trio.run(serve)
    finally:
        with contextlib.suppress(Exception):  # already unmounted from outside
            pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
