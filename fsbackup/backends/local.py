"""A repository in a local directory (or a mounted NAS path)."""
from __future__ import annotations

import errno
import os
import secrets
import time
from contextlib import contextmanager
from typing import Iterator

from ..errors import BackendError, NoSpace, NoSuchObject, PermissionDenied, RepositoryNotFound, os_error_kind
from ..fsutil import not_a_folder
from . import Backend, BackendTraits, Latency

TMP_PREFIX = ".tmp-"


@contextmanager
def _os_errors(name: str, listing: bool = False):
    """Translate OSError into the backend contract's errors. In a `listing`, a folder that
    vanished or is not a folder fails the listing like any other unreadable folder."""
    try:
        yield
    except FileNotFoundError:
        if listing:
            raise BackendError(f"cannot list repository folder {name}: it vanished while listing") from None
        raise NoSuchObject(name) from None
    except NotADirectoryError:
        if listing:
            raise BackendError(f"cannot list repository folder {name}: it is not a folder "
                               "(check the repository's folders)") from None
        raise BackendError(f"repository I/O error on {name}: a folder on its path is a file") from None
    except OSError as e:
        if listing and e.errno in (errno.EACCES, errno.EPERM):
            raise PermissionDenied(f"cannot list repository folder {name}: {e.strerror}; check the "
                                   "repository's permissions") from None
        kind = os_error_kind(e)
        if kind is NoSpace:
            raise NoSpace(f"no space left on the repository's disk while writing {name}") from None
        if kind is PermissionDenied:
            raise PermissionDenied(f"permission denied on repository object {name}: {e.strerror}") from None
        raise BackendError(f"repository I/O error on {name}: {e.strerror or e}",
                           temporary=e.errno in (errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.EINTR)) from None


def open_local(url: str) -> "LocalBackend":
    """The backend for a `file://PATH` URL or a plain path; RepositoryNotFound when a file stands
    where the repository's folder (or one above it) should be."""
    root = url.removeprefix("file://")
    blocker = not_a_folder(root)
    if blocker:
        raise RepositoryNotFound(f"{blocker} is a file, not a repository folder; check --repo")
    return LocalBackend(root)


class LocalBackend(Backend):
    """Objects as files below `root`. Puts publish by rename (atomic, and listed at once)."""

    traits = BackendTraits(atomic_replace=True, immediate_listing=True, latency=Latency.LOCAL)

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.url = self.root

    def _path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def put(self, name: str, data: bytes) -> None:
        # Write to a temporary name, fsync, rename, fsync the directory: publish atomically.
        path = self._path(name)
        folder = os.path.dirname(path)
        tmp = os.path.join(folder, TMP_PREFIX + secrets.token_hex(8))
        with _os_errors(name):
            os.makedirs(folder, exist_ok=True)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
            dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        with _os_errors(name):
            fd = os.open(self._path(name), os.O_RDONLY)
            try:
                if length is None:
                    length = max(0, os.fstat(fd).st_size - offset)
                parts = []
                while length > 0:
                    part = os.pread(fd, length, offset)
                    if not part:
                        break
                    parts.append(part)
                    offset += len(part)
                    length -= len(part)
                return parts[0] if len(parts) == 1 else b"".join(parts)
            finally:
                os.close(fd)

    def size(self, name: str) -> int:
        with _os_errors(name):
            return os.stat(self._path(name)).st_size

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        for name, size, _ in self.list_modified(prefix):
            yield name, size

    def list_modified(self, prefix: str = "") -> Iterator[tuple[str, int, float]]:
        # Walk only the folder the prefix names, so listing 'versions/' never touches data/.
        # Every folder must read: callers conclude "deleted" from what a listing lacks, so a
        # folder that cannot be read (permissions, I/O error, a file in its place) fails the
        # listing instead of listing as empty. Only a missing top folder is an empty listing
        # (a new repository has no versions/ yet).
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self._path(folder) if folder else self.root
        try:
            os.stat(start)
        except FileNotFoundError:
            return
        except OSError:
            pass                                  # reported by the walk below, with its folder
        found: list[tuple[str, int, float]] = []
        seen: set[tuple[int, int]] = set()        # folders by (dev, ino): a symlink loop is walked once
        pending = [(start, folder + "/" if folder else "")]
        while pending:
            path, rel = pending.pop()
            with _os_errors(rel or "/", listing=True):
                st = os.stat(path)
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                with os.scandir(path) as entries:
                    for entry in entries:
                        name = rel + entry.name
                        if entry.name.startswith(TMP_PREFIX) or not name.startswith(prefix):
                            continue
                        try:
                            if entry.is_dir():
                                pending.append((entry.path, name + "/"))
                            elif entry.is_file():
                                st = entry.stat()
                                found.append((name, st.st_size, st.st_mtime))
                        except FileNotFoundError:
                            continue          # an object deleted while listing
        yield from found

    def remove_partial_uploads(self, older_than_seconds: float) -> tuple[int, int]:
        """Remove the temporaries of puts (`TMP_PREFIX` files) not written to for `older_than_seconds`,
        in every folder of the repository. Links are neither followed nor removed: puts make
        plain files and folders only, so a link is someone else's."""
        cutoff = time.time() - older_than_seconds
        removed, size = 0, 0
        folders = [self.root]
        with _os_errors("/"):
            while folders:
                try:
                    entries = list(os.scandir(folders.pop()))
                except FileNotFoundError:
                    continue        # a folder removed while we walked
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            folders.append(entry.path)
                            continue
                        if not (entry.name.startswith(TMP_PREFIX) and entry.is_file(follow_symlinks=False)):
                            continue
                        st = entry.stat(follow_symlinks=False)
                        if st.st_mtime < cutoff:
                            os.unlink(entry.path)
                            removed += 1
                            size += st.st_size
                    except FileNotFoundError:
                        continue    # renamed by its put, or removed by another run
        return removed, size

    def delete(self, name: str) -> None:
        with _os_errors(name):
            try:
                os.unlink(self._path(name))
            except FileNotFoundError:
                pass
