"""A real mount in trouble: its process is killed, the repository's data is unreadable to it. A
killed mount is cleaned up; each failed request answers the right errno, and the log stays short."""
from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import time

import pytest

from conftest import pseudo_random, write
from test_mount import FSBACKUP, FUSE_MISSING, Mount, is_dead_mount
from fsbackup.errors import (AuthenticationFailed, BackendError, CorruptObject, FsbackupError, NoSpace, NoSuchObject,
                             PermissionDenied)
from fsbackup.fuse import _errno_of
from fsbackup.vfs import ThrottledLog

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


# ---- the repository's data is unreadable to the mount --------------------------------------------

def without_file_permission_override() -> tuple[str, ...]:
    """The command that runs fsbackup such that it obeys file permissions. Root ignores them: it
    runs without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (still root, so it may use /dev/fuse)."""
    if os.geteuid() != 0:
        return FSBACKUP
    if not subprocess.run(["sh", "-c", "command -v setpriv"], capture_output=True).stdout:
        pytest.skip("running as root without setpriv: cannot make the repository unreadable to the mount")
    return ("setpriv", "--bounding-set", "-dac_override,-dac_read_search", *FSBACKUP)


@needs_fuse
def test_unreadable_data_answers_eacces_with_one_log_line_and_no_traceback(env, tmp_path, mounts):
    src = tmp_path / "src"
    write(src / "a", pseudo_random(300_000, 1))
    write(src / "small", b"small")
    env.ok("backup", src)
    m = mounts(launcher=without_file_permission_override())
    inside = m.version_dir() / str(src).lstrip("/")
    volumes = [p for p in (env.repo / "data").rglob("*") if p.is_file()]
    try:
        for volume in volumes:
            volume.chmod(0)
        for _ in range(200):
            with pytest.raises(OSError) as e:
                (inside / "a").read_bytes()
            assert e.value.errno == errno.EACCES
        with pytest.raises(OSError) as e:
            (inside / "small").read_bytes()
        assert e.value.errno == errno.EACCES
        assert sorted(os.listdir(inside)) == ["a", "small"]             # metadata needs no storage
    finally:
        for volume in volumes:
            volume.chmod(0o600)
    log = m.output()
    denied = [line for line in log.splitlines() if "permission denied" in line]
    assert 1 <= len(denied) <= len(volumes), log
    assert "Traceback" not in log
    assert (inside / "a").read_bytes() == pseudo_random(300_000, 1)   # readable again: no remount


# ---- the log that keeps a failing repository from flooding it ------------------------------------

def test_a_repeated_message_is_logged_once_per_interval_with_the_count_of_repeats(caplog):
    now = [0.0]
    log = ThrottledLog(logging.getLogger("fsbackup.mount"), interval=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="fsbackup.mount"):
        for second in range(0, 150):
            now[0] = float(second)
            log.error(("PermissionDenied", "data/ab"), "cannot read /versions/x/a: permission denied")
            if second == 10:
                log.error(("NoSpace", "x"), "another message")
        lines = [r.getMessage() for r in caplog.records]
        assert lines == ["cannot read /versions/x/a: permission denied",
                         "another message",
                         "cannot read /versions/x/a: permission denied (and 59 more like it in the last 60 s)",
                         "cannot read /versions/x/a: permission denied (and 59 more like it in the last 60 s)"]
        caplog.clear()
        now[0] = 150.0
        log.flush()                      # when the mount ends: what was held back is not lost
        assert [r.getMessage() for r in caplog.records] == [
            "cannot read /versions/x/a: permission denied (and 28 more like it in the last 30 s)"]


def test_errors_map_to_the_errno_a_reader_can_act_on():
    assert _errno_of(PermissionDenied("permission denied on repository object data/ab")) == errno.EACCES
    assert _errno_of(AuthenticationFailed("the storage rejected the key")) == errno.EACCES
    for error in (NoSpace("no space"), NoSuchObject("data/ab"), CorruptObject("data/ab"), BackendError("down"),
                  FsbackupError("other"), ValueError("a bug")):
        assert _errno_of(error) == errno.EIO
