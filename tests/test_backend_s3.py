"""The S3 backend against a real S3 server process (moto's server mode: tests/s3server.py): the
contract suite, then what only S3 meets: range reads, multipart uploads and their leftovers,
credentials and buckets, the server's errors and a server that goes away."""
from __future__ import annotations

import json
import os
import time

import botocore.exceptions
import pytest
from backend_contract import BackendContract
from s3server import ACCESS_KEY, SECRET_KEY, S3Server, s3_bucket, s3_server  # noqa: F401 - fixtures

from fsbackup.backends import Latency, open_backend, s3
from fsbackup.backends.retry import RetryingBackend
from fsbackup.errors import (
    EXIT_PERMISSION,
    AuthenticationFailed,
    BackendError,
    NoSpace,
    NoSuchObject,
    PermissionDenied,
    RepositoryNotFound,
    UsageError,
)


class TestS3Backend(BackendContract):
    @pytest.fixture(autouse=True)
    def _bucket(self, s3_bucket):
        self.bucket = s3_bucket

    def make_backend(self, tmp_path, monkeypatch):
        return s3.open_s3(self.bucket.url(f"test-{os.urandom(4).hex()}"))

    def test_concurrent_puts_of_one_name_are_never_torn(self, backend):
        # moto (unlike S3) answers 500 to a put that races another put of the same key (it closes
        # the replaced object's buffer under the other request): a temporary error, which the
        # retry layer every command has in front of its backend retries.
        super().test_concurrent_puts_of_one_name_are_never_torn(RetryingBackend(backend, base_delay=0.01))

    def test_is_remote_with_pool_for_its_connections(self, backend):
        assert backend.traits.latency is Latency.REMOTE
        assert backend.connections == 8 and backend._pool_size >= 8


def test_range_reads(s3_bucket):
    store = s3.open_s3(s3_bucket.url())
    store.put("v", bytes(range(100)))
    store.put("empty", b"")
    assert store.get("v", 0, 1) == b"\x00"
    assert store.get("v", 99, 1) == b"\x63"
    assert store.get("v", 99, 10) == b"\x63"            # reaches past the end: what exists
    assert store.get("v", 100, 1) == b""                # starts at the end: S3 answers 416
    assert store.get("v", 250) == b""
    assert store.get("v", 97) == b"\x61\x62\x63"
    assert store.get("v", 5, 0) == b""
    assert store.get("empty", 0, 10) == b""
    with pytest.raises(NoSuchObject) as e:
        store.get("nope", 3, 4)
    assert e.value.name == "nope"                       # repository-relative, without the prefix
    assert s3_bucket.keys() == ["repo/empty", "repo/v"]


def test_objects_above_the_threshold_go_up_in_parts(s3_bucket, monkeypatch):
    store = s3.S3Backend(s3_bucket.url(), s3_bucket.server.endpoint, "us-east-1", path_style=True,
                         multipart_threshold=6 << 20, part_size=5 << 20)
    calls = []
    client = store._client()
    for method in ("put_object", "upload_part", "complete_multipart_upload"):
        monkeypatch.setattr(client, method, counted(calls, method, getattr(client, method)))
    data = os.urandom((12 << 20) + 7)                   # three parts: 5 MiB, 5 MiB, 2 MiB + 7
    store.put("data/big", data)
    assert calls == ["upload_part"] * 3 + ["complete_multipart_upload"]
    assert store.size("data/big") == len(data) and store.get("data/big") == data
    assert store.get("data/big", (5 << 20) - 3, 1 << 20) == data[(5 << 20) - 3:(6 << 20) - 3]
    store.put("data/small", b"x" * (6 << 20))          # at the threshold: one request
    assert calls[-1] == "put_object"
    assert dict(store.list("data/")) == {"data/big": len(data), "data/small": 6 << 20}


def counted(calls: list, name: str, method):
    def call(*args, **kwargs):
        calls.append(name)
        return method(*args, **kwargs)
    return call


def test_a_failed_multipart_upload_leaves_nothing(s3_bucket, monkeypatch):
    store = s3.S3Backend(s3_bucket.url(), s3_bucket.server.endpoint, "us-east-1", path_style=True,
                         multipart_threshold=6 << 20, part_size=5 << 20)
    client = store._client()
    real_upload_part = client.upload_part

    def failing_second_part(**kwargs):
        if kwargs["PartNumber"] == 2:
            raise botocore.exceptions.EndpointConnectionError(endpoint_url="http://x")
        return real_upload_part(**kwargs)
    monkeypatch.setattr(client, "upload_part", failing_second_part)
    with pytest.raises(BackendError) as e:
        store.put("data/big", os.urandom(12 << 20))
    assert e.value.temporary
    assert not store.exists("data/big")
    assert client.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", []) == []   # aborted


