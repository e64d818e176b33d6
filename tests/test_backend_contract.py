"""The backend contract (fsbackup/backends/__init__.py), held against every backend."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from fsbackup.backends import open_backend
from fsbackup.backends.local import LocalBackend
from fsbackup.backends.memory import MemoryBackend
from fsbackup.errors import NoSuchObject


@pytest.fixture(params=["local", "memory"])
def backend(request, tmp_path):
    if request.param == "local":
        return LocalBackend(str(tmp_path / "store"))
    return MemoryBackend()


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
    assert isinstance(open_backend(str(tmp_path)), LocalBackend)
    assert open_backend(f"file://{tmp_path}").root == str(tmp_path)
