"""A repository in a Backblaze B2 bucket: `b2://BUCKET/PREFIX`, through b2sdk's `v2` API.

Credentials come from B2_APPLICATION_KEY_ID and B2_APPLICATION_KEY (docs/b2.md says which
capabilities the key needs). Objects are stored as PREFIX/name; the prefix is optional.

b2sdk errors are translated in one place, `_b2_errors`. b2sdk already retries what it calls
retryable (connection errors, timeouts, 5xx, 429/503 after the server's Retry-After, expired auth
tokens after re-authorizing) a few times; what escapes becomes a `BackendError` whose `temporary`
flag and `retry_after` tell the layers above whether waiting and trying again may help.

The B2 API that `B2Backend` talks to is b2sdk's configuration `api_config` (the real service by
default); tests pass one that reaches b2sdk's in-memory simulator instead.
"""
from __future__ import annotations

import io
import os
import re
import threading
from contextlib import contextmanager
from typing import Iterator

import requests
from b2sdk.v2 import DEFAULT_HTTP_API_CONFIG, B2Api, B2HttpApiConfig, InMemoryAccountInfo, InMemoryCache
from b2sdk.v2.exception import (
    AccessDenied,
    B2Error,
    BrokenPipe,
    BucketIdNotFound,
    ConnectionReset,
    FileNotPresent,
    InvalidAuthToken,
    InvalidRange,
    MaxRetriesExceeded,
    NonExistentBucket,
    NotAllowedByAppKeyError,
    RestrictedBucket,
    RestrictedBucketMissing,
    StorageCapExceeded,
    TransactionCapExceeded,
    Unauthorized,
    UnknownHost,
    UnsatisfiableRange,
)

from ..errors import (
    AuthenticationFailed,
    BackendError,
    FsbackupError,
    NoSpace,
    NoSuchObject,
    PermissionDenied,
    RepositoryNotFound,
    UsageError,
)
from . import Backend, BackendTraits, Latency

ENV_KEY_ID = "B2_APPLICATION_KEY_ID"
ENV_KEY = "B2_APPLICATION_KEY"
REALM = "production"
DEFAULT_CONNECTIONS = 4
BUCKET_NAME = re.compile(r"[A-Za-z0-9-]{6,63}")


# ---- error translation ----------------------------------------------------------------------

def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _translate(e: B2Error, what: str) -> FsbackupError:
    """The fsbackup error for a b2sdk error that escaped b2sdk's own retries during `what`."""
    if isinstance(e, MaxRetriesExceeded) and e.exception_info_list:
        # b2sdk tried an upload several times; the last failure says what kind of problem it is.
        inner = _translate(e.exception_info_list[-1], what)
        if isinstance(inner, BackendError) and inner.temporary:
            inner.args = (f"{inner} (after {e.limit} tries)",)
        return inner
    detail = _one_line(e)
    if isinstance(e, (NonExistentBucket, BucketIdNotFound, RestrictedBucketMissing)):
        return RepositoryNotFound(f"the B2 bucket is gone ({detail}); check the repository URL")
    if isinstance(e, InvalidAuthToken):
        # After a successful authorization this is an expired token that b2sdk's one automatic
        # re-authorization did not cure (e.g. the service was busy): retrying later may help.
        return BackendError(f"B2 {what} failed: authorization token expired ({detail})", temporary=True)
    if isinstance(e, (Unauthorized, AccessDenied, NotAllowedByAppKeyError, RestrictedBucket)):
        return PermissionDenied(f"B2 refused {what}: {detail}; check the application key's capabilities "
                                f"and bucket (docs/b2.md)")
    if isinstance(e, StorageCapExceeded):
        return NoSpace(f"B2 storage cap reached during {what}; raise the cap in the B2 web console")
    if isinstance(e, TransactionCapExceeded):
        return BackendError(f"B2 transaction cap reached during {what}; raise the cap in the B2 web console")
    # Connection errors, timeouts, 408, 429, 5xx (503 service busy), truncated downloads: b2sdk
    # marks them retryable; the server's Retry-After, when it sent one, travels on. A reset or
    # broken connection and a failed DNS lookup are network trouble too.
    temporary = e.should_retry_http() or isinstance(e, (ConnectionReset, BrokenPipe, UnknownHost))
    retry_after = getattr(e, "retry_after_seconds", None)
    return BackendError(f"B2 {what} failed: {detail}", temporary=temporary,
                        retry_after=float(retry_after) if retry_after is not None else None)