def test_uploads_whose_process_died_are_removed_once_old(s3_bucket):
    store = s3.open_s3(s3_bucket.url())
    client = s3_bucket.server.client()
    dead = client.create_multipart_upload(Bucket=s3_bucket.name, Key="repo/data/ab/dead")["UploadId"]
    client.upload_part(Bucket=s3_bucket.name, Key="repo/data/ab/dead", UploadId=dead, PartNumber=1, Body=b"p" * 1000)
    other = client.create_multipart_upload(Bucket=s3_bucket.name, Key="elsewhere/x")["UploadId"]
    store.put("data/ab/kept", b"visible")
    # (moto dates every upload to the same day of 2010: "too young" is relative to that)
    [initiated] = {u["Initiated"] for u in client.list_multipart_uploads(Bucket=s3_bucket.name)["Uploads"]}
    age = time.time() - initiated.timestamp()
    assert store.remove_partial_uploads(age + 3600) == (0, 0)    # too young: may be a put in flight
    assert store.remove_partial_uploads(0) == (1, 1000)
    left = client.list_multipart_uploads(Bucket=s3_bucket.name).get("Uploads", [])
    assert [u["UploadId"] for u in left] == [other]              # outside the prefix: not ours
    assert dict(store.list("")) == {"data/ab/kept": 7}


def test_listing_pages_through_many_objects(s3_bucket):
    store = s3.open_s3(s3_bucket.url())
    names = {f"data/{i:04d}" for i in range(1100)}                # S3 sends 1,000 keys a page
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: store.put(n, b"x"), names))
    assert {n for n, _ in store.list("data/")} == names
    assert [n for n, _ in store.list("data/0999")] == ["data/0999"]


def test_urls_name_bucket_and_prefix(s3_bucket):
    assert s3.parse_url("s3://my-bucket") == ("my-bucket", "")
    assert s3.parse_url("s3://my.bucket//a/b/") == ("my.bucket", "a/b")
    for bad in ("s3://", "s3://a", "s3://-bucket/x", "s3://bu cket"):
        with pytest.raises(UsageError) as e:
            s3.parse_url(bad)
        assert "s3://BUCKET/PREFIX" in str(e.value)
    whole = s3.open_s3(s3_bucket.url(""))
    whole.put("config", b"c")
    assert s3_bucket.keys() == ["config"]
    assert list(open_backend(s3_bucket.url("")).list("")) == [("config", 1)]


def test_connections_widen_the_pool(s3_bucket):
    store = s3.open_s3(s3_bucket.url())
    store.put("a", b"x")
    store.connections = 20
    assert store._pool_size >= 20 and store._client().meta.config.max_pool_connections >= 20
    assert store.get("a") == b"x"


def test_botocore_retries_nothing_itself(s3_bucket):
    config = s3.open_s3(s3_bucket.url())._client().meta.config
    assert config.retries["total_max_attempts"] == 1


