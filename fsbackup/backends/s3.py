"""A repository in an S3-compatible bucket: `s3://BUCKET/PREFIX`, through botocore (boto3's core:
its client is all fsbackup uses, and importing it alone saves a fifth of a second per command).

Any store that speaks the S3 API: AWS S3, MinIO, Wasabi, Cloudflare R2, Backblaze B2's S3 API...
(docs/s3.md). Objects are stored as PREFIX/name; the prefix is optional.

Where the store is and how to address it come from the environment, which the command line's
options set (cli/repo.py): FSBACKUP_S3_ENDPOINT (`--s3-endpoint`; AWS when unset),
FSBACKUP_S3_REGION (`--s3-region`; else AWS_REGION, AWS_DEFAULT_REGION or the AWS profile's),
FSBACKUP_S3_PATH_STYLE=1 (`--s3-path-style`). Credentials are found as the AWS CLI finds them
(botocore's chain: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE and
the ~/.aws files, an instance role).

botocore's own retries are off: `retry.RetryingBackend` is the one retry loop. botocore's and the
server's errors are translated in one place, `_s3_errors`, into the contract's: temporary for
network errors, timeouts, 408, 429, 5xx and S3's SlowDown / RequestTimeout (with the server's
Retry-After), permanent for the rest.
"""
from __future__ import annotations

import os
import re
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import botocore.exceptions as boto_errors
import botocore.session
from botocore.config import Config

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

ENV_ENDPOINT = "FSBACKUP_S3_ENDPOINT"
ENV_REGION = "FSBACKUP_S3_REGION"
ENV_PATH_STYLE = "FSBACKUP_S3_PATH_STYLE"
# A store reached through an endpoint of its own needs some region to sign requests with; most
# ignore which (Cloudflare R2 documents "auto", which it accepts as well as this).
ENDPOINT_DEFAULT_REGION = "us-east-1"

DEFAULT_CONNECTIONS = 8
MULTIPART_THRESHOLD = 64 << 20   # puts above this go up in parts (S3 allows 5 GB in one)...
PART_SIZE = 16 << 20             # ...of this size (S3's minimum is 5 MiB, its maximum 10,000 parts)
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0

# AWS's rules (3 to 63 lowercase letters, digits, '.' and '-'), widened to the upper case and '_'
# of old us-east-1 buckets and of other stores; the store itself refuses what it does not accept.
BUCKET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]")

# S3 error codes by what they mean for the caller (HTTP statuses decide the rest).
TEMPORARY_CODES = {"SlowDown", "RequestTimeout", "RequestTimeoutException", "InternalError", "ServiceUnavailable",
                   "Throttling", "ThrottlingException", "TooManyRequests", "RequestLimitExceeded",
                   "TooManyRequestsException", "OperationAborted"}
CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
                    "TokenRefreshRequired", "InvalidClientTokenId", "AuthorizationHeaderMalformed"}
DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "403", "Forbidden"}
NO_SPACE_CODES = {"QuotaExceeded", "XMinioStorageFull", "StorageFull"}
MISSING_OBJECT_CODES = {"NoSuchKey", "404", "NotFound"}
CREDENTIAL_VARIABLES = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"


# ---- error translation ----------------------------------------------------------------------

