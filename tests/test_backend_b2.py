"""The Backblaze B2 backend: the contract suite on b2sdk's simulator (always) and on a real bucket
(when FSBACKUP_TEST_B2_BUCKET and credentials are set; docs/b2.md), then what only B2 meets: large
files, old versions and hide markers, b2sdk's errors and retries, credentials, forks."""
from __future__ import annotations

import os
import secrets

import pytest
from b2sdk.v2 import RawSimulator
from b2sdk.v2.exception import (
    B2ConnectionError,
    B2RequestTimeout,
    BadRequest,
    FileNotPresent,
    InvalidAuthToken,
    MaxRetriesExceeded,
    NonExistentBucket,
    ServiceError,
    StorageCapExceeded,
    TooManyRequests,
    Unauthorized,
)
from backend_contract import BackendContract
from doubles import b2sim

from fsbackup.backends import Latency, b2, open_backend
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

SIM_BUCKET = "fsbackup-sim"
REAL_B2_VARS = ("B2_APPLICATION_KEY_ID", "B2_APPLICATION_KEY", "FSBACKUP_TEST_B2_BUCKET")


def simulated_b2(monkeypatch) -> b2.B2Backend:
    """A B2Backend on b2sdk's in-memory B2, under a fresh prefix; `b2://` URLs opened meanwhile
    reach the simulator too (the simulator lives as long as the process)."""
    sim = b2sim.use_simulator()
    sim.create_bucket(SIM_BUCKET)
    for var, value in sim.environ().items():
        monkeypatch.setenv(var, value)
    return sim.backend(f"b2://{SIM_BUCKET}/test-{secrets.token_hex(6)}")


def real_b2() -> b2.B2Backend:
    """A B2Backend on the real B2 bucket named by FSBACKUP_TEST_B2_BUCKET, under a fresh prefix; skipped without it."""
    missing = [v for v in REAL_B2_VARS if not os.environ.get(v)]
    if missing:
        pytest.skip(f"real B2 tests need {', '.join(missing)} set (see docs/b2.md, 'For contributors')")
    return b2.B2Backend(f"b2://{os.environ['FSBACKUP_TEST_B2_BUCKET']}/fsbackup-test-{secrets.token_hex(8)}")


def remove_everything(backend: b2.B2Backend) -> None:
    """Delete every version (and unfinished large file) a real-B2 test wrote below its prefix."""
    bucket = backend.bucket
    for version, _ in bucket.ls(backend.prefix, latest_only=False, recursive=True):
        bucket.delete_file_version(version.id_, version.file_name)
    for unfinished in bucket.list_unfinished_large_files(prefix=backend.prefix + "/"):
        bucket.cancel_large_file(unfinished.file_id)


class TestSimulatedB2(BackendContract):
    # b2sdk's simulator makes every object above 200 bytes a large file, and b2sdk resumes an
    # unfinished large file of the same name and file info that has no parts yet: two puts of
    # one name at once can then share one large file and fail its checksum (a temporary error).
    # On B2 only objects above 100 MB are large files, and fsbackup never puts one twice at once.
    shared_size = 200

    def make_backend(self, tmp_path, monkeypatch):
        return simulated_b2(monkeypatch)

    def clean_up(self, backend):
        b2sim.stop_simulator()

    def test_is_remote(self, backend):
        assert backend.traits.latency is Latency.REMOTE


class TestRealB2(BackendContract):
    def make_backend(self, tmp_path, monkeypatch):
        return real_b2()

    def clean_up(self, backend):
        remove_everything(backend)


@pytest.fixture(params=["b2-simulated", "b2-real"])
def b2_backend(request, monkeypatch):
    store = simulated_b2(monkeypatch) if request.param == "b2-simulated" else real_b2()
    yield store
    if request.param == "b2-real":
        remove_everything(store)
    b2sim.stop_simulator()


# ---- Backblaze B2 (simulated always; real when its variables are set) ----------------------------

def versions_of(store: b2.B2Backend, name: str) -> list:
    return list(store.bucket.list_file_versions(store._key(name)))


def is_simulated(store: b2.B2Backend) -> bool:
    return isinstance(store.api.session.raw_api, RawSimulator)


def test_b2_large_object_round_trips(b2_backend):
    """40 MiB: above the simulator's part size, so b2sdk uploads it as a B2 large file of parts."""
    data = os.urandom(40 << 20)
    b2_backend.put("data/big", data)
    assert b2_backend.size("data/big") == len(data)
    assert b2_backend.get("data/big") == data
    assert b2_backend.get("data/big", (20 << 20) - 3, 1 << 20) == data[(20 << 20) - 3:(21 << 20) - 3]
    if is_simulated(b2_backend):
        [version] = versions_of(b2_backend, "data/big")
        assert "large_file_sha1" in version.file_info       # it did take the large-file path


