"""Repository locks: backups share theirs (append), exclusive commands wait for them or, with
--no-wait, fail at once naming the holder; stale locks bind no one; `unlock` clears them; readers
(restore, ls, versions, mount) need no lock."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import TEST_PASSWORD, make_full_tree, restored_root, snapshot, write
from test_b2_cli import b2_env  # noqa: F401  (a fixture)

from fsbackup import errors
from fsbackup.backends import open_backend
from fsbackup.repository import Repository, locks
from fsbackup.repository.locks import Lock, LockInfo, list_locks, repository_lock

CHECKOUT = Path(__file__).resolve().parent.parent

# Runs `fsbackup.cli.main(argv[2:])` with LocalBackend.put held back for volumes: the first
# volume upload creates the file argv[1] + ".waiting" and waits until the file argv[1] exists.
GATED_BACKUP = r"""
import os, sys, time
from fsbackup.backends import local
gate, argv = sys.argv[1], sys.argv[2:]
real_put = local.LocalBackend.put

def put(self, name, data):
    if name.startswith("data/"):
        open(gate + ".waiting", "w").close()
        while not os.path.exists(gate):
            time.sleep(0.02)
    real_put(self, name, data)

local.LocalBackend.put = put
from fsbackup.cli import main
sys.exit(main(argv))
"""


@contextmanager
def opened(env):
    repo = Repository.open(open_backend(env.vars["FSBACKUP_REPOSITORY"]), TEST_PASSWORD.encode(),
                           str(env.tmp / "test-index.sqlite"))
    try:
        yield repo
    finally:
        repo.close()


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def plant_lock(repo, **fields) -> LockInfo:
    """Store a lock object as another process would have; `fields` override a live exclusive lock."""
    now = time.time_ns()
    info = LockInfo(os.urandom(32).hex(), socket.gethostname(), os.getpid(), "backup", True, now, now)
    for k, v in fields.items():
        setattr(info, k, v)
    if "mode" not in fields:
        info.mode = "exclusive" if info.exclusive else "shared"
    repo.store_lock(info.name, info.to_doc())
    return info


def test_backups_run_together_and_an_exclusive_command_waits_for_them_or_refuses(env, tmp_path):
    src = make_full_tree(tmp_path / "src")
    gate = tmp_path / "gate"
    first = subprocess.Popen([sys.executable, "-c", GATED_BACKUP, str(gate), "backup", str(src)],
                             env=env.environ(), cwd=CHECKOUT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.monotonic() + 60
        while not Path(str(gate) + ".waiting").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.02)
        env.ok("backup", src)                     # a second backup runs beside the first
        started = time.monotonic()
        r = env.run("prune", "--no-wait")
        assert time.monotonic() - started < 10
        assert r.rc == errors.EXIT_LOCKED == 14
        assert r.err.count("\n") == 1
        assert f"repository is locked by backup (append) on host {socket.gethostname()} (pid {first.pid}) since " \
            in r.err
        assert "use --retry-lock DURATION" in r.err and "if that process is gone, run `fsbackup unlock`" in r.err
        started = time.monotonic()
        r = env.run("forget", "--keep-last", "1", "--retry-lock", "2s")
        assert 2 <= time.monotonic() - started < 10
        assert r.rc == errors.EXIT_LOCKED and "is still locked by backup (append) on host" in r.err
        assert "after waiting 2 s; to wait longer, use --retry-lock" in r.err
        assert "note: waiting for the lock of backup (append) on host" in r.err
        assert len(env.ok("versions", "--json").out.split('"id"')) == 2      # nothing was forgotten
    finally:
        gate.touch()
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert not list_locks_of(env)                 # released at the end
    env.ok("prune", "--no-wait")                  # and the next one runs


def test_an_exclusive_command_waits_for_the_backups_then_runs(env, tmp_path, monkeypatch):
    src = write(tmp_path / "src" / "f", b"data").parent
    env.ok("backup", src)
    monkeypatch.setattr(locks, "FIRST_POLL", 0.1)
    with opened(env) as repo:
        held = Lock(repo, "append", "backup").acquire()
        threading.Timer(1.5, held.release).start()
        started = time.monotonic()
        r = env.ok("forget", "--keep-last", "1")
        assert time.monotonic() - started >= 1.5
        assert "note: waiting for the lock of backup (append) on host" in r.err
        assert "for up to 1 h 0 min; --retry-lock sets how long, --no-wait fails at once" in r.err
        assert list_locks(repo) == []


def test_a_backup_waits_for_an_exclusive_lock_or_refuses(env, tmp_path, monkeypatch):
    src = write(tmp_path / "src" / "f", b"data").parent
    monkeypatch.setattr(locks, "FIRST_POLL", 0.1)
    with opened(env) as repo:
        held = Lock(repo, "exclusive", "prune").acquire()
        r = env.run("backup", src, "--no-wait")
        assert r.rc == errors.EXIT_LOCKED and "locked by prune on host" in r.err
        threading.Timer(1.5, held.release).start()
        started = time.monotonic()
        env.ok("backup", src, "--retry-lock", "1m")
        assert time.monotonic() - started >= 1.5


def test_lock_modes_share_as_the_table_says(env):
    with opened(env) as repo:
        together = {("append", "append"), ("shared", "shared")}
        for held in ("shared", "append", "exclusive"):
            with repository_lock(repo, held, "first"):
                for asked in ("shared", "append", "exclusive"):
                    if (held, asked) in together:
                        with repository_lock(repo, asked, "second"):
                            assert len(list_locks(repo)) == 2
                    else:
                        with pytest.raises(errors.Locked):
                            Lock(repo, asked, "second").acquire()
                        assert len(list_locks(repo)) == 1


def test_an_append_lock_reads_as_exclusive_to_a_fsbackup_without_modes(env):
    with opened(env) as repo, repository_lock(repo, "append", "backup") as lock:
        doc = repo.load_lock(lock.name)
        assert doc["exclusive"] is True and doc["mode"] == "append"
        del doc["mode"]                           # as an earlier fsbackup wrote its locks
        assert LockInfo.from_doc("x", doc).mode == "exclusive"
        doc["exclusive"] = False
        assert LockInfo.from_doc("x", doc).mode == "shared"
        doc["mode"] = "a later one"               # a mode this fsbackup does not know keeps every lock away
        assert LockInfo.from_doc("x", doc).conflicts_with("shared")


def test_wait_options_are_checked(env, tmp_path):
    src = write(tmp_path / "src" / "f", b"data").parent
    for bad in ("5", "soon", "-1s", "1h 2m"):
        r = env.run("backup", src, f"--retry-lock={bad}")
        assert r.rc == errors.EXIT_USAGE and "is not a duration (e.g. 30s, 5m, 2h, 1h30m)" in r.err
    r = env.run("prune", "--retry-lock", "5m", "--no-wait")
    assert r.rc == errors.EXIT_USAGE and "give --no-wait or --retry-lock, not both" in r.err
    r = env.run("backup", src, "--retry-lock", "5m", "--no-wait")
    assert r.rc == errors.EXIT_USAGE and "give --no-wait or --retry-lock, not both" in r.err


def list_locks_of(env) -> list[LockInfo]:
    with opened(env) as repo:
        return list_locks(repo)


def test_a_held_lock_stops_backup_in_another_process(env, tmp_path):
    src = write(tmp_path / "src" / "f", b"data")
    with opened(env) as repo, repository_lock(repo, "exclusive", command="prune"):
        r = env.run_process("backup", src.parent, "--no-wait")
        assert r.rc == errors.EXIT_LOCKED
        assert f"locked by prune on host {socket.gethostname()} (pid {os.getpid()})" in r.err
        assert "Traceback" not in r.err
    env.ok("backup", src.parent)


def test_stale_locks_do_not_block(env, tmp_path):
    src = write(tmp_path / "src" / "f", b"data")
    long_ago = time.time_ns() - (locks.STALE_AFTER + 60) * 1_000_000_000
    with opened(env) as repo:
        gone = plant_lock(repo, pid=dead_pid())                  # its process on this host is gone
        old = plant_lock(repo, host="another-host", time_ns=long_ago, created_ns=long_ago)   # not refreshed
        assert gone.stale() and old.stale()
        reused = plant_lock(repo, started=locks._process_start(os.getpid()) + 1)   # our pid, once another process's
        assert reused.stale()
        repo.delete_lock(reused.name)
        now = time.time_ns()
        assert not LockInfo("x", "another-host", dead_pid(), "backup", True, now, now).stale()  # elsewhere: trusted
    env.ok("backup", src.parent)


def test_unlock_removes_stale_locks_and_keeps_live_ones(env):
    long_ago = time.time_ns() - (locks.STALE_AFTER + 60) * 1_000_000_000
    with opened(env) as repo:
        plant_lock(repo, pid=dead_pid(), command="backup")
        plant_lock(repo, host="another-host", time_ns=long_ago, created_ns=long_ago)
        live = Lock(repo, "exclusive", command="prune").acquire()
        try:
            r = env.ok("unlock")
            assert r.out.count("removed the lock of") == 2
            assert [lock.name for lock in list_locks(repo)] == [live.name]
            assert env.ok("unlock").out.strip() == "no stale locks"
            r = env.ok("unlock", "--all")
            assert "removed the lock of prune on host" in r.out
            assert list_locks(repo) == []
        finally:
            live.release()


def test_unlock_help_warns_about_all(blank_env):
    r = blank_env.run("unlock", "--help")
    assert r.rc == 0 and "--all" in r.out
    assert "only when you know no other fsbackup process uses the repository" in " ".join(r.out.split())


def test_refresh_rewrites_the_lock_with_a_new_time(env, monkeypatch):
    monkeypatch.setattr(locks, "REFRESH_INTERVAL", 0.05)
    with opened(env) as repo, repository_lock(repo, "shared", command="check") as lock:
        first = list_locks(repo)[0]
        assert first.name == lock.name and not first.exclusive and first.command == "check"
        deadline = time.monotonic() + 10
        while list_locks(repo)[0].time_ns == first.time_ns:         # the refresh thread rewrites it
            assert time.monotonic() < deadline, "the lock was not refreshed"
            time.sleep(0.02)
        before = list_locks(repo)[0].time_ns
        time.sleep(0.01)
        lock.refresh()
        assert list_locks(repo)[0].time_ns > before
        assert list_locks(repo)[0].created_ns == first.created_ns
    with opened(env) as repo:
        assert list_locks(repo) == []


def test_a_lock_unrefreshed_too_long_stops_the_commit(env):
    with opened(env) as repo, repository_lock(repo, "exclusive", command="backup") as lock:
        lock.ensure_held()
        lock._written_ns -= locks.STALE_AFTER * 1_000_000_000      # as after failed refreshes, or a suspend
        with pytest.raises(errors.Locked, match="could not be refreshed"):
            lock.ensure_held()


def test_shared_locks_coexist_and_keep_exclusive_ones_away(env):
    with opened(env) as repo, repository_lock(repo, "shared", command="check"):
        with repository_lock(repo, "shared", command="check"):
            assert len(list_locks(repo)) == 2
        with pytest.raises(errors.Locked, match=r"locked by check \(shared\) on host"):
            Lock(repo, "exclusive", command="prune").acquire()
        assert len(list_locks(repo)) == 1


def test_of_two_racing_lockers_none_goes_on_with_a_conflict(env, monkeypatch):
    with opened(env) as repo:
        lock = Lock(repo, "exclusive", command="backup")
        real_write = Lock._write

        def write_after_a_rival(self):
            plant_lock(repo, command="prune")        # the rival wrote its lock after our first look
            real_write(self)
        monkeypatch.setattr(Lock, "_write", write_after_a_rival)
        with pytest.raises(errors.Locked, match="locked by prune"):
            lock.acquire()
        assert [info.command for info in list_locks(repo)] == ["prune"]   # ours was taken back


def test_an_unreadable_lock_blocks_until_unlock(env, tmp_path):
    src = write(tmp_path / "src" / "f", b"data")
    write(env.repo / "locks" / ("ab" * 32), b"not a lock")
    r = env.run("backup", src.parent, "--no-wait")
    assert r.rc == errors.EXIT_LOCKED and "unreadable lock object" in r.err
    assert "removed the lock of an unreadable lock object" in env.ok("unlock").out
    env.ok("backup", src.parent)


def test_readers_work_while_an_exclusive_lock_is_held(env, tmp_path):
    src = make_full_tree(tmp_path / "src")
    env.ok("backup", src)
    with opened(env) as repo, repository_lock(repo, "exclusive", command="backup"):
        env.ok("versions")
        env.ok("ls", "latest")
        env.ok("restore", "latest", "--target", tmp_path / "out")
        assert snapshot(restored_root(tmp_path / "out", src)) == snapshot(src)
        assert env.run("backup", "--dry-run", src).rc == 0      # stores nothing, so takes no lock


FUSE_MISSING = (not os.path.exists("/dev/fuse") and "/dev/fuse is missing") or None


@pytest.mark.skipif(bool(FUSE_MISSING), reason=f"FUSE unavailable: {FUSE_MISSING}")
def test_the_mount_works_while_a_backup_holds_the_lock(env, tmp_path):
    from test_mount import Mount
    src = write(tmp_path / "src" / "f", b"first")
    env.ok("backup", src.parent)
    with opened(env) as repo, repository_lock(repo, "exclusive", command="backup"):
        m = Mount(env, tmp_path / "mnt")
        try:
            assert (m.version_dir() / str(src).lstrip("/")).read_bytes() == b"first"
        finally:
            assert m.stop() == 0


def test_b2_backup_is_refused_while_locked(b2_env, tmp_path, monkeypatch):
    env = b2_env
    for k in ("B2_APPLICATION_KEY_ID", "B2_APPLICATION_KEY"):
        monkeypatch.setenv(k, env.vars[k])
    env.ok("init")
    src = write(tmp_path / "src" / "f", b"data")
    with opened(env) as repo:
        with repository_lock(repo, "exclusive", command="prune"):
            r = env.run("backup", src.parent, "--no-wait")
            assert r.rc == errors.EXIT_LOCKED and "locked by prune" in r.err
        plant_lock(repo, pid=dead_pid())
    env.ok("backup", src.parent)
    assert "removed the lock of backup" in env.ok("unlock").out


def test_no_lock_writes_no_lock_but_still_refuses_a_live_one(env, tmp_path, monkeypatch):
    """forget and prune --no-lock (for a full repository disk) store no lock object, yet stop at
    once when a live lock shows that another command uses the repository."""
    src = write(tmp_path / "src" / "f", b"data")
    env.ok("backup", src.parent)
    write(src, b"other data")
    env.ok("backup", src.parent)
    with opened(env) as repo:
        with repository_lock(repo, "exclusive", command="backup"):
            for command in (["prune", "--no-lock"], ["forget", "--keep-last", "1", "--no-lock"]):
                r = env.run(*command, "--no-wait")
                assert r.rc == errors.EXIT_LOCKED and "locked by backup on host" in r.err, r.err
        plant_lock(repo, pid=dead_pid())                        # a stale one binds no one
        stored = []
        monkeypatch.setattr(Repository, "store_lock", lambda self, name, doc: stored.append(name))
        env.ok("forget", "--keep-last", "1", "--no-lock")
        env.ok("prune", "--no-lock")
        assert stored == [] and len(list_locks(repo)) == 1
    r = env.ok("prune", "--help")
    assert "--no-lock" in r.out and "no other fsbackup process uses the repository" in " ".join(r.out.split())