def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _retry_after(headers: dict[str, str]) -> float | None:
    """The wait a Retry-After header asks for, in seconds (None when absent or a date)."""
    value = headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _translate(e: boto_errors.ClientError, what: str, bucket: str) -> FsbackupError:
    """The fsbackup error for an error answer of the S3 server during `what`."""
    error: dict[str, Any] = e.response.get("Error", {})
    meta: dict[str, Any] = e.response.get("ResponseMetadata", {})
    code = str(error.get("Code", ""))
    status = int(meta.get("HTTPStatusCode") or 0)
    message = _one_line(error.get("Message") or code or f"HTTP {status}")
    detail = f"{code}: {message}" if code and code != message else message
    if code == "NoSuchBucket":
        return RepositoryNotFound(f"no S3 bucket named '{bucket}' at this endpoint; create it first, or check "
                                  f"--s3-endpoint and --s3-region (docs/s3.md)")
    if code in CREDENTIAL_CODES:
        return AuthenticationFailed(f"the S3 store rejected the credentials during {what} ({detail}): check "
                                    f"{CREDENTIAL_VARIABLES} and --s3-endpoint")
    if code in NO_SPACE_CODES:
        return NoSpace(f"the S3 store has no room for {what} ({detail})")
    if code in DENIED_CODES or status == 403:
        return PermissionDenied(f"the S3 store refused {what} ({detail}): check the credentials' permissions "
                                f"on bucket '{bucket}' (docs/s3.md)")
    temporary = code in TEMPORARY_CODES or status in (408, 429) or status >= 500
    return BackendError(f"S3 {what} failed: {detail}", temporary=temporary,
                        retry_after=_retry_after(meta.get("HTTPHeaders", {})) if temporary else None)


# What botocore raises when no answer came: the network, a timeout, a connection cut while a body
# streamed. All may pass if tried again.
NETWORK_ERRORS = (boto_errors.ConnectionError, boto_errors.HTTPClientError, boto_errors.IncompleteReadError,
                  boto_errors.ResponseStreamingError, ConnectionError, TimeoutError)


@contextmanager
def _s3_errors(what: str, bucket: str, name: str | None = None):
    """Translate what escapes boto3 during `what` (on object `name`, repository-relative) into our errors."""
    try:
        yield
    except boto_errors.ClientError as e:
        if name is not None and e.response.get("Error", {}).get("Code") in MISSING_OBJECT_CODES:
            raise NoSuchObject(name) from None
        raise _translate(e, what, bucket) from None
    except (boto_errors.NoCredentialsError, boto_errors.PartialCredentialsError):
        raise UsageError(f"no S3 credentials: set {CREDENTIAL_VARIABLES} (docs/s3.md)") from None
    except NETWORK_ERRORS as e:
        raise BackendError(f"S3 {what} failed: {_one_line(e) or type(e).__name__}", temporary=True) from None
    except boto_errors.BotoCoreError as e:
        raise BackendError(f"S3 {what} failed: {_one_line(e)}") from None


# ---- settings -------------------------------------------------------------------------------