def test_b2_replacing_leaves_exactly_one_version(b2_backend):
    for content in (b"first", b"second", b"third"):
        b2_backend.put("config", content)
    assert [v.size for v in versions_of(b2_backend, "config")] == [5]
    assert b2_backend.get("config") == b"third"


def test_b2_delete_removes_every_version_and_hide_marker(b2_backend):
    key = b2_backend._key("index/x")
    b2_backend.bucket.upload_bytes(b"old", key)             # versions put() would have cleaned up
    b2_backend.bucket.upload_bytes(b"older", key)
    b2_backend.bucket.hide_file(key)
    b2_backend.delete("index/x")
    assert versions_of(b2_backend, "index/x") == []
    assert list(b2_backend.list("index/")) == []


def test_b2_range_reads_single_bytes_and_past_the_end(b2_backend):
    b2_backend.put("v", bytes(range(100)))
    b2_backend.put("empty", b"")
    assert b2_backend.get("v", 0, 1) == b"\x00"
    assert b2_backend.get("v", 99, 1) == b"\x63"
    assert b2_backend.get("v", 99, 10) == b"\x63"           # reaches past the end: what exists
    assert b2_backend.get("v", 100, 1) == b""               # starts at the end: B2 answers 416
    assert b2_backend.get("v", 250) == b""
    assert b2_backend.get("v", 97) == b"\x61\x62\x63"
    assert b2_backend.get("v", 5, 0) == b""
    if not is_simulated(b2_backend):
        # B2 answers 416 for any range of an empty file; the simulator instead sends a malformed
        # Content-Range ('bytes 0--1/0') that b2sdk cannot parse. Repository objects are never empty.
        assert b2_backend.get("empty", 0, 10) == b""
    with pytest.raises(NoSuchObject) as e:
        b2_backend.get("nope", 3, 4)
    assert e.value.name == "nope"                           # repository-relative, without the prefix


def test_b2_missing_credentials_name_the_variables(b2_backend, monkeypatch):
    monkeypatch.delenv("B2_APPLICATION_KEY", raising=False)
    with pytest.raises(UsageError) as e:
        open_backend(b2_backend.url)
    assert "B2_APPLICATION_KEY_ID and B2_APPLICATION_KEY" in str(e.value) and "\n" not in str(e.value)


def test_b2_wrong_key_is_a_permanent_authentication_failure(b2_backend, monkeypatch):
    monkeypatch.setenv("B2_APPLICATION_KEY", "K000-not-the-key")
    with pytest.raises(AuthenticationFailed) as e:
        open_backend(b2_backend.url)
    assert not e.value.temporary and e.value.exit_code == EXIT_PERMISSION
    assert "rejected the application key" in str(e.value) and "\n" not in str(e.value)


def test_b2_missing_bucket_is_repository_not_found(b2_backend):
    with pytest.raises(RepositoryNotFound) as e:
        open_backend(f"b2://fsbackup-no-such-bucket-{secrets.token_hex(6)}/x")
    assert "no B2 bucket named" in str(e.value)


def test_b2_urls_name_bucket_and_prefix(monkeypatch):
    store = simulated_b2(monkeypatch)
    try:
        assert b2.parse_url("b2://my-bucket") == ("my-bucket", "")
        assert b2.parse_url("b2://my-bucket//a/b/") == ("my-bucket", "a/b")
        with pytest.raises(UsageError):
            b2.parse_url("b2://")
        store.put("config", b"c")
        assert [v.file_name for v, _ in store.bucket.ls(store.prefix, recursive=True)] == [f"{store.prefix}/config"]
        assert list(open_backend(store.url).list("")) == [("config", 1)]   # another backend, same objects
    finally:
        b2sim.stop_simulator()


# ---- B2 error mapping: what escapes b2sdk's own retries ---------------------------------------------

