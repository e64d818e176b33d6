"""Walking a directory tree by descriptors, never by path (restore and backup's scan).

Restore runs as root in folders other users can write, and backup reads trees other users can
change. A path such as `target/a/b/f` is resolved again at every use, so a user who replaces
`a` by a symlink between two uses redirects the second one anywhere. Here, each directory is
opened once relative to its parent's descriptor with O_NOFOLLOW | O_DIRECTORY, and every entry
below it is reached relative to that descriptor: a directory replaced by a symlink is never
followed (its opening fails with ELOOP or ENOTDIR), and one moved away is not looked for again
by name while its descriptor is open.
"""
from __future__ import annotations

import errno
import fnmatch
import os
from collections import OrderedDict
from typing import Iterable

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def not_a_folder(path: str) -> str | None:
    """What keeps `path` from being a folder: the path itself, or the nearest one above it that
    exists, when that is not a folder (a file); None when `path` is a folder or can be made one."""
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return None if os.path.isdir(path) else path


def outermost(paths) -> list[bytes]:
    """The paths (absolute, bytes) that lie inside no other of them: a path inside another given
    path is already covered by it. Sorted."""
    given = set(paths)
    return [p for p in sorted(given) if not _inside(p, given)]


def _inside(path: bytes, folders: set[bytes]) -> bool:
    """Whether a folder above `path` (absolute, normalized) is one of `folders`: its ancestors are
    looked up, so that a list of many paths (backup --files-from) costs its length times its depth."""
    while path != b"/":
        path = os.path.dirname(path)
        if path in folders:
            return True
    return False


class GlobMatcher:
    """GLOBs as `backup --exclude` and `restore --include/--exclude` take them: a pattern with a '/'
    matches whole paths (absolute: /home/*/.cache), any other pattern matches names (*.tmp). The
    rules are fnmatch's, and a '*' matches '/' too; a trailing '/' is ignored. A walk that leaves
    out (or takes in) a directory whose path matches does so with everything below it: that is how
    a pattern matches "a path or a parent of it". `ignoring_case` (`--iexclude`, `--iinclude`):
    patterns whose letters match whatever their case, also beyond ASCII (both sides are
    casefolded; the bytes of a name that is not UTF-8 stay surrogates, which match only themselves)."""

    def __init__(self, patterns: Iterable[str], ignoring_case: Iterable[str] = ()):
        patterns = [p.rstrip("/") for p in patterns]
        folded = [p.rstrip("/").casefold() for p in ignoring_case]
        self.path_patterns = [os.fsencode(p) for p in patterns if "/" in p]
        self.name_patterns = [os.fsencode(p) for p in patterns if "/" not in p]
        self.folded_path_patterns = [p for p in folded if "/" in p]
        self.folded_name_patterns = [p for p in folded if "/" not in p]

    def __bool__(self) -> bool:
        return bool(self.path_patterns or self.name_patterns or self.folded_path_patterns
                    or self.folded_name_patterns)

    def matches(self, path: bytes, name: bytes) -> bool:
        """Whether the entry `name` at `path` (absolute) matches one of the patterns."""
        if (any(fnmatch.fnmatchcase(name, p) for p in self.name_patterns)
                or any(fnmatch.fnmatchcase(path, p) for p in self.path_patterns)):
            return True
        if self.folded_name_patterns:
            folded_name = os.fsdecode(name).casefold()
            if any(fnmatch.fnmatchcase(folded_name, p) for p in self.folded_name_patterns):
                return True
        if self.folded_path_patterns:
            folded_path = os.fsdecode(path).casefold()
            return any(fnmatch.fnmatchcase(folded_path, p) for p in self.folded_path_patterns)
        return False


def open_dir(name: bytes, dir_fd: int) -> int:
    """The directory `name` in `dir_fd`, opened; a symlink there is not followed (ELOOP)."""
    return os.open(name, DIR_FLAGS, dir_fd=dir_fd)


def split(rel: bytes) -> tuple[bytes, bytes]:
    """(the parent's relative path, the name) of a path relative to a base (b"a/b" -> b"a", b"b")."""
    parent, _, name = rel.rpartition(b"/")
    return parent, name


def at_path(dir_fd: int, name: bytes) -> bytes:
    """A path naming `name` in the open directory `dir_fd`, for the calls that take no dir_fd
    (xattrs): through /proc, the directory is the one open, not one found again by its name.
    The caller still asks not to follow `name` itself (follow_symlinks=False)."""
    return b"/proc/self/fd/%d/%s" % (dir_fd, name)


def chmod_at(name: bytes, mode: int, dir_fd: int) -> None:
    """chmod of the entry `name` in `dir_fd`, never through a symlink: a symlink found there
    (swapped in meanwhile) raises ELOOP. (fchmodat refuses AT_SYMLINK_NOFOLLOW on a symlink;
    Python reports that as ValueError.)"""
    try:
        os.chmod(name, mode, dir_fd=dir_fd, follow_symlinks=False)
    except (ValueError, NotImplementedError):
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), name) from None
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), name) from None
        raise


class DirFds:
    """Open descriptors of the directories below one base directory, by relative path (b"" is
    the base itself, b"a/b" the directory b inside a).

    A directory not open is opened from its nearest open ancestor, one component at a time with
    O_NOFOLLOW | O_DIRECTORY. Descriptors stay open for reuse (a restore writes the files of one
    directory in batches, a scan lists a directory then looks at its entries), but `trim` closes
    the least recently used beyond `limit`, so deep or wide trees stay within the process's
    descriptor limit. A descriptor from `get` is valid until the next `trim`, `forget` or `close`.
    """

    def __init__(self, base_fd: int, limit: int = 64):
        self.base_fd = base_fd
        self.limit = limit
        self.fds: OrderedDict[bytes, int] = OrderedDict()

    def get(self, rel: bytes) -> int:
        if not rel:
            return self.base_fd
        fd = self.fds.get(rel)
        if fd is not None:
            self.fds.move_to_end(rel)
            return fd
        parts = rel.split(b"/")
        known = len(parts) - 1              # the nearest open ancestor: parts[:known]
        while known and b"/".join(parts[:known]) not in self.fds:
            known -= 1
        parent, kept = self.get(b"/".join(parts[:known])), True
        for i in range(known, len(parts)):
            try:
                fd = open_dir(parts[i], parent)
            finally:
                if not kept:
                    os.close(parent)
            # On a long way down, keep only some of the directories passed (descriptors are finite).
            kept = i == len(parts) - 1 or len(self.fds) < 2 * self.limit
            if kept:
                self.add(b"/".join(parts[:i + 1]), fd)
            parent = fd
        return parent

    def add(self, rel: bytes, fd: int) -> None:
        """Take `fd`, the open directory at `rel` (one just made), into the set."""
        old = self.fds.pop(rel, None)
        if old is not None:
            os.close(old)
        self.fds[rel] = fd

    def trim(self) -> None:
        """Close the least recently used descriptors beyond the limit."""
        while len(self.fds) > self.limit:
            os.close(self.fds.popitem(last=False)[1])

    def forget(self, rel: bytes) -> None:
        """Close `rel` and everything open below it (it is being removed or replaced)."""
        below = rel + b"/"
        for key in [k for k in self.fds if k == rel or k.startswith(below)]:
            os.close(self.fds.pop(key))

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.popitem()[1])
