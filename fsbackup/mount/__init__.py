"""`fsbackup mount`: every version as a read-only filesystem.

    namespace.py   the top level (root, versions/, latest) as node classes, and inode numbering
    view.py        the repository as a filesystem: lookups, listings, attributes, xattrs, opens
    reading.py     reads: the blocks a read needs, loaded in fetch threads, runs and read-ahead
    diskcache.py   the cache of fetched blocks on disk (still encrypted)
    sync.py        keeping the local index in step with the repository while mounted
    log.py         the mount's log, one line per kind of failure per minute
    fuse.py        the FUSE adapter: kernel requests to view calls, errors to errnos (nothing else)
    session.py     the command: checks, daemonizing, the FUSE session's life cycle; umount

The view is plain Python, tested without a kernel; only fuse.py and session.py import pyfuse3.
"""
from .session import is_dead_mount, mount, umount

__all__ = ["is_dead_mount", "mount", "umount"]
