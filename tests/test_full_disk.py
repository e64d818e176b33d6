"""A repository disk at 100%: no command can write its lock, so forget and prune take `--no-lock`
(docs/maintenance.md#a-full-repository-disk) and free space; the error of the lock that could not
be written says so. A real full disk: a small tmpfs mounted in the test's folder (root only, as
the suite runs), the repository on it, the local index elsewhere (--index)."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import Env, pseudo_random, restored_root, snapshot, write
from test_crash import CHECKOUT, child_env
from test_prune import KILL_AT_CALL

from fsbackup import errors

DISK_SIZE = 8 << 20
VOLUME_SIZE = "1M"

# These tests prune right after the backups and forgets they set up.
pytestmark = pytest.mark.usefixtures("no_leftover_age")


class FullDiskEnv(Env):
    """An Env whose repository lies on `disk`, with its local index outside it."""

    def __init__(self, tmp: Path, disk: Path):
        super().__init__(tmp)
        self.disk = disk
        self.repo = disk / "repo"
        self.vars["FSBACKUP_REPOSITORY"] = str(self.repo)
        self.index = tmp / "local" / "index.sqlite"

    def run(self, *args: str, **extra_env):
        return super().run("--index", self.index, *args, **extra_env)

    def free(self) -> int:
        st = os.statvfs(self.disk)
        return st.f_bavail * st.f_frsize

    def fill(self) -> None:
        """Take what room is left on the disk with someone else's file, until the disk is full."""
        fd = os.open(self.disk / "other-files", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            chunk = b"\0" * 65536
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    if len(chunk) == 1:
                        break
                    chunk = chunk[:len(chunk) // 2]
        finally:
            os.close(fd)
        assert self.free() == 0

    def make_room(self) -> None:
        (self.disk / "other-files").unlink()


@contextmanager
def repository_on_a_small_disk(tmp_path: Path):
    """A new repository on a tmpfs of DISK_SIZE mounted for the block."""
    assert os.geteuid() == 0, "mounting a tmpfs needs root, as the suite runs"
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(disk)], check=True)
    try:
        env = FullDiskEnv(tmp_path, disk)
        env.ok("init")
        yield env
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)


@pytest.fixture
def full_env(tmp_path):
    """A repository on a small disk, filled by backups (each of new data) until one fails for
    want of space, then to the last byte. Returns the env, the source folder and its tree as
    the last saved version holds it."""
    with repository_on_a_small_disk(tmp_path) as env:
        src = tmp_path / "src"
        saved = None
        for generation in range(20):
            for i in range(2):
                write(src / f"f{i}", pseudo_random(900_000, generation * 10 + i))
            r = env.run("backup", src, "--volume-size", VOLUME_SIZE)
            if r.rc == errors.EXIT_NO_SPACE:
                break
            assert r.rc == 0, r.err
            saved = snapshot(src)
        assert r.rc == errors.EXIT_NO_SPACE and "no space left on the repository's disk" in r.err, r.err
        assert generation >= 3 and "Traceback" not in r.err
        env.fill()
        yield env, src, saved


def versions(env) -> list[str]:
    return [v["id"] for v in json.loads(env.ok("--json", "versions").out)]


def assert_latest_restores(env, tmp_path: Path, src: Path, saved: dict) -> None:
    target = tmp_path / "restored"
    env.ok("restore", "latest", "--target", target)
    assert snapshot(restored_root(target, src)) == saved


def test_forget_and_prune_refuse_a_full_disk_with_the_command_that_frees_it(full_env):
    env, src, saved = full_env
    r = env.run("prune")
    assert r.rc == errors.EXIT_NO_SPACE and r.err.count("\n") == 1 and "Traceback" not in r.err, r.err
    assert "no space left on the repository's disk" in r.err
    assert "to free space, run `fsbackup prune --no-lock`" in r.err
    assert "only while no other fsbackup process uses the repository" in r.err
    r = env.run("forget", "--keep-last", "1", "--prune")
    assert r.rc == errors.EXIT_NO_SPACE and r.err.count("\n") == 1, r.err
    assert "run this forget again with --no-lock added" in r.err
    r = env.run("backup", src)
    assert r.rc == errors.EXIT_NO_SPACE and "run `fsbackup forget" in r.err and "--prune --no-lock`" in r.err
    assert env.free() == 0 and not list((env.repo / "locks").iterdir())


