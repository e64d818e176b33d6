"""The backend contract (fsbackup/backends/__init__.py), held against every backend."""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys

import pytest

from fsbackup.backends import b2, open_backend
from fsbackup.backends.local import LocalBackend
from fsbackup.backends.memory import MemoryBackend
from b2sdk.v2 import RawSimulator
from b2sdk.v2.exception import (
    B2ConnectionError, B2RequestTimeout, BadRequest, FileNotPresent, InvalidAuthToken, MaxRetriesExceeded,
    NonExistentBucket, ServiceError, StorageCapExceeded, TooManyRequests, Unauthorized,
)
from fsbackup.errors import (
    EXIT_PERMISSION, AuthenticationFailed, BackendError, NoSpace, NoSuchObject, PermissionDenied, RepositoryNotFound,
    UsageError,
)


SIM_BUCKET = "fsbackup-sim"
REAL_B2_VARS = ("B2_APPLICATION_KEY_ID", "B2_APPLICATION_KEY", "FSBACKUP_TEST_B2_BUCKET")


def simulated_b2(monkeypatch):
    """A B2Backend on b2sdk's in-memory B2, under a fresh prefix (the simulator lives as long as the process)."""
    sim = b2.use_simulator()
    sim.create_bucket(SIM_BUCKET)
    for var, value in sim.environ().items():
        monkeypatch.setenv(var, value)
    return b2.B2Backend(f"b2://{SIM_BUCKET}/test-{secrets.token_hex(6)}")


def real_b2():
    """A B2Backend on the real B2 bucket named by FSBACKUP_TEST_B2_BUCKET, under a fresh prefix; skipped without it."""
    missing = [v for v in REAL_B2_VARS if not os.environ.get(v)]
    if missing:
        pytest.skip(f"real B2 tests need {', '.join(missing)} set (see docs/b2.md, 'For contributors')")
    b2.stop_simulator()
    return b2.B2Backend(f"b2://{os.environ['FSBACKUP_TEST_B2_BUCKET']}/fsbackup-test-{secrets.token_hex(8)}")


def remove_everything(backend: b2.B2Backend) -> None:
    """Delete every version (and unfinished large file) a real-B2 test wrote below its prefix."""
    bucket = backend.bucket
    for version, _ in bucket.ls(backend.prefix, latest_only=False, recursive=True):
        bucket.delete_file_version(version.id_, version.file_name)
    for unfinished in bucket.list_unfinished_large_files(prefix=backend.prefix + "/"):
        bucket.cancel_large_file(unfinished.file_id)


def make_backend(kind: str, tmp_path, monkeypatch):
    if kind == "local":
        return LocalBackend(str(tmp_path / "store"))
    if kind == "memory":
        return MemoryBackend()
    if kind == "b2-simulated":
        return simulated_b2(monkeypatch)
    return real_b2()


def backend_for_a_test(kind, tmp_path, monkeypatch):
    """The backend of one test, and afterwards: what it wrote on a real bucket removed."""
    store = make_backend(kind, tmp_path, monkeypatch)
    yield store
    if kind == "b2-real":
        remove_everything(store)
    b2.stop_simulator()


@pytest.fixture(params=["local", "memory", "b2-simulated", "b2-real"])
def backend(request, tmp_path, monkeypatch):
    yield from backend_for_a_test(request.param, tmp_path, monkeypatch)


@pytest.fixture(params=["b2-simulated", "b2-real"])
def b2_backend(request, tmp_path, monkeypatch):
    yield from backend_for_a_test(request.param, tmp_path, monkeypatch)


def test_put_then_get_returns_the_bytes(backend):
    backend.put("data/ab/abc", b"hello world")
    assert backend.get("data/ab/abc") == b"hello world"
    assert backend.size("data/ab/abc") == 11


def test_byte_ranges(backend):
    backend.put("x", bytes(range(100)))
    assert backend.get("x", 10, 5) == bytes(range(10, 15))
    assert backend.get("x", 95, 50) == bytes(range(95, 100))     # past the end: what exists
    assert backend.get("x", 200, 5) == b""
    assert backend.get("x", 90) == bytes(range(90, 100))


def test_missing_objects_raise_no_such_object(backend):
    with pytest.raises(NoSuchObject):
        backend.get("nope")
    with pytest.raises(NoSuchObject):
        backend.size("nope")
    assert not backend.exists("nope")
    backend.delete("nope")                       # not an error


def test_put_replaces_whole(backend):
    backend.put("k", b"long first content")
    backend.put("k", b"short")
    assert backend.get("k") == b"short"


def test_list_by_prefix(backend):
    for name in ("versions/a", "versions/b", "index/c", "data/cc/c", "config"):
        backend.put(name, name.encode())
    assert sorted(backend.list("versions/")) == [("versions/a", 10), ("versions/b", 10)]
    assert sorted(n for n, _ in backend.list("")) == sorted(["versions/a", "versions/b", "index/c", "data/cc/c",
                                                             "config"])
    assert list(backend.list("nothing/")) == []
    backend.delete("versions/a")
    assert [n for n, _ in backend.list("versions/")] == ["versions/b"]


