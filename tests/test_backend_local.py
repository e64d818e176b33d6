"""The local directory backend: the contract suite, and what only a local directory meets
(a writer killed mid-put, permissions, folders that cannot be read)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest
from backend_contract import BackendContract

from fsbackup.backends import Latency, open_backend
from fsbackup.backends.local import LocalBackend
from fsbackup.errors import BackendError, PermissionDenied


class TestLocalBackend(BackendContract):
    def make_backend(self, tmp_path, monkeypatch):
        return LocalBackend(str(tmp_path / "store"))

    def test_is_local(self, backend):
        assert backend.traits.latency is Latency.LOCAL


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
                f"try:\n    LocalBackend({root!r}).put('x', b'x')\n"
                "except PermissionDenied as e:\n    print('denied:', e)\n")
        p = subprocess.run(prefix + [sys.executable, "-c", code], capture_output=True, text=True)
        assert p.returncode == 0 and p.stdout.startswith("denied: permission denied"), (p.stdout, p.stderr)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_open_backend_understands_paths_and_file_urls(tmp_path):
    assert isinstance(open_backend(str(tmp_path)).inner, LocalBackend)     # inside the retry layer
    assert open_backend(f"file://{tmp_path}").inner.root == str(tmp_path)


@pytest.mark.parametrize("errno_, expected", [(13, PermissionDenied), (5, BackendError)])
def test_a_listing_that_cannot_be_read_whole_raises(errno_, expected, tmp_path, monkeypatch):
    """Callers delete what a listing lacks: a folder that cannot be read fails the listing."""
    store = LocalBackend(str(tmp_path / "store"))
    for name in ("data/ab/ab1", "data/cd/cd1", "versions/v"):
        store.put(name, b"x")
    real = os.scandir

    def scandir(path):
        if str(path).endswith(os.path.join("data", "cd")):
            raise OSError(errno_, os.strerror(errno_), path)
        return real(path)
    monkeypatch.setattr(os, "scandir", scandir)
    for prefix in ("data/", ""):
        with pytest.raises(expected) as e:
            list(store.list(prefix))
        assert "\n" not in str(e.value)