@contextmanager
def _b2_errors(what: str, name: str | None = None):
    """Translate what escapes b2sdk during `what` (on object `name`, repository-relative) into our errors."""
    try:
        yield
    except FileNotPresent:
        if name is None:
            raise BackendError(f"B2 {what} failed: a file vanished while listing", temporary=True) from None
        raise NoSuchObject(name) from None
    except B2Error as e:
        raise _translate(e, what) from None
    except (requests.RequestException, OSError) as e:
        # A connection dropped while b2sdk streamed a body: not translated by b2sdk itself.
        raise BackendError(f"B2 {what} failed: {_one_line(e) or type(e).__name__}", temporary=True) from None


# ---- the backend --------------------------------------------------------------------------------

def new_api(config: B2HttpApiConfig = DEFAULT_HTTP_API_CONFIG) -> B2Api:
    """A new, unauthorized B2Api speaking to the B2 that `config` reaches."""
    # In-memory account info: nothing is written to ~/.b2_account_info. It keeps the key, so b2sdk
    # re-authorizes by itself when the token expires (after 24 hours).
    return B2Api(InMemoryAccountInfo(), cache=InMemoryCache(), api_config=config)


def parse_url(url: str) -> tuple[str, str]:
    """'b2://BUCKET/PREFIX' -> (bucket, prefix without surrounding slashes; '' when absent)."""
    rest = url.removeprefix("b2://")
    bucket, _, prefix = rest.partition("/")
    if not BUCKET_NAME.fullmatch(bucket):
        raise UsageError(f"'{url}' is not a B2 repository URL: use b2://BUCKET or b2://BUCKET/PREFIX "
                         f"(bucket names are 6 to 63 letters, digits and '-')")
    return bucket, "/".join(part for part in prefix.split("/") if part)


def _credentials() -> tuple[str, str]:
    key_id, key = os.environ.get(ENV_KEY_ID, ""), os.environ.get(ENV_KEY, "")
    if not key_id or not key:
        raise UsageError(f"no B2 credentials: set {ENV_KEY_ID} and {ENV_KEY} to an application key (docs/b2.md)")
    return key_id, key


