"""`fsbackup mount`: every version as a read-only filesystem.

    namespace.py   the top level (root, versions/, latest) as node classes, and inode numbering
    view.py        a version's tree and its files as a filesystem: lookups, listings, reads, caches
    diskcache.py   the cache of fetched blocks on disk (still encrypted)
    fuse.py        the FUSE adapter: kernel requests to view calls, errors to errnos (nothing else)
    session.py     the command: checks, daemonizing, the FUSE session's life cycle; umount

The view is plain Python, tested without a kernel; only fuse.py and session.py import pyfuse3.
"""
from .session import is_dead_mount, mount, umount

__all__ = ["is_dead_mount", "mount", "umount"]