def parse_url(url: str) -> tuple[str, str]:
    """'s3://BUCKET/PREFIX' -> (bucket, prefix without surrounding slashes; '' when absent)."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not BUCKET_NAME.fullmatch(bucket):
        raise UsageError(f"'{url}' is not an S3 repository URL: use s3://BUCKET or s3://BUCKET/PREFIX "
                         f"(bucket names are 3 to 63 letters, digits, '.' and '-')")
    return bucket, "/".join(part for part in prefix.split("/") if part)


def endpoint_from_environment() -> str | None:
    """FSBACKUP_S3_ENDPOINT (`--s3-endpoint`), checked: None for AWS itself."""
    endpoint = os.environ.get(ENV_ENDPOINT, "").strip()
    if not endpoint:
        return None
    if not re.fullmatch(r"https?://[^/\s]+/?", endpoint):
        raise UsageError(f"'{endpoint}' is not an S3 endpoint: give http(s)://HOST[:PORT] (--s3-endpoint, "
                         f"{ENV_ENDPOINT})")
    return endpoint.rstrip("/")


def region_from_environment(endpoint: str | None) -> str | None:
    """FSBACKUP_S3_REGION (`--s3-region`), else AWS_REGION or AWS_DEFAULT_REGION; None leaves it to
    the AWS profile (boto3 finds AWS's buckets in any region from there)."""
    for var in (ENV_REGION, "AWS_REGION", "AWS_DEFAULT_REGION"):
        if os.environ.get(var, "").strip():
            return os.environ[var].strip()
    return ENDPOINT_DEFAULT_REGION if endpoint else None


def path_style_from_environment() -> bool:
    return os.environ.get(ENV_PATH_STYLE, "").strip().lower() not in ("", "0", "no", "false")


# ---- the backend --------------------------------------------------------------------------------

class S3Backend(Backend):
    """Objects in an S3 bucket, under an optional prefix.

    Puts are atomic: S3 makes an object visible only once its upload is complete (a multipart
    one when it is completed), and a put over a name replaces it whole. Since 2020 S3 lists and
    reads its objects strongly consistently (as do MinIO and the others we know), so an object is
    listed as soon as its put returns and not once its delete returns.

    Thread-safe: one botocore client serves every thread (botocore's clients are; its pool holds at
    least `connections` connections). A forked child (the mount's --daemon) makes its own client.
    """

    traits = BackendTraits(atomic_replace=True, immediate_listing=True, latency=Latency.REMOTE)

    def __init__(self, url: str, endpoint: str | None = None, region: str | None = None, path_style: bool = False,
                 multipart_threshold: int = MULTIPART_THRESHOLD, part_size: int = PART_SIZE):
        """Open `url` on the store at `endpoint` (AWS when None). Credentials must be found here;
        whether the store takes them and has the bucket is checked by the first request (so that
        it is retried like any other when the store cannot be reached)."""
        self.url = url
        self.bucket, self.prefix = parse_url(url)
        self.endpoint, self.region, self.path_style = endpoint, region, path_style
        self.multipart_threshold, self.part_size = multipart_threshold, max(part_size, 5 << 20)
        self._connections = DEFAULT_CONNECTIONS
        self._client_lock = threading.Lock()
        self._session = botocore.session.get_session()
        if region:
            self._session.set_config_variable("region", region)
        with self._errors("looking up the credentials"):
            if self._session.get_credentials() is None:
                raise boto_errors.NoCredentialsError()
        self._bucket_checked = False
        self._connect()

    def _connect(self) -> None:
        """A new client of this process, pooling at least `connections` connections."""
        config = Config(
            retries={"total_max_attempts": 1, "mode": "standard"},    # retry.RetryingBackend retries
            max_pool_connections=max(self._connections, DEFAULT_CONNECTIONS),
            connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT,
            s3={"addressing_style": "path" if self.path_style else "auto"},
            # Checksums only where S3 requires them: the default since botocore 1.36 (CRC32 on
            # every upload, in a form older S3-compatible stores refuse) breaks many stores, and
            # fsbackup authenticates every object it reads anyway.
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
        )
        self._s3 = self._session.create_client("s3", endpoint_url=self.endpoint, config=config)
        self._pool_size = config.max_pool_connections
        self._pid = os.getpid()

    def _client(self):
        """The client, made in this process: a forked child shares no connections with its parent.
        The first call checks the credentials and the bucket (callers translate its errors)."""
        if self._pid != os.getpid():
            with self._client_lock:
                if self._pid != os.getpid():
                    self._connect()
        if not self._bucket_checked:
            # A listing of one key, not HeadBucket nor the request itself: an answer to HEAD has
            # no body, so its 403 would not tell wrong credentials (InvalidAccessKeyId...) from
            # missing rights, nor its 404 a missing bucket from a missing object. fsbackup needs
            # the right to list anyway.
            self._s3.list_objects_v2(Bucket=self.bucket, Prefix=self._key(""), MaxKeys=1)
            self._bucket_checked = True
        return self._s3

    @property
    def connections(self) -> int:
        return self._connections

    @connections.setter
    def connections(self, n: int) -> None:
        # A request beyond the pool's size would wait for a connection (and urllib3 warns):
        # make a client with a pool wide enough.
        with self._client_lock:
            self._connections = n
            if n > self._pool_size:
                self._connect()

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _errors(self, what: str, name: str | None = None):
        return _s3_errors(what, self.bucket, name)

    # ---- writing --------------------------------------------------------------------------------

    def put(self, name: str, data: bytes) -> None:
        """One PutObject, or above `multipart_threshold` a multipart upload of `part_size` parts,
        visible only once completed (aborted when it fails, so it leaves nothing behind unless the
        process dies midway: `remove_partial_uploads` removes those)."""
        key = self._key(name)
        with self._errors(f"upload of {name}", name):
            if len(data) <= self.multipart_threshold:
                self._client().put_object(Bucket=self.bucket, Key=key, Body=data)
            else:
                self._put_in_parts(key, data)

    def _put_in_parts(self, key: str, data: bytes) -> None:
        client = self._client()
        upload_id = client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        try:
            parts = []
            view = memoryview(data)
            for number, start in enumerate(range(0, len(data), self.part_size), 1):
                answer = client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                            Body=bytes(view[start:start + self.part_size]))
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
            client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                             MultipartUpload={"Parts": parts})
        except BaseException:
            try:
                client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except (boto_errors.BotoCoreError, boto_errors.ClientError):
                pass     # left for remove_partial_uploads; the put's own error is the one to report
            raise

    def delete(self, name: str) -> None:
        # S3 answers a delete of a missing key with success, as the contract wants.
        with self._errors(f"delete of {name}", name):
            self._client().delete_object(Bucket=self.bucket, Key=self._key(name))

    def remove_partial_uploads(self, older_than_seconds: float) -> tuple[int, int]:
        """Abort the multipart uploads under the prefix begun more than `older_than_seconds` ago
        (a put whose process died midway: S3 keeps, and bills, their parts until aborted)."""
        cutoff = time.time() - older_than_seconds
        removed = size = 0
        client = self._client()
        with self._errors("removal of unfinished uploads"):
            pages = client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self._key("") if self.prefix else "")
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"].timestamp() >= cutoff:
                        continue
                    key, upload_id = upload["Key"], upload["UploadId"]
                    try:
                        parts = client.get_paginator("list_parts").paginate(
                            Bucket=self.bucket, Key=key, UploadId=upload_id)
                        upload_bytes = sum(part["Size"] for p in parts for part in p.get("Parts", []))
                        client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                    except boto_errors.ClientError as e:
                        if e.response.get("Error", {}).get("Code") == "NoSuchUpload":
                            continue      # finished or aborted meanwhile
                        raise
                    removed, size = removed + 1, size + upload_bytes
        return removed, size

    # ---- reading --------------------------------------------------------------------------------

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if length is not None and length <= 0:
            self.size(name)                          # NoSuchObject when missing
            return b""
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(name)}
        if offset or length is not None:
            # A range reaching past the end gets what exists; one starting at or past the end
            # gets 416 InvalidRange.
            request["Range"] = f"bytes={offset}-" + (str(offset + length - 1) if length is not None else "")
        with self._errors(f"download of {name}", name):
            try:
                answer = self._client().get_object(**request)
            except boto_errors.ClientError as e:
                if e.response.get("Error", {}).get("Code") == "InvalidRange":
                    return b""
                raise
            return answer["Body"].read()

    def size(self, name: str) -> int:
        with self._errors(f"size of {name}", name):
            return self._client().head_object(Bucket=self.bucket, Key=self._key(name))["ContentLength"]

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        for name, size, _ in self.list_modified(prefix):
            yield name, size

    def list_modified(self, prefix: str = "") -> Iterator[tuple[str, int, float]]:
        """The listing, with each object's LastModified (when its upload completed, by the store's
        clock). Gathered whole before anything is yielded: a page that fails fails the listing."""
        strip = len(self.prefix) + 1 if self.prefix else 0
        found = []
        with self._errors(f"listing of {prefix or '/'}"):
            # S3 filters by key prefix on the server, so listing 'versions/' never pages through data/.
            pages = self._client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                              Prefix=self._key(prefix))
            for page in pages:
                for item in page.get("Contents", []):
                    # (a key ending in '/' is a "folder" a web console made: no object's name)
                    if not item["Key"].endswith("/"):
                        found.append((item["Key"][strip:], item["Size"], item["LastModified"].timestamp()))
        yield from found

    def close(self) -> None:
        self._s3.close()


def open_s3(url: str) -> S3Backend:
    """The S3Backend of `url`, with the endpoint, region and addressing the environment gives."""
    endpoint = endpoint_from_environment()
    return S3Backend(url, endpoint, region_from_environment(endpoint), path_style_from_environment())