def test_empty_object(backend):
    backend.put("empty", b"")
    assert backend.get("empty") == b"" and backend.size("empty") == 0


def test_local_put_is_atomic_under_kill(tmp_path):
    """A writer killed mid-put leaves no object (or the old one), never a partial one, and lists clean."""
    root = tmp_path / "store"
    LocalBackend(str(root)).put("big", b"old")
    code = f"""
import os, signal
from fsbackup.backends.local import LocalBackend
b = LocalBackend({str(root)!r})
real_write = os.write
calls = 0
def write(fd, data):
    global calls
    calls += 1
    if calls == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_write(fd, data[:1 << 20])
os.write = write
b.put("big", b"n" * (8 << 20))
"""
    p = subprocess.run([sys.executable, "-c", code])
    assert p.returncode == -signal.SIGKILL
    b = LocalBackend(str(root))
    assert b.get("big") == b"old"
    assert [n for n, _ in b.list("")] == ["big"]


def test_local_permission_denied_is_reported(tmp_path):
    """As an unprivileged user (through setpriv when the suite runs as root, who ignores permissions)."""
    import shutil
    import tempfile
    base = tempfile.mkdtemp(prefix="fsb-perm-")
    try:
        os.chmod(base, 0o755)
        root = os.path.join(base, "ro")
        os.mkdir(root, 0o555)
        prefix = []
        if os.geteuid() == 0:
            if not shutil.which("setpriv"):
                pytest.skip("running as root without setpriv: cannot drop privileges")
            prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        code = (f"from fsbackup.backends.local import LocalBackend\n"
                f"from fsbackup.errors import PermissionDenied\n"
                f"try:\n    LocalBackend({root!r}).put('x', b'x')\nexcept PermissionDenied as e:\n    print('denied:', e)\n")
        p = subprocess.run(prefix + [sys.executable, "-c", code], capture_output=True, text=True)
        assert p.returncode == 0 and p.stdout.startswith("denied: permission denied"), (p.stdout, p.stderr)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_open_backend_understands_paths_and_file_urls(tmp_path):
    assert isinstance(open_backend(str(tmp_path)).inner, LocalBackend)     # inside the retry layer
    assert open_backend(f"file://{tmp_path}").inner.root == str(tmp_path)


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
        b2.stop_simulator()


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
        b2.stop_simulator()


def test_b2_expired_token_is_renewed_by_b2sdk(monkeypatch):
    store = simulated_b2(monkeypatch)
    try:
        store.put("a", b"x")
        store.api.session.raw_api.expire_auth_token(store.api.account_info.get_account_auth_token())
        assert list(store.list("")) == [("a", 1)]
    finally:
        b2.stop_simulator()


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
        b2.stop_simulator()


def test_connections_default_and_override(monkeypatch):
    assert MemoryBackend().connections == 2
    store = simulated_b2(monkeypatch)
    try:
        assert store.connections == 4
        store.connections = 16
        assert store.api.services.upload_manager.get_thread_pool_size() >= 16
    finally:
        b2.stop_simulator()


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
        b2.stop_simulator()


# ---- a listing is whole or raises (callers delete what a listing lacks) ------------------------------

def break_listings_of(kind: str, store, monkeypatch, errno_: int) -> None:
    """Make the store unable to read part of what it lists, the way each backend meets it: a local
    folder that cannot be read; B2 pages that fail on the server."""
    import errno as errnos
    if kind == "local":
        real = os.scandir

        def scandir(path):
            if str(path).endswith(os.path.join("data", "cd")):
                raise OSError(errno_, os.strerror(errno_), path)
            return real(path)
        monkeypatch.setattr(os, "scandir", scandir)
    else:
        raw = store.api.session.raw_api
        error = Unauthorized("no listFiles", "unauthorized") if errno_ == errnos.EACCES \
            else ServiceError("503 service_unavailable busy")

        def failing(*args, **kwargs):
            raise error
        monkeypatch.setattr(raw, "list_file_names", failing)
        monkeypatch.setattr(raw, "list_file_versions", failing)


@pytest.mark.parametrize("kind", ["local", "b2-simulated"])
@pytest.mark.parametrize("errno_, expected", [(13, PermissionDenied), (5, BackendError)])
def test_a_listing_that_cannot_be_read_whole_raises(kind, errno_, expected, tmp_path, monkeypatch):
    store = make_backend(kind, tmp_path, monkeypatch)
    try:
        for name in ("data/ab/ab1", "data/cd/cd1", "versions/v"):
            store.put(name, b"x")
        break_listings_of(kind, store, monkeypatch, errno_)
        for prefix in ("data/", ""):
            with pytest.raises(expected) as e:
                list(store.list(prefix))
            assert "\n" not in str(e.value)
    finally:
        b2.stop_simulator()