@pytest.mark.parametrize("error, temporary, retry_after", [
    (B2ConnectionError("connection refused"), True, None),
    (B2RequestTimeout("read timed out"), True, None),
    (ServiceError("500 internal_error oops"), True, None),
    (ServiceError("503 service_unavailable busy", retry_after_seconds="7"), True, 7.0),
    (TooManyRequests(retry_after_seconds="3"), True, 3.0),
    (InvalidAuthToken("expired", "expired_auth_token"), True, None),
    (MaxRetriesExceeded(5, [B2ConnectionError("a"), ServiceError("503 busy")]), True, None),
    (BadRequest("bad file name", "bad_request"), False, None),
])
def test_b2_errors_are_temporary_or_permanent(error, temporary, retry_after):
    with pytest.raises(BackendError) as e:
        with b2._b2_errors("upload of x", "x"):
            raise error
    assert (e.value.temporary, e.value.retry_after) == (temporary, retry_after)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("error, expected", [
    (FileNotPresent(file_id_or_name="prefix/x"), NoSuchObject),
    (NonExistentBucket("gone"), RepositoryNotFound),
    (Unauthorized("no writeFiles", "unauthorized"), PermissionDenied),
    (MaxRetriesExceeded(5, [Unauthorized("no writeFiles", "unauthorized")]), PermissionDenied),
    (StorageCapExceeded(), NoSpace),
])
def test_b2_errors_map_to_domain_errors(error, expected):
    with pytest.raises(expected) as e:
        with b2._b2_errors("upload of x", "x"):
            raise error
    assert "\n" not in str(e.value)
    if expected is NoSuchObject:
        assert e.value.name == "x"


def test_b2_upload_errors_are_retried_by_b2sdk_then_reported_as_temporary(monkeypatch):
    store = simulated_b2(monkeypatch)
    try:
        raw = store.api.session.raw_api
        raw.set_upload_errors([ServiceError("503 service_unavailable busy")])
        store.put("a", b"survives one failure")                 # b2sdk tried again by itself
        assert store.get("a") == b"survives one failure"
        raw.set_upload_errors([ServiceError("503 service_unavailable busy")] * 5)
        with pytest.raises(BackendError) as e:
            store.put("b", b"never stored")
        assert e.value.temporary and not store.exists("b")
    finally:
        raw.upload_errors = []
        b2sim.stop_simulator()


def test_b2_expired_token_is_renewed_by_b2sdk(monkeypatch):
    store = simulated_b2(monkeypatch)
    try:
        store.put("a", b"x")
        store.api.session.raw_api.expire_auth_token(store.api.account_info.get_account_auth_token())
        assert list(store.list("")) == [("a", 1)]
    finally:
        b2sim.stop_simulator()


def test_b2_backend_serves_many_threads(monkeypatch):
    from concurrent.futures import ThreadPoolExecutor
    store = simulated_b2(monkeypatch)
    try:
        blobs = {f"data/{i:02x}": os.urandom(1000 + i) for i in range(32)}
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda item: store.put(*item), blobs.items()))
            got = dict(zip(blobs, pool.map(lambda n: store.get(n, 10, 500), blobs)))
        assert got == {n: d[10:510] for n, d in blobs.items()}
        assert sorted(store.list("data/")) == sorted((n, len(d)) for n, d in blobs.items())
    finally:
        b2sim.stop_simulator()


def test_b2_connections_default_and_override(monkeypatch):
    store = simulated_b2(monkeypatch)
    try:
        assert store.connections == 4
        store.connections = 16
        assert store.api.services.upload_manager.get_thread_pool_size() >= 16
    finally:
        b2sim.stop_simulator()


def test_b2_backend_works_in_a_forked_child(monkeypatch):
    """The mount's --daemon forks after opening the repository; b2sdk's thread pools stay behind."""
    import signal
    store = simulated_b2(monkeypatch)
    try:
        store.put("a", b"x" * 1000)
        assert store.get("a", 1, 10) == b"x" * 10          # b2sdk's download pool now has threads
        pid = os.fork()
        if pid == 0:
            signal.alarm(20)                                # a hang fails the test instead of hanging it
            try:
                store.put("b", b"y")
                os._exit(0 if store.get("a", 2, 5) == b"x" * 5 and store.get("b") == b"y" else 1)
            except BaseException:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        b2sim.stop_simulator()


# ---- a listing is whole or raises (callers delete what a listing lacks) ------------------------------

@pytest.mark.parametrize("error, expected", [(Unauthorized("no listFiles", "unauthorized"), PermissionDenied),
                                             (ServiceError("503 service_unavailable busy"), BackendError)])
def test_a_listing_that_cannot_be_read_whole_raises(error, expected, monkeypatch):
    store = simulated_b2(monkeypatch)
    try:
        for name in ("data/ab/ab1", "data/cd/cd1", "versions/v"):
            store.put(name, b"x")
        raw = store.api.session.raw_api

        def failing(*args, **kwargs):
            raise error
        monkeypatch.setattr(raw, "list_file_names", failing)
        monkeypatch.setattr(raw, "list_file_versions", failing)
        for prefix in ("data/", ""):
            with pytest.raises(expected) as e:
                list(store.list(prefix))
            assert "\n" not in str(e.value)
    finally:
        b2sim.stop_simulator()
