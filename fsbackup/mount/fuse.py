"""The FUSE adapter: translates kernel requests into RepositoryView calls. A protocol adapter only.

Threading rule: handlers run on the trio thread and never hop to another thread for a request
that can be answered from memory or the local index. Point lookups (lookup, getattr, readlink,
getxattr, listxattr, open, pages of 128 directory entries: a few indexed queries, microseconds)
and reads of blocks in memory run right there; those about history/ directories, whose queries span
every version, go to a worker thread (`_answer`). A read whose blocks are not in memory starts their
loads in the view's fetch threads and awaits their Futures without a thread of its own
(`_settled`), so a slow fetch never stalls a listing. Besides history/, only statfs goes to a worker thread
(`trio.to_thread.run_sync`, bounded by a CapacityLimiter). Only FUSEError leaves a handler:
anything else would end the mount. A failed request is mapped to its errno here, once
(`_errno_of`), and logged as one line through the view's throttled log: a repository that fails
every read writes a line per kind of failure per minute, not one per read; only a bug (an error
that is no FsbackupError) logs its traceback.
"""
from __future__ import annotations

import errno
import functools
import os
import signal
from collections import deque
from concurrent.futures import Future
from typing import Callable

import pyfuse3
import trio

from ..errors import AuthenticationFailed, BackendError, FsbackupError, PathNotFound, PermissionDenied
from .log import error_kind
from .namespace import Attr, FsOpError, Invalidations
from .reading import READ_ATTEMPTS, OpenFile, PendingRead
from .view import RepositoryView

WORKER_THREADS = 16
TOP_TIMEOUT = 1.0            # the root and versions/ change when backups finish
VERSION_TIMEOUT = 3600.0     # a version's content never changes
REFRESH_SECONDS = 2.0        # the version list is re-read from the local index this often
READDIR_PAGE = 128


def _entry(attr: Attr) -> pyfuse3.EntryAttributes:
    e = pyfuse3.EntryAttributes()
    e.st_ino = attr.ino
    e.generation = 0
    e.entry_timeout = e.attr_timeout = VERSION_TIMEOUT if attr.immutable else TOP_TIMEOUT
    e.st_mode = attr.mode
    e.st_nlink = attr.nlink
    e.st_uid = attr.uid
    e.st_gid = attr.gid
    e.st_rdev = attr.rdev
    e.st_size = attr.size
    e.st_blksize = 128 * 1024
    e.st_blocks = attr.blocks
    e.st_atime_ns = attr.atime_ns
    e.st_mtime_ns = attr.mtime_ns
    e.st_ctime_ns = attr.ctime_ns
    return e


def _errno_of(e: BaseException) -> int:
    """The errno a request answers for `e`: the adapter's one mapping of domain errors."""
    if isinstance(e, FsOpError):
        return e.errno
    if isinstance(e, PathNotFound):
        return errno.ENOENT
    if isinstance(e, (PermissionDenied, AuthenticationFailed)):
        return errno.EACCES
    # A corrupt or missing object, a storage failure, a full disk, any other error, and bugs.
    return errno.EIO


def _is_answer(e: BaseException) -> bool:
    """An ordinary answer to a request (ENOENT, ENOTDIR...), not a failure worth a log line."""
    return isinstance(e, (FsOpError, PathNotFound))


