"""A real mount in trouble: its process is killed. A killed mount is cleaned up."""
from __future__ import annotations

import os
import signal
import time

import pytest

from conftest import write
from test_mount import FUSE_MISSING, Mount, is_dead_mount

needs_fuse = pytest.mark.skipif(bool(FUSE_MISSING), reason=f"FUSE unavailable: {FUSE_MISSING}")


def wait_for(condition, what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {seconds:.0f} s"
        time.sleep(0.1)


@pytest.fixture
def mounts(env, tmp_path):
    started: list[Mount] = []

    def start(*extra, **options) -> Mount:
        m = Mount(env, tmp_path / "mnt", *extra, **options)
        started.append(m)
        return m
    yield start
    for m in started:
        m.stop()


# ---- a killed mount ------------------------------------------------------------------------------

@needs_fuse
def test_sighup_unmounts_like_sigterm(env, tmp_path, mounts):
    """A closed terminal sends SIGHUP: the mount must go away cleanly, not leave a dead mount."""
    write(tmp_path / "src" / "a", b"a")
    env.ok("backup", tmp_path / "src")
    m = mounts()
    m.proc.send_signal(signal.SIGHUP)
    assert m.proc.wait(timeout=20) == 0
    assert not os.path.ismount(m.mountpoint) and not is_dead_mount(m.mountpoint)


def killed_mount(env, tmp_path, mounts) -> Mount:
    write(tmp_path / "src" / "a", b"data")
    env.ok("backup", tmp_path / "src")
    m = mounts()
    m.proc.kill()
    m.proc.wait(timeout=20)
    # "Transport endpoint is not connected", once the kernel's cached attributes of the root expire
    wait_for(lambda: is_dead_mount(m.mountpoint), "the killed mount answered ENOTCONN", seconds=10)
    return m


@needs_fuse
def test_umount_cleans_up_after_a_killed_mount(env, tmp_path, mounts):
    m = killed_mount(env, tmp_path, mounts)
    r = env.run_process("umount", m.mountpoint)
    assert r.rc == 0, r.err
    assert "note:" in r.err and "lazy unmount" in r.err and "Traceback" not in r.err
    assert not is_dead_mount(m.mountpoint) and not os.path.ismount(m.mountpoint)
    assert os.listdir(m.mountpoint) == []
    r = env.run_process("umount", m.mountpoint)
    assert r.rc == 2 and "is not mounted" in r.err


@needs_fuse
def test_mount_onto_a_killed_mount_cleans_it_up_and_mounts(env, tmp_path, mounts):
    killed = killed_mount(env, tmp_path, mounts)
    m = mounts()
    assert (m.version_dir() / str(tmp_path / "src" / "a").lstrip("/")).read_bytes() == b"data"
    assert "note:" in m.output() and "lazy unmount" in m.output()
    assert m.stop() == 0 and killed.proc.returncode == -signal.SIGKILL
