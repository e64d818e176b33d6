"""Storage backends: where repository objects live.

One interface, `Backend`, whose docstrings are the contract, and whose `traits` declare what a
backend guarantees beyond it; every backend passes the same contract suite
(tests/backend_contract.py). Only the repository layer talks to backends.

`open_backend(url)` turns a repository URL into a backend: the URL's scheme is looked up in a
table (`register_scheme`), so a new backend is one registration. A plain path is `file`. It
builds the stack every caller gets: retries (retry.py) around bandwidth limits (throttle.py)
around the store.
"""
from __future__ import annotations

import abc
import enum
from dataclasses import dataclass
from typing import Callable, Iterator

from ..errors import RepositoryNotFound, UsageError


class Latency(enum.Enum):
    """How far a store is from this process: callers cache and read ahead by it."""
    LOCAL = "local"       # a directory on this machine or a NAS: a request costs about a system call
    REMOTE = "remote"     # over a network: a request costs a round trip


@dataclass(frozen=True)
class BackendTraits:
    """What a backend guarantees beyond the `Backend` contract; callers decide by these, never
    by a backend's class or URL.

    atomic_replace     a put over an existing name replaces it whole: readers see the old object
                       or the new one, never a mix, nor (once put returns) the old one again
    immediate_listing  an object is listed as soon as its put returns, and not once its delete
                       returns (locks rely on it: a lock written is seen by the next taker)
    latency            `Latency.LOCAL` or `Latency.REMOTE`
    """
    atomic_replace: bool = True
    immediate_listing: bool = True
    latency: Latency = Latency.LOCAL


class Backend(abc.ABC):
    """A flat store of named, immutable objects.

    Names are '/'-separated relative paths made of [A-Za-z0-9._-] parts, e.g. 'data/ab/ab12...';
    no part is '.' or '..' or starts with '.tmp-' (a backend may keep its own files so), and no
    name is the folder of another (as 'a' of 'a/b'). The repository's names (names.py) are such.
    Objects are written once under a fresh name; writing an existing name replaces it whole.

    Failures raise `errors.BackendError` (with `.temporary` telling whether a retry may help),
    `errors.NoSpace` or `errors.PermissionDenied`; a missing object raises `errors.NoSuchObject`.
    Temporary means the same call may succeed later unchanged: network errors and timeouts, a
    busy or failing server (HTTP 408, 429, 5xx; `retry_after` carries the wait it asked for),
    an expired session, a transient local I/O error (EIO, EAGAIN, ETIMEDOUT, EINTR). Anything the
    caller must fix (credentials, permissions, a full disk, a missing bucket, bad requests) is
    permanent. Backends do not retry on their own beyond what their client library does:
    `retry.RetryingBackend`, which `open_backend` puts around every backend, does.

    `connections` is a hint to callers: how many requests (uploads, downloads) suit the store at
    once. Callers may set it (`--connections`). `traits` (`BackendTraits`) declares what else
    callers may rely on; the contract suite checks each declared trait it can.
    """

    url: str
    connections: int = 2
    traits: BackendTraits = BackendTraits()

    @abc.abstractmethod
    def put(self, name: str, data: bytes) -> None:
        """Store `data` under `name`, durably, before returning.

        Atomic visibility: until put returns, readers see either no object or the previous whole
        object; never a partial one, even if the process is killed midway.
        """

    @abc.abstractmethod
    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Return `length` bytes of the object from `offset` (to the end when length is None).

        A range reaching past the end returns the bytes that exist (possibly b'').
        A missing object raises NoSuchObject. Reads are idempotent and may be retried.
        """

    @abc.abstractmethod
    def size(self, name: str) -> int:
        """Size in bytes of the object; NoSuchObject if it does not exist."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """Yield (name, size) of every stored object whose name starts with `prefix`, in no set order.

        Objects being written (not yet visible per `put`) are not listed. A listing is whole or
        raises: any part of the store that cannot be read (a folder without permission, an I/O
        error, a page the server failed to send) raises instead of being left out, because callers
        conclude from what a listing lacks that objects are gone, and delete accordingly.
        """

    @abc.abstractmethod
    def list_modified(self, prefix: str = "") -> Iterator[tuple[str, int, float]]:
        """`list`, with when each object was last written: (name, size, modified), `modified` in
        seconds since the epoch by the store's clock (a file's mtime, an upload's time). Callers
        judge by it whether an object may still belong to a run in progress; whole or raising, as
        `list`."""

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Remove the object. Deleting a missing object is not an error."""

    def remove_partial_uploads(self, older_than_seconds: float) -> tuple[int, int]:
        """Remove what puts that never returned (their process killed midway) left behind, unseen
        by `list`, once it has not been written to for `older_than_seconds`; return how many such
        leftovers were removed and their bytes. Visible objects are never touched, nor anything a
        put of this backend does not make; a leftover gone meanwhile is no error.

        The caller must know that no put still running can be that old: puts in flight are not
        told from dead ones. A backend whose puts leave nothing behind (the default) removes nothing.
        """
        return 0, 0

    def hidden(self, names: set[str]) -> set[str]:
        """Of `names`, objects no longer listed, those the storage still keeps, hidden rather than
        deleted: written over by a hide marker by someone who may write but not delete (a B2 key
        with writeFiles and no deleteFiles). fsbackup never hides: its `delete` removes every
        stored version of a name, so what is kept was not deleted by fsbackup. Storage that
        cannot hide keeps nothing (the default)."""
        return set()

    def exists(self, name: str) -> bool:
        from ..errors import NoSuchObject
        try:
            self.size(name)
            return True
        except NoSuchObject:
            return False

    def close(self) -> None:
        """Release connections. The backend is not used afterwards."""


