"""A real mount while the world changes under it: another machine backs up, forgets and prunes
(repacking moves blocks to new volumes), the storage fails, the mount's process is killed, the
repository's data is unreadable to it. The mount follows the repository, answers each request
with the right errno, logs a bounded number of lines, and a killed mount is cleaned up."""
from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import TEST_PASSWORD, pseudo_random, write
from doubles.faults import FaultyBackend
from test_mount import FSBACKUP, FUSE_MISSING, Mount, is_dead_mount, mounted  # noqa: F401 (a fixture)

from fsbackup.backends.local import LocalBackend
from fsbackup.errors import (
    AuthenticationFailed,
    BackendError,
    CorruptObject,
    FsbackupError,
    NoSpace,
    NoSuchObject,
    PermissionDenied,
)
from fsbackup.mount.fuse import _errno_of
from fsbackup.mount.log import ThrottledLog
from fsbackup.mount.sync import CatalogSync
from fsbackup.repository import Repository

needs_fuse = pytest.mark.skipif(bool(FUSE_MISSING), reason=f"FUSE unavailable: {FUSE_MISSING}")


def wait_for(condition, what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {seconds:.0f} s"
        time.sleep(0.1)


# ---- a killed mount ------------------------------------------------------------------------------

@needs_fuse
def test_sighup_unmounts_like_sigterm(env, tmp_path, mounted):
    """A closed terminal sends SIGHUP: the mount must go away cleanly, not leave a dead mount."""
    write(tmp_path / "src" / "a", b"a")
    env.ok("backup", tmp_path / "src")
    m = mounted()
    m.proc.send_signal(signal.SIGHUP)
    assert m.proc.wait(timeout=20) == 0
    assert not os.path.ismount(m.mountpoint) and not is_dead_mount(m.mountpoint)


def killed_mount(env, tmp_path, mounted) -> Mount:
    write(tmp_path / "src" / "a", b"data")
    env.ok("backup", tmp_path / "src")
    m = mounted()
    m.proc.kill()
    m.proc.wait(timeout=20)
    # "Transport endpoint is not connected", once the kernel's cached attributes of the root expire
    wait_for(lambda: is_dead_mount(m.mountpoint), "the killed mount answered ENOTCONN", seconds=10)
    return m


@needs_fuse
def test_umount_cleans_up_after_a_killed_mount(env, tmp_path, mounted):
    m = killed_mount(env, tmp_path, mounted)
    r = env.run_process("umount", m.mountpoint)
    assert r.rc == 0, r.err
    assert "note:" in r.err and "lazy unmount" in r.err and "Traceback" not in r.err
    assert not is_dead_mount(m.mountpoint) and not os.path.ismount(m.mountpoint)
    assert os.listdir(m.mountpoint) == []
    r = env.run_process("umount", m.mountpoint)
    assert r.rc == 2 and "is not mounted" in r.err


@needs_fuse
def test_mount_onto_a_killed_mount_cleans_it_up_and_mounts(env, tmp_path, mounted):
    killed = killed_mount(env, tmp_path, mounted)
    m = mounted()
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
def test_unreadable_data_answers_eacces_with_one_log_line_and_no_traceback(env, tmp_path, mounted):
    src = tmp_path / "src"
    write(src / "a", pseudo_random(300_000, 1))
    write(src / "small", b"small")
    env.ok("backup", src)
    m = mounted(launcher=without_file_permission_override())
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


# ---- another machine changes the repository: the mount follows it --------------------------------

def version_count(mountpoint: Path) -> int:
    return len(os.listdir(mountpoint / "versions"))


# Runs `fsbackup.cli.main(argv[2:])` with every listing of the repository failing while the file
# argv[1] exists: storage that is down for the mount's sync, but still serves reads.
LISTINGS_FAIL_WHILE_FLAGGED = r"""
import os, sys
from fsbackup.backends import local
from fsbackup.errors import BackendError

flag, argv = sys.argv[1], sys.argv[2:]
real_list = local.LocalBackend.list

def failing_list(self, prefix=""):
    if os.path.exists(flag):
        raise BackendError(f"listing {prefix or '/'} failed: the storage is down")
    return real_list(self, prefix)

local.LocalBackend.list = failing_list
from fsbackup.cli import main
sys.exit(main(argv))
"""


@needs_fuse
def test_reads_find_blocks_that_another_machines_prune_moved(env, tmp_path, mounted):
    """Mounted with one local index; forget and prune through another move live blocks into new
    volumes and delete the old one. Every file still reads exactly, at once, long before the
    mount's periodic sync: a read whose volume is gone syncs the index and looks again."""
    src = tmp_path / "src"
    files = {f"a{i}": pseudo_random(120_000, i) for i in range(6)}      # one block each, one volume
    files["big"] = pseudo_random(3 << 20, 99)                           # several blocks and volumes
    for name, data in files.items():
        write(src / name, data)
    env.ok("backup", src, "--volume-size", "1M")
    for i in range(3):                                                  # half of a0..a5's volume dies
        (src / f"a{i}").unlink()
        del files[f"a{i}"]
        files[f"b{i}"] = pseudo_random(110_000, 10 + i)
        write(src / f"b{i}", files[f"b{i}"])
    time.sleep(1.1)                                                     # (version names: one per second)
    env.ok("backup", src, "--volume-size", "1M")
    other = ("--index", tmp_path / "other-index.sqlite")
    env.ok(*other, "versions")                                          # the other machine's index

    m = mounted(FSBACKUP_MOUNT_SYNC_SECONDS="3600")                      # no periodic sync in this test
    assert version_count(m.mountpoint) == 2
    inside = m.version_dir() / str(src).lstrip("/")
    assert sorted(os.listdir(inside)) == sorted(files)

    env.ok(*other, "forget", "--keep-last", "1")
    doc = json.loads(env.ok(*other, "--json", "prune", "--max-unused", "0", "--volume-size", "1M").out)
    assert doc["volumes_repacked"] >= 1 and doc["blocks_moved"] >= 3, doc

    started = time.monotonic()
    for name, data in sorted(files.items()):
        assert (inside / name).read_bytes() == data, name
    assert time.monotonic() - started < 30
    wait_for(lambda: version_count(m.mountpoint) == 1, "the forgotten version left versions/")
    assert "cannot read" not in m.output()


@needs_fuse
def test_versions_another_machine_makes_and_forgets_appear_and_vanish(env, tmp_path, mounted):
    src = tmp_path / "src"
    write(src / "a", b"first")
    env.ok("backup", src)
    other = ("--index", tmp_path / "other-index.sqlite")
    m = mounted(FSBACKUP_MOUNT_SYNC_SECONDS="1")
    assert version_count(m.mountpoint) == 1
    time.sleep(1.1)
    write(src / "a", b"second")
    env.ok(*other, "backup", src)
    wait_for(lambda: version_count(m.mountpoint) == 2, "the other index's new version appeared")
    wait_for(lambda: (m.version_dir() / str(src / "a").lstrip("/")).read_bytes() == b"second",
             "latest moved to the new version")
    env.ok(*other, "forget", "--keep-last", "1")
    wait_for(lambda: version_count(m.mountpoint) == 1, "the forgotten version left versions/")
    assert (m.version_dir() / str(src / "a").lstrip("/")).read_bytes() == b"second"


@needs_fuse
def test_a_failing_sync_is_logged_once_and_the_mount_keeps_serving(env, tmp_path, mounted):
    src = tmp_path / "src"
    write(src / "a", pseudo_random(500_000, 1))
    env.ok("backup", src)
    storage_down = tmp_path / "storage-down"
    m = mounted(launcher=(sys.executable, "-c", LISTINGS_FAIL_WHILE_FLAGGED, str(storage_down)),
               FSBACKUP_MOUNT_SYNC_SECONDS="0.2")
    a = m.version_dir() / str(src / "a").lstrip("/")
    storage_down.touch()
    deadline = time.monotonic() + 4                                     # many syncs fail meanwhile
    while time.monotonic() < deadline:
        assert a.read_bytes() == pseudo_random(500_000, 1)
        assert version_count(m.mountpoint) == 1
        time.sleep(0.2)
    log = m.output()
    assert log.count("the storage is down") == 1, log
    assert "Traceback" not in log
    storage_down.unlink()
    time.sleep(1.1)
    write(src / "a", b"second")
    env.ok("--index", tmp_path / "other-index.sqlite", "backup", src)
    wait_for(lambda: version_count(m.mountpoint) == 2, "the sync worked again once the storage was back")


# ---- the sync thread, driven directly ------------------------------------------------------------

def test_readers_asking_for_a_sync_together_share_one_and_a_failed_sync_is_reported(env, tmp_path, monkeypatch,
                                                                                    caplog):
    write(tmp_path / "src" / "a", b"a")
    env.ok("backup", tmp_path / "src")
    storage = FaultyBackend(LocalBackend(str(env.repo)))
    repo = Repository.open(storage, TEST_PASSWORD.encode(), str(tmp_path / "index.sqlite"))
    repo.sync_catalog()
    syncs = []
    real_sync_catalog = Repository.sync_catalog

    def counted(self, progress=None):
        syncs.append(threading.current_thread().name)
        return real_sync_catalog(self, progress)
    monkeypatch.setattr(Repository, "sync_catalog", counted)
    sync = CatalogSync(repo, ThrottledLog(logging.getLogger("fsbackup.mount")), period=None, min_gap=0.3)
    try:
        asked = time.monotonic()
        answers = []
        readers = [threading.Thread(target=lambda: answers.append(sync.wait_for_sync_after(asked)))
                   for _ in range(8)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
        assert answers == [True] * 8 and syncs == ["fsbackup-sync"]    # one sync, in its own thread
        assert sync.wait_for_sync_after(asked) and len(syncs) == 1     # it began after `asked`: no other

        storage.go_down(permanent=True)
        with caplog.at_level(logging.WARNING, logger="fsbackup.mount"):
            assert not sync.wait_for_sync_after(time.monotonic())
            assert not sync.wait_for_sync_after(time.monotonic())
        lines = [r.getMessage() for r in caplog.records if r.name == "fsbackup.mount"]
        assert len(lines) == 1 and lines[0].startswith("cannot bring the local index up to date"), lines
        assert len(syncs) == 3
    finally:
        sync.close()
        repo.close()