class B2Backend(Backend):
    """Objects in a B2 bucket, under an optional prefix.

    Uploads are atomic: B2 makes a file visible only once it is complete (a large file only when
    it is finished), so readers and listings never see a partial object. B2 keeps every version of
    a name; `put` deletes the older versions of the name it wrote and `delete` deletes all of them,
    so exactly one version of each object remains.

    B2 lists a file as soon as its upload returns, and no longer once its versions are deleted.

    Thread-safe: one B2Api serves every thread (b2sdk's uploads and downloads are thread-safe);
    the mount and the backup call it from worker threads.
    """

    traits = BackendTraits(atomic_replace=True, immediate_listing=True, latency=Latency.REMOTE)

    def __init__(self, url: str, api_config: B2HttpApiConfig = DEFAULT_HTTP_API_CONFIG):
        self.url = url
        self.bucket_name, self.prefix = parse_url(url)
        self._key_id, self._secret = _credentials()
        self._config = api_config
        self._connections = DEFAULT_CONNECTIONS
        self._reconnect_lock = threading.Lock()
        self._connect()

    def _connect(self) -> None:
        """Authorize and open the bucket with a new B2Api of this process."""
        api = new_api(self._config)
        try:
            api.authorize_account(REALM, self._key_id, self._secret)
        except (InvalidAuthToken, Unauthorized) as e:
            raise AuthenticationFailed(f"B2 rejected the application key {self._key_id} ({_one_line(e)}): "
                                       f"check {ENV_KEY_ID} and {ENV_KEY}") from None
        except B2Error as e:
            raise _translate(e, "authorization") from None
        except (requests.RequestException, OSError) as e:
            raise BackendError(f"cannot reach B2 to authorize: {_one_line(e)}", temporary=True) from None
        with _b2_errors(f"opening bucket {self.bucket_name}"):
            try:
                bucket = api.get_bucket_by_name(self.bucket_name)
            except (NonExistentBucket, RestrictedBucketMissing):
                raise RepositoryNotFound(f"no B2 bucket named '{self.bucket_name}' for this application key; "
                                         f"create it first (docs/b2.md)") from None
            except RestrictedBucket as e:
                raise RepositoryNotFound(f"no B2 bucket named '{self.bucket_name}' for this application key "
                                         f"(it may only use bucket '{e.bucket_name}')") from None
        self.api, self.bucket, self._pid = api, bucket, os.getpid()
        self._widen_upload_pool()

    def _b2(self):
        """The bucket, through a B2Api made in this process.

        b2sdk's thread pools do not survive a fork: in a child (the mount's --daemon forks after
        opening the repository) a download would wait forever for a pool thread that stayed in
        the parent. So a forked child makes its own B2Api on first use.
        """
        if self._pid != os.getpid():
            with self._reconnect_lock:
                if self._pid != os.getpid():
                    self._connect()
        return self.bucket

    @property
    def connections(self) -> int:
        return self._connections

    @connections.setter
    def connections(self, n: int) -> None:
        self._connections = n
        self._widen_upload_pool()

    def _widen_upload_pool(self) -> None:
        # b2sdk runs every upload (and every part of a large one) on its own thread pool; keep it at
        # least as wide as the number of uploads callers run at once, so none of them waits there.
        pool = self.api.services.upload_manager
        if pool.get_thread_pool_size() < self._connections:
            pool.set_thread_pool_size(self._connections)

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    # ---- writing --------------------------------------------------------------------------------

    def put(self, name: str, data: bytes) -> None:
        """Upload whole; visible only once complete (B2 uploads are atomic), then drop older versions.

        b2sdk chooses the upload method by size: up to the part size the server recommends at
        authorization (100 MB on B2 today) it is one b2_upload_file call; above, a "large file" of
        parts uploaded in parallel and finished with b2_finish_large_file, which is when it becomes
        visible. Either way b2sdk retries a failed upload (or part) a few times by itself.
        """
        key = self._key(name)
        with _b2_errors(f"upload of {name}", name):
            new = self._b2().upload_bytes(data, key)
            self._delete_versions(key, older_than=new.id_)

    def _delete_versions(self, key: str, older_than: str | None = None) -> None:
        """Delete every version of `key`, or only those uploaded before version `older_than`.

        B2 lists the versions of a name newest first. Deleting only what is older than our own
        upload means two concurrent puts of one name leave the newer object, never none.
        """
        bucket = self._b2()
        versions = list(bucket.list_file_versions(key))
        if older_than is not None:
            ids = [v.id_ for v in versions]
            versions = versions[ids.index(older_than) + 1:] if older_than in ids else []
        for version in versions:
            try:
                bucket.delete_file_version(version.id_, key)
            except FileNotPresent:
                pass     # someone else deleted it meanwhile

    def delete(self, name: str) -> None:
        with _b2_errors(f"delete of {name}", name):
            self._delete_versions(self._key(name))

    def hidden(self, names: set[str]) -> set[str]:
        # A name not listed of which B2 still holds a version: hidden (B2's hide marker lists as
        # its newest version), since `delete` removes every version.
        bucket = self._b2()
        kept = set()
        for name in sorted(names):
            with _b2_errors(f"listing of the versions of {name}", name):
                if any(True for _ in bucket.list_file_versions(self._key(name))):
                    kept.add(name)
        return kept

    # ---- reading --------------------------------------------------------------------------------

    def _download(self, name: str, range_: tuple[int, int] | None) -> bytes:
        buffer = io.BytesIO()
        with _b2_errors(f"download of {name}", name):
            try:
                self._b2().download_file_by_name(self._key(name), range_=range_).save(buffer)
            except InvalidRange:
                raise _PastEnd() from None
            except UnsatisfiableRange:
                raise _StartsPastEnd() from None
        return buffer.getvalue()

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if length is None:
            if offset == 0:
                return self._download(name, None)   # whole: b2sdk checks it against its SHA-1
            length = self.size(name) - offset
        if length <= 0:
            self.size(name)                         # NoSuchObject when missing
            return b""
        try:
            return self._download(name, (offset, offset + length - 1))
        except _PastEnd:
            # The range reaches past the end: b2sdk refuses a shorter answer than it asked for
            # (InvalidRange). Ask again for what exists; rare, since callers know object sizes.
            end = self.size(name)
            return self._download(name, (offset, end - 1)) if offset < end else b""
        except _StartsPastEnd:
            return b""

    def size(self, name: str) -> int:
        with _b2_errors(f"size of {name}", name):
            return self._b2().get_file_info_by_name(self._key(name)).size

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        for name, size, _ in self.list_modified(prefix):
            yield name, size

    def list_modified(self, prefix: str = "") -> Iterator[tuple[str, int, float]]:
        # List only the folder the prefix names (B2 filters by name prefix on the server), so
        # listing 'versions/' never pages through data/; then keep the names that match.
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        root = self._key(folder) if folder else self.prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        with _b2_errors(f"listing of {prefix or '/'}"):
            # latest_only: only visible (current, complete) files; unfinished large files and
            # older versions are not listed.
            for version, _ in self._b2().ls(root, latest_only=True, recursive=True):
                name = version.file_name[strip:]
                if name.startswith(prefix):
                    yield name, version.size, version.upload_timestamp / 1000   # (milliseconds)


class _PastEnd(Exception):
    """Internal: a range read asked for bytes past the end of the object."""


class _StartsPastEnd(Exception):
    """Internal: a range read started at or after the end of the object (B2 answers 416)."""