class WrappingBackend(Backend):
    """A backend that adds behaviour (retries, faults, latency) around another, `inner`: it has
    the inner backend's URL, concurrency and traits, and closing it closes the inner one."""

    def __init__(self, inner: Backend):
        self.inner = inner

    # (read-only views of the inner backend's attributes: a wrapper has no URL or traits of its own)
    @property
    def url(self) -> str:  # type: ignore[override]
        return self.inner.url

    @property
    def traits(self) -> BackendTraits:  # type: ignore[override]
        return self.inner.traits

    @property
    def connections(self) -> int:
        return self.inner.connections

    @connections.setter
    def connections(self, n: int) -> None:
        self.inner.connections = n

    def list_modified(self, prefix: str = "") -> Iterator[tuple[str, int, float]]:
        # Passed through untouched; a wrapper that adds behaviour to listings overrides it with `list`.
        return self.inner.list_modified(prefix)

    def hidden(self, names: set[str]) -> set[str]:
        return self.inner.hidden(names)

    def remove_partial_uploads(self, older_than_seconds: float) -> tuple[int, int]:
        # Passed through untouched (a wrapper that counted or failed it would move the call at
        # which a script of faults strikes); one that adds behaviour to it overrides this.
        return self.inner.remove_partial_uploads(older_than_seconds)

    def close(self) -> None:
        self.inner.close()


Opener = Callable[[str], Backend]
"""Makes the backend for a repository URL of its scheme (the whole URL; for `file`, maybe a plain
path). Raises a one-line `FsbackupError` (UsageError, RepositoryNotFound, ...) on a bad URL."""

_OPENERS: dict[str, Opener] = {}


def register_scheme(scheme: str, opener: Opener) -> Opener | None:
    """Make `scheme://...` URLs open with `opener`; returns the opener it replaces (None if new),
    for a caller that wraps it or puts it back."""
    previous = _OPENERS.get(scheme)
    _OPENERS[scheme] = opener
    return previous


def unregister_scheme(scheme: str) -> None:
    """Forget `scheme` (a caller putting back what `register_scheme` replaced with None)."""
    _OPENERS.pop(scheme, None)


def open_backend(url: str, limit_upload: float = 0, limit_download: float = 0) -> Backend:
    """The backend for a repository URL, wrapped so that temporary failures are retried
    (`retry.RetryingBackend`, with the bound for batch work; the mount sets a shorter one), and,
    when `limit_upload` or `limit_download` (KiB/s; 0: unlimited) is set, so that its puts and gets
    stay within the process's bandwidth (`throttle.ThrottledBackend`, inside the retries: a retry
    sends its bytes again)."""
    from .retry import RetryingBackend
    from .throttle import ThrottledBackend, process_bandwidth
    backend = _plain_backend(url)
    bandwidth = process_bandwidth(limit_upload, limit_download)
    if bandwidth is not None:
        backend = ThrottledBackend(backend, bandwidth)
    return RetryingBackend(backend)


def _plain_backend(url: str) -> Backend:
    """Make the backend for a repository URL by its scheme's opener; a URL without '://' is a path."""
    if not url:
        raise UsageError("no repository given: use --repo URL or set FSBACKUP_REPOSITORY")
    scheme, separator, _ = url.partition("://")
    opener = _OPENERS.get(scheme if separator else "file")
    if opener is None:
        raise RepositoryNotFound(f"unknown repository URL scheme '{scheme}://' "
                                 f"(use a directory path, b2://BUCKET/PREFIX, s3://BUCKET/PREFIX or sftp://USER@HOST/PATH)")
    return opener(url)


def _open_local(url: str) -> Backend:
    from .local import open_local
    return open_local(url)


def _open_b2(url: str) -> Backend:
    from .b2 import B2Backend  # (b2sdk is imported only for b2:// repositories)
    return B2Backend(url)


def _open_sftp(url: str) -> Backend:
    from .sftp import open_sftp  # (paramiko is imported only for sftp:// repositories)
    return open_sftp(url)


def _open_s3(url: str) -> Backend:
    from .s3 import open_s3  # (boto3 is imported only for s3:// repositories)
    return open_s3(url)


register_scheme("file", _open_local)
register_scheme("b2", _open_b2)
register_scheme("sftp", _open_sftp)
register_scheme("s3", _open_s3)