class Listing:
    """An open directory: where its listing is, and the entries read but not yet sent."""

    def __init__(self, ino: int):
        self.ino = ino
        self.offset = 0
        self.entries: deque = deque()
        self.complete = False                  # the last page came back short: nothing after `entries`


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    # The kernel enforces the POSIX ACLs backed up as system.posix_acl_access xattrs (with the
    # mount's default_permissions): with --allow-other, a user an ACL denies reads nothing.
    enable_acl = True

    def __init__(self, view: RepositoryView, xattrs: bool = True, after_init: Callable[[], None] | None = None):
        super().__init__()
        self.view = view
        self.xattrs = xattrs         # False: xattr requests answer ENOSYS, and the kernel stops making them
        self.after_init = after_init  # run once the kernel's INIT request is answered
        self.limiter = trio.CapacityLimiter(WORKER_THREADS)
        self.open_files: dict[int, OpenFile] = {}
        self.listings: dict[int, Listing] = {}
        self.next_fh = 1

    async def _call(self, fn, *args):
        """Run a view method in a worker thread; map every failure to a FUSEError."""
        try:
            return await trio.to_thread.run_sync(functools.partial(fn, *args), limiter=self.limiter)
        except pyfuse3.FUSEError:
            raise
        except Exception as e:   # noqa: BLE001 - the mount must never die of one request
            raise self._failed(e, f"answer {fn.__name__}") from None

    def _point(self, fn, *args, what=None):
        """Run a view method that makes only a few primary-key lookups or copies bytes in memory,
        here on the trio thread: tens of microseconds, where a hop to a worker thread costs ten
        times that (an `ls -l` of a big directory makes three such requests per entry). `what`
        (a function, called only on failure) names the request in the log line."""
        try:
            return fn(*args)
        except Exception as e:   # noqa: BLE001 - the mount must never die of one request
            raise self._failed(e, what() if what else f"answer {fn.__name__}") from None

    def _failed(self, e: Exception, what: str) -> pyfuse3.FUSEError:
        """The FUSEError that answers a request that failed with `e`, logged unless it is an
        ordinary answer: one line (throttled) for an FsbackupError, a traceback for a bug."""
        if not _is_answer(e):
            if isinstance(e, FsbackupError):
                self.view.messages.error(error_kind(e), f"cannot {what}: {e}")
            else:
                self.view.messages.error(error_kind(e), f"unexpected error (please report it) while trying to "
                                                        f"{what}: {type(e).__name__}: {e}", exc_info=e)
        return pyfuse3.FUSEError(_errno_of(e))

    def _path_of(self, ino: int) -> str:
        """The path of `ino` for a log line, or its inode number when it cannot be had."""
        try:
            return self.view.path_of(ino)
        except Exception:   # noqa: BLE001 - only a log line depends on it
            return f"inode {ino}"

    def init(self):
        # Called while the kernel's INIT request is answered, before the answer goes out: what
        # must follow the answer runs at the loop's next turn.
        if self.after_init is not None:
            trio.lowlevel.current_trio_token().run_sync_soon(self.after_init)

    # ---- reading the tree -------------------------------------------------------------------

    async def _answer(self, inode, fn, *args):
        """`fn(*args)`, a request about `inode`: on the trio thread (`_point`), or in a worker thread
        when the view says its answers may take milliseconds (history/), which must not stall the
        requests of everyone else."""
        if self.view.answers_slowly(inode):
            return await self._call(fn, *args)
        return self._point(fn, *args)

    async def lookup(self, parent_inode, name, ctx=None):
        return _entry(await self._answer(parent_inode, self.view.lookup, parent_inode, name))

    async def getattr(self, inode, ctx=None):
        return _entry(await self._answer(inode, self.view.getattr, inode))

    async def readlink(self, inode, ctx):
        return self._point(self.view.readlink, inode)

    async def opendir(self, inode, ctx):
        # (no query: the kernel opens only inodes it knows as directories; a version gone since
        # lists as ENOENT)
        fh = self.next_fh
        self.next_fh += 1
        self.listings[fh] = Listing(inode)
        return fh

    async def readdir(self, fh, start_id, token):
        # Pages are bounded indexed range queries, answered here without a thread hop. The kernel's
        # buffer takes a few dozen entries with attributes per call: what did not fit waits in the
        # listing for the next call, which asks for it by its offset.
        listing = self.listings[fh]
        if start_id != listing.offset:            # seekdir or rewinddir: start over from there
            listing.entries.clear()
            listing.offset, listing.complete = start_id, False
        while True:
            if not listing.entries:
                if listing.complete:
                    return
                page = await self._answer(listing.ino, self.view.readdir, listing.ino, listing.offset, READDIR_PAGE)
                listing.complete = len(page) < READDIR_PAGE
                listing.entries.extend(page)
                if not page:
                    return
            name, attr, next_offset = listing.entries[0]
            if not pyfuse3.readdir_reply(token, name, _entry(attr), next_offset):
                return
            listing.entries.popleft()
            listing.offset = next_offset

    async def releasedir(self, fh):
        self.listings.pop(fh, None)

    async def getxattr(self, inode, name, ctx):
        if not self.xattrs:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        return self._point(self.view.getxattr, inode, name, ctx.uid == 0)

    async def listxattr(self, inode, ctx):
        if not self.xattrs:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        return self._point(self.view.listxattr, inode, ctx.uid == 0)

    async def statfs(self, ctx):
        info = await self._call(self.view.statfs)
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = info["bsize"]
        s.f_blocks = info["blocks"]
        s.f_bfree = s.f_bavail = info["bfree"]
        s.f_files = info["files"]
        s.f_ffree = s.f_favail = info["ffree"]
        s.f_namemax = info["namemax"]
        return s

    async def access(self, inode, mode, ctx):
        if mode & os.W_OK:
            raise pyfuse3.FUSEError(errno.EROFS)

    def forget(self, inode_list):
        return None          # inodes are derived from the index: nothing to release

    # ---- reading files ----------------------------------------------------------------------

    async def open(self, inode, flags, ctx):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT):
            raise pyfuse3.FUSEError(errno.EROFS)
        f = self._point(self.view.open, inode)     # one indexed query; the first block's load begins
        fh = self.next_fh
        self.next_fh += 1
        self.open_files[fh] = f
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    async def read(self, fh, off, size):
        f = self.open_files.get(fh)
        if f is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        what = lambda: f"read {self._path_of(f.ino)}"     # noqa: E731 - named only on failure
        for _ in range(READ_ATTEMPTS):
            started = self._point(self.view.start_read, f, off, size, what=what)
            if not isinstance(started, PendingRead):
                return started                             # in memory: no thread, no wait
            for fut in started.waiting():
                await _settled(fut)
            data = self._point(started.assemble, what=what)
            if data is not None:
                return data
        raise self._failed(BackendError(f"its blocks were abandoned by {READ_ATTEMPTS} loads in a row"), what())

    async def release(self, fh):
        self.open_files.pop(fh, None)

    # ---- everything that would write: read-only -------------------------------------------

    async def _read_only(self, *args, **kwargs):
        raise pyfuse3.FUSEError(errno.EROFS)

    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = _read_only
    create = write = setxattr = removexattr = fsync = fsyncdir = _read_only
    # No `flush`: pyfuse3 then answers ENOSYS, and the kernel stops sending a FLUSH with every
    # close (a request per file read, for nothing to do on a read-only file system).