def test_works_in_a_forked_child(s3_bucket):
    """The mount's --daemon forks after opening the repository: the child gets its own client."""
    import signal
    store = s3.open_s3(s3_bucket.url())
    store.put("a", b"x" * 1000)
    assert store.get("a", 1, 10) == b"x" * 10
    parent_client = store._client()
    pid = os.fork()
    if pid == 0:
        signal.alarm(20)
        try:
            store.put("b", b"y")
            ok = store.get("a", 2, 5) == b"x" * 5 and store.get("b") == b"y" and store._client() is not parent_client
            os._exit(0 if ok else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store._client() is parent_client and store.get("b") == b"y"


# ---- the store's settings and credentials ---------------------------------------------------------

def test_settings_come_from_the_environment(monkeypatch):
    for var in ("FSBACKUP_S3_ENDPOINT", "FSBACKUP_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION",
                "FSBACKUP_S3_PATH_STYLE"):
        monkeypatch.delenv(var, raising=False)
    assert s3.endpoint_from_environment() is None and s3.region_from_environment(None) is None
    assert s3.region_from_environment("https://minio:9000") == "us-east-1" and not s3.path_style_from_environment()
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert s3.region_from_environment(None) == "eu-west-1"
    monkeypatch.setenv("AWS_REGION", "eu-west-2")
    assert s3.region_from_environment(None) == "eu-west-2"
    monkeypatch.setenv("FSBACKUP_S3_REGION", "auto")
    assert s3.region_from_environment(None) == "auto"
    monkeypatch.setenv("FSBACKUP_S3_ENDPOINT", "https://s3.example.com:9000/")
    assert s3.endpoint_from_environment() == "https://s3.example.com:9000"
    monkeypatch.setenv("FSBACKUP_S3_PATH_STYLE", "1")
    assert s3.path_style_from_environment()
    for bad in ("s3.example.com", "ftp://x", "https://x/path"):
        monkeypatch.setenv("FSBACKUP_S3_ENDPOINT", bad)
        with pytest.raises(UsageError) as e:
            s3.endpoint_from_environment()
        assert "--s3-endpoint" in str(e.value)


def test_missing_credentials_name_the_variables(s3_bucket, monkeypatch):
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(UsageError) as e:
        open_backend(s3_bucket.url())
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in str(e.value) and "\n" not in str(e.value)


def test_a_missing_bucket_is_repository_not_found(s3_bucket):
    store = open_backend("s3://fsbackup-no-such-bucket/x")
    with pytest.raises(RepositoryNotFound) as e:
        store.exists("config")           # (a HEAD of a missing bucket alone would look like a missing object)
    assert "no S3 bucket named 'fsbackup-no-such-bucket'" in str(e.value) and "\n" not in str(e.value)


@pytest.fixture(scope="module")
def checking_server():
    """A second S3 server that checks credentials: moto lets the first five requests through
    unchecked, which make a user with full rights on S3 and a user without rights, with their keys."""
    server = S3Server(INITIAL_NO_AUTH_ACTION_COUNT="5").start()
    try:
        iam = server.client(service="iam")
        iam.create_user(UserName="writer")
        iam.put_user_policy(UserName="writer", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        writer = iam.create_access_key(UserName="writer")["AccessKey"]
        iam.create_user(UserName="nobody")
        nobody = iam.create_access_key(UserName="nobody")["AccessKey"]
        keys = {user: (key["AccessKeyId"], key["SecretAccessKey"]) for user, key in
                (("writer", writer), ("nobody", nobody))}
        server.client(*keys["writer"]).create_bucket(Bucket="checked")
        yield server, keys
    finally:
        server.stop()


def use(server: S3Server, monkeypatch, key: tuple[str, str]) -> None:
    for var, value in server.client_environ(*key).items():
        monkeypatch.setenv(var, value)


def test_credentials_are_checked_by_the_first_request(checking_server, monkeypatch):
    server, keys = checking_server
    use(server, monkeypatch, keys["writer"])
    store = open_backend("s3://checked/repo")
    store.put("config", b"c")
    assert store.get("config") == b"c"
    use(server, monkeypatch, (keys["writer"][0], "not-the-secret"))
    with pytest.raises(AuthenticationFailed) as e:
        open_backend("s3://checked/repo").exists("config")
    assert e.value.exit_code == EXIT_PERMISSION and not e.value.temporary
    assert "rejected the credentials" in str(e.value) and "\n" not in str(e.value)
    use(server, monkeypatch, ("AKIAUNKNOWNKEY000000", "whatever"))
    with pytest.raises(AuthenticationFailed):
        open_backend("s3://checked/repo").exists("config")
    use(server, monkeypatch, keys["nobody"])
    with pytest.raises(PermissionDenied) as e:
        open_backend("s3://checked/repo").exists("config")
    assert e.value.exit_code == EXIT_PERMISSION and "\n" not in str(e.value)


# ---- the server's errors ------------------------------------------------------------------------------

def client_error(code: str, status: int, headers: dict | None = None, message: str = "oops"):
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": message},
         "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers or {}}}, "PutObject")


@pytest.mark.parametrize("error, temporary, retry_after", [
    (botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"), True, None),
    (botocore.exceptions.ConnectTimeoutError(endpoint_url="http://x"), True, None),
    (botocore.exceptions.ReadTimeoutError(endpoint_url="http://x"), True, None),
    (botocore.exceptions.ConnectionClosedError(endpoint_url="http://x"), True, None),
    (client_error("SlowDown", 503, {"retry-after": "7"}), True, 7.0),
    (client_error("InternalError", 500), True, None),
    (client_error("ServiceUnavailable", 503), True, None),
    (client_error("RequestTimeout", 400), True, None),
    (client_error("TooManyRequests", 429, {"retry-after": "3"}), True, 3.0),
    (client_error("", 502), True, None),
    (client_error("InvalidArgument", 400), False, None),
    (client_error("MalformedXML", 400, {"retry-after": "3"}), False, None),
])
def test_errors_are_temporary_or_permanent(error, temporary, retry_after):
    with pytest.raises(BackendError) as e:
        with s3._s3_errors("upload of x", "bucket", "x"):
            raise error
    assert (e.value.temporary, e.value.retry_after) == (temporary, retry_after)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("error, expected", [
    (client_error("NoSuchKey", 404), NoSuchObject),
    (client_error("404", 404), NoSuchObject),
    (client_error("NoSuchBucket", 404), RepositoryNotFound),
    (client_error("AccessDenied", 403), PermissionDenied),
    (client_error("403", 403), PermissionDenied),
    (client_error("InvalidAccessKeyId", 403), AuthenticationFailed),
    (client_error("SignatureDoesNotMatch", 403), AuthenticationFailed),
    (client_error("ExpiredToken", 400), AuthenticationFailed),
    (client_error("QuotaExceeded", 403), NoSpace),
    (botocore.exceptions.NoCredentialsError(), UsageError),
])
def test_errors_map_to_domain_errors(error, expected):
    with pytest.raises(expected) as e:
        with s3._s3_errors("upload of x", "bucket", "x"):
            raise error
    assert "\n" not in str(e.value)
    if expected is NoSuchObject:
        assert e.value.name == "x"


def test_a_listing_that_cannot_be_read_whole_raises(s3_bucket, monkeypatch):
    store = s3.open_s3(s3_bucket.url())
    for i in range(5):
        store.put(f"data/{i}", b"x")
    client = store._client()
    real = client._make_api_call
    pages = []

    def second_page_fails(operation, params):
        if operation == "ListObjectsV2":
            pages.append(params)
            if len(pages) == 2:
                raise client_error("InternalError", 500)
            params = {**params, "MaxKeys": 2}
        return real(operation, params)
    monkeypatch.setattr(client, "_make_api_call", second_page_fails)
    with pytest.raises(BackendError) as e:
        list(store.list("data/"))
    assert e.value.temporary and len(pages) == 2


# ---- a server that goes away --------------------------------------------------------------------------

def test_a_server_that_dies_gives_temporary_errors_then_a_clear_failure(monkeypatch):
    server = S3Server().start()
    try:
        use(server, monkeypatch, (ACCESS_KEY, SECRET_KEY))
        server.create_bucket("dying")
        store = open_backend("s3://dying/repo")
        store.put("a", b"before")
        server.stop()
        with pytest.raises(BackendError) as e:
            store.inner.get("a")
        assert e.value.temporary and "\n" not in str(e.value)
        # Through the retry layer: tried again until its bound, then one permanent line.
        bounded = RetryingBackend(store.inner, max_seconds=1.0, base_delay=0.05)
        with pytest.raises(BackendError) as e:
            bounded.put("b", b"never stored")
        assert not e.value.temporary and "gave up after" in str(e.value) and "\n" not in str(e.value)
        attempts = int(str(e.value).split("gave up after ")[1].split()[0])
        assert attempts >= 2
        # A server back on the same port reaches the same backend again (moto's comes back empty,
        # without the bucket: which it says, permanently).
        server = S3Server(server.port).start()
        with pytest.raises(RepositoryNotFound):
            store.put("c", b"x")
    finally:
        server.stop()


def test_folder_markers_are_not_objects(s3_bucket):
    """Web consoles and some tools make 'folders' as empty keys ending in '/': no name of the
    contract ends so, and a listing that yielded them would show the repository strays."""
    store = s3.open_s3(s3_bucket.url())
    store.put("data/ab/ab1", b"x")
    client = s3_bucket.server.client()
    for marker in ("repo/", "repo/data/", "repo/data/ab/"):
        client.put_object(Bucket=s3_bucket.name, Key=marker, Body=b"")
    assert dict(store.list("")) == {"data/ab/ab1": 1}
    assert [name for name, _, _ in store.list_modified("data/")] == ["data/ab/ab1"]