def test_forget_with_prune_and_no_lock_frees_a_full_disk(full_env, tmp_path):
    env, src, saved = full_env
    before = versions(env)
    r = env.ok("forget", "--keep-last", "1", "--prune", "--no-lock")
    assert "pruned: deleted" in r.out
    assert versions(env) == before[-1:]
    assert env.free() > 4 << 20                # the forgotten versions' volumes, and the stopped backup's
    assert_latest_restores(env, tmp_path, src, saved)
    env.ok("check")
    write(src / "f0", pseudo_random(900_000, 999))     # and backups go on, with their lock
    env.ok("backup", src, "--volume-size", VOLUME_SIZE)
    assert_latest_restores(env, tmp_path / "after", src, snapshot(src))


def test_prune_with_no_lock_frees_a_full_disk(full_env, tmp_path):
    env, src, saved = full_env
    env.ok("forget", "--keep-last", "1", "--no-lock")    # deleting version objects frees a little...
    env.fill()                                          # ...which someone else takes
    assert env.run("prune").rc == errors.EXIT_NO_SPACE
    doc = json.loads(env.ok("--json", "prune", "--no-lock").out)
    assert doc["volumes_deleted"] >= 2 and doc["bytes_freed"] > 3 << 20
    assert env.free() > 3 << 20
    assert_latest_restores(env, tmp_path, src, saved)
    env.ok("check")
    plan = json.loads(env.ok("--json", "prune", "--dry-run").out)
    assert (plan["volumes_to_delete"], plan["orphans"]) == (0, [])


def test_prune_without_lock_killed_at_every_deletion_leaves_every_version_restorable(full_env, tmp_path):
    """On a full disk, prune --no-lock writes nothing (not even a lock) before it has deleted what
    it can; killed at any deletion, it leaves the last version whole, and run again it finishes."""
    env, src, saved = full_env
    env.ok("forget", "--keep-last", "1", "--no-lock")
    env.fill()
    pristine = tmp_path / "pristine"
    shutil.copytree(env.repo, pristine / "repo")
    shutil.copytree(env.index.parent, pristine / "local")
    log = tmp_path / "calls.log"

    def prune_killed_at_call(k: int) -> subprocess.CompletedProcess:
        log.write_text("")
        return subprocess.run([sys.executable, "-c", KILL_AT_CALL, str(k), "before", str(log),
                               "--index", str(env.index), "prune", "--no-lock"],
                              env=child_env(env), cwd=CHECKOUT, capture_output=True, text=True, timeout=120)

    def restore_pristine() -> None:
        for path, name in ((env.repo, "repo"), (env.index.parent, "local")):
            shutil.rmtree(path)
            shutil.copytree(pristine / name, path)
        assert env.free() == 0

    counted = prune_killed_at_call(0)
    assert counted.returncode == 0, counted.stderr
    calls = log.read_text().splitlines()
    assert len(calls) >= 4 and all(c.startswith("delete ") for c in calls), calls
    for k in range(1, len(calls) + 1):
        restore_pristine()
        p = prune_killed_at_call(k)
        assert p.returncode == -signal.SIGKILL, f"kill at call {k} did not happen: {p.returncode}\n{p.stderr}"
        assert_latest_restores(env, tmp_path / f"killed-{k}", src, saved)
        env.ok("prune", "--no-lock")
        assert env.free() > 3 << 20
        assert_latest_restores(env, tmp_path / f"pruned-{k}", src, saved)
    env.ok("check")


def test_a_repack_that_finds_the_disk_full_stops_cleanly_and_says_to_run_prune_again(tmp_path):
    """Prune deletes first, then repacks: repacking writes new volumes, which a full disk refuses.
    Here only repacking can free space; it stops with a message, and every version stays whole."""
    with repository_on_a_small_disk(tmp_path) as env:
        src = tmp_path / "src"
        for i in range(4):
            write(src / f"f{i}", pseudo_random(300_000, i))
        env.ok("backup", src, "--volume-size", "4M")         # one volume for the four files
        for i in range(1, 4):
            (src / f"f{i}").unlink()
        env.ok("backup", src)                               # keeps f0 only: the volume is 3/4 unused
        saved = snapshot(src)
        env.ok("forget", "--keep-last", "1")
        env.fill()
        r = env.run("prune", "--no-lock", "--max-unused", "0")
        assert r.rc == errors.EXIT_NO_SPACE and r.err.count("\n") == 1 and "Traceback" not in r.err, r.err
        assert "prune stopped while repacking; every version is intact" in r.err
        assert "run `fsbackup prune --no-lock` again once there is room" in r.err
        assert "`fsbackup prune --no-lock --max-unused 100%`, which only deletes" in r.err
        assert_latest_restores(env, tmp_path, src, saved)
        env.make_room()
        env.ok("check")
        doc = json.loads(env.ok("--json", "prune", "--no-lock", "--max-unused", "0").out)
        assert doc["volumes_repacked"] == 1 and doc["bytes_freed"] > 800_000
        assert_latest_restores(env, tmp_path / "after", src, saved)
        env.ok("check")