async def _settled(fut: Future) -> None:
    """Wait until a fetch thread's Future is done, without a worker thread: its callback wakes the
    trio thread (a thread hop costs hundreds of microseconds; most reads of a small file find the
    block on its way, started by the open or by the file before it)."""
    if fut.done():
        return
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def wake(_: Future) -> None:
        try:
            token.run_sync_soon(done.set)
        except trio.RunFinishedError:
            pass                       # the mount ended meanwhile: no one waits any more
    fut.add_done_callback(wake)
    await done.wait()


async def serve(operations: Operations, on_ready=None) -> None:
    """Run the FUSE loop (pyfuse3.init must have been called with `operations`) until unmounted or signalled."""
    view = operations.view
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_refresh_versions, view, operations.xattrs)
        nursery.start_soon(_stop_on_signals)
        if on_ready:
            on_ready()
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _refresh_versions(view: RepositoryView, xattrs: bool) -> None:
    """Versions recorded in the local index (by a backup on this machine, or by the view's sync
    with the repository) appear, and removed ones vanish, within a few seconds. (`xattrs`: whether
    the mount answers xattr requests; if not, a new version that has some is named in the log.)"""
    while True:
        await trio.sleep(REFRESH_SECONDS)
        try:
            changed = await trio.to_thread.run_sync(view.refresh_versions)
        except Exception as e:  # noqa: BLE001 - keep serving with the list we have
            view.messages.error(error_kind(e), f"cannot re-read the version list: {e}",
                                exc_info=None if isinstance(e, FsbackupError) else e)
            continue
        if changed:
            await trio.to_thread.run_sync(_invalidate, view.invalidations(changed))
            if not xattrs:
                await trio.to_thread.run_sync(view.warn_of_hidden_xattrs, changed)


def _invalidate(stale: Invalidations) -> None:
    """Make the kernel forget what the view says is stale (may block: runs in a thread)."""
    for inode in stale.inodes:
        try:
            pyfuse3.invalidate_inode(inode, attr_only=False)
        except OSError:
            pass
    for parent, name in stale.entries:
        try:
            pyfuse3.invalidate_entry(parent, name)
        except OSError:
            pass


async def _stop_on_signals() -> None:
    """Unmount cleanly on Ctrl-C, SIGTERM, and SIGHUP (the terminal the mount runs in was closed):
    dying of a signal would leave a dead mount ("Transport endpoint is not connected")."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for _ in signals:
            pyfuse3.terminate()
            return
