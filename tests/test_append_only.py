"""Backups with backup-only credentials (docs/append-only.md): storage that refuses every delete
and every overwrite (`doubles.appendonly.AppendOnlyBackend`). A backup never needs either: its
lock is refreshed under new names and left to go stale where it cannot be deleted; a backup
killed midway leaves what prune, run later with full rights, removes, along with the stale locks."""
from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import TEST_PASSWORD, pseudo_random, restored_root, snapshot, write
from doubles.appendonly import AppendOnlyBackend
from test_b2_cli import b2_env  # noqa: F401  (a fixture)

from fsbackup import errors
from fsbackup.backends import open_backend
from fsbackup.backends.b2 import ENV_KEY, ENV_KEY_ID, REALM, new_api, parse_url
from fsbackup.repository import Repository, locks
from fsbackup.repository.locks import Lock, LockInfo, list_locks, repository_lock

TESTS = Path(__file__).resolve().parent
CHECKOUT = TESTS.parent

# Runs `fsbackup.cli.main(argv[3:])` over backup-only storage (every `file` repository is opened
# inside AppendOnlyBackend). argv[2], when not empty, is a name prefix: the first put of such a
# name is cut off by SIGKILL with its data written and synced under the temporary name, not
# renamed into place (a kill -9 in the middle of an upload).
BACKUP_ONLY = r"""
import os, signal, sys, threading, time
sys.path.insert(0, sys.argv[1])
from doubles.appendonly import AppendOnlyBackend
from test_b2_cli import b2_env  # noqa: F401  (a fixture)
import fsbackup.backends as backends
from fsbackup.backends import local

kill_at, argv = sys.argv[2], sys.argv[3:]
plain = backends.register_scheme("file", lambda url: AppendOnlyBackend(plain(url)))
if kill_at:
    real_put, real_rename, dying = local.LocalBackend.put, os.rename, threading.local()

    def put(self, name, data):
        dying.now = name.startswith(kill_at)
        real_put(self, name, data)

    def rename(src, dst, *args, **kwargs):
        if getattr(dying, "now", False):
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(60)
        return real_rename(src, dst, *args, **kwargs)

    local.LocalBackend.put = put
    local.os.rename = rename
from fsbackup.cli import main
sys.exit(main(argv))
"""


def backup_only_process(env, *args: str, kill_at: str = "") -> subprocess.CompletedProcess:
    e = env.environ()
    e.pop("FSBACKUP_DEBUG", None)
    return subprocess.run([sys.executable, "-c", BACKUP_ONLY, str(TESTS), kill_at, *map(str, args)],
                          env=e, cwd=CHECKOUT, capture_output=True, text=True, timeout=120)


def open_repo(env, backup_only: bool) -> Repository:
    backend = open_backend(str(env.repo))
    if backup_only:
        backend = AppendOnlyBackend(backend)
    return Repository.open(backend, TEST_PASSWORD.encode(), str(env.tmp / "test-index.sqlite"))


def objects(env, folder: str) -> set[str]:
    """Every file under the repository's `folder` (temporaries of unfinished puts included)."""
    root = env.repo / folder
    return {str(p.relative_to(env.repo)) for p in root.rglob("*") if p.is_file()} if root.is_dir() else set()


def assert_at_most_the_lock_warning(stderr: str) -> None:
    """A backup under backup-only rights says at most that its lock stays (one line)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) <= 1, stderr
    for line in lines:
        assert line.startswith("warning: ") and "goes stale" in line, stderr


# ---- the lock --------------------------------------------------------------------------------

def test_a_refresh_stores_a_new_lock_object_and_overwrites_nothing(env, caplog):
    repo = open_repo(env, backup_only=True)
    try:
        with caplog.at_level(logging.WARNING, logger="fsbackup"):
            with repository_lock(repo, "append", command="backup") as lock:
                first = lock.name
                time.sleep(0.01)
                lock.refresh()                      # refused as an overwrite before: a new name now
                lock.ensure_held()
                assert lock.name != first
                held = {info.name: info for info in list_locks(repo)}
                assert set(held) == {first, lock.name}    # the old one could not be deleted: it goes stale
                assert held[lock.name].time_ns > held[first].time_ns
                assert held[lock.name].created_ns == held[first].created_ns
                assert not any(r.startswith("overwrite") for r in repo.backend.refused)
                assert not caplog.records          # a refused delete of an old lock object is expected
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1 and "goes stale" in warnings[0] and lock.name in warnings[0]
    finally:
        repo.close()


def test_with_full_rights_a_refresh_leaves_one_lock_object(env):
    repo = open_repo(env, backup_only=False)
    try:
        with repository_lock(repo, "append", command="backup") as lock:
            first = lock.name
            lock.refresh()
            assert [info.name for info in list_locks(repo)] == [lock.name] != [first]
        assert list_locks(repo) == []
    finally:
        repo.close()


def test_a_lock_that_cannot_be_withdrawn_is_left_to_go_stale(env, monkeypatch):
    """Two takers raced past each other's first look: ours withdraws, which deletes; where the
    storage refuses, the withdrawn object binds nobody in this process and the wait goes on."""
    repo = open_repo(env, backup_only=True)
    now = time.time_ns()
    rival = LockInfo("ab" * 32, "another-host", 1, "prune", True, now, now)
    looks = iter([None, rival, None, None])
    real = locks.find_conflict
    monkeypatch.setattr(locks, "find_conflict", lambda *a, **k: next(looks, None) or real(*a, **k))
    monkeypatch.setattr(locks, "_sleep", lambda seconds: None)
    try:
        lock = Lock(repo, "append", "backup").acquire(wait=60)
        names = {info.name for info in list_locks(repo)}
        assert len(names) == 2 and lock.name in names       # the withdrawn one stays, to go stale
        lock.release()
    finally:
        repo.close()


def test_a_long_backup_under_backup_only_rights_keeps_its_lock(env, tmp_path, wrap_storage, monkeypatch):
    """A backup that outlasts several refreshes still stores its version (each refresh was refused
    as an overwrite before, and the lock then counted as lost)."""
    monkeypatch.setattr(locks, "REFRESH_INTERVAL", 0.1)
    monkeypatch.setattr(locks, "STALE_AFTER", 1.0)
    src = tmp_path / "src"
    for i in range(4):
        write(src / f"f{i}", pseudo_random(200_000, i))

    class SlowBackupOnly(AppendOnlyBackend):
        def put(self, name: str, data: bytes) -> None:
            if name.startswith("data/"):
                time.sleep(0.5)                # four volumes: longer than the lock lives unrefreshed
            super().put(name, data)
    wrap_storage(SlowBackupOnly)
    r = env.run("backup", src, "--volume-size", "200K", "--connections", "1")
    assert r.rc == 0, r.err
    assert_at_most_the_lock_warning(r.err)


def test_an_exclusive_lock_removes_stale_locks(env):
    repo = open_repo(env, backup_only=False)
    long_ago = time.time_ns() - (locks.STALE_AFTER + 60) * 1_000_000_000
    try:
        stale = LockInfo("cd" * 32, "another-host", 1, "backup", True, long_ago, long_ago, mode="append")
        repo.store_lock(stale.name, stale.to_doc())
        with repository_lock(repo, "shared", command="check"):
            assert stale.name in {info.name for info in list_locks(repo)}    # only exclusive holders clean
        with repository_lock(repo, "exclusive", command="prune") as lock:
            assert [info.name for info in list_locks(repo)] == [lock.name]
    finally:
        repo.close()


# ---- backups, a crash, and the prune that cleans up ---------------------------------------------

def test_backup_only_backups_survive_a_crash_and_a_prune_with_full_rights_cleans_up(env, tmp_path, wrap_storage):
    src = tmp_path / "src"
    for i in range(6):
        write(src / f"file{i}", pseudo_random(150_000, i))
    write(src / "notes.txt", b"first\n")
    r = backup_only_process(env, "backup", src, "--volume-size", "128K")
    assert r.returncode == 0, r.stderr
    assert_at_most_the_lock_warning(r.stderr)
    first_state = snapshot(src)
    after_first = objects(env, "data") | objects(env, "index")

    write(src / "notes.txt", b"second\n")
    for i in range(6, 10):
        write(src / f"file{i}", pseudo_random(150_000, i))
    r = backup_only_process(env, "backup", src, "--volume-size", "128K", "--connections", "1", kill_at="index/")
    assert r.returncode == -signal.SIGKILL, r.stderr
    crashed = (objects(env, "data") | objects(env, "index")) - after_first
    assert any(".tmp-" in name for name in objects(env, "index")), "the kill did not land mid-upload"
    stopped_volumes = {n for n in crashed if n.startswith("data/") and ".tmp-" not in n}
    assert stopped_volumes, "the crashed backup stored no volume"

    write(src / "notes.txt", b"third\n")
    r = backup_only_process(env, "backup", src, "--volume-size", "128K")
    assert r.returncode == 0, r.stderr
    assert_at_most_the_lock_warning(r.stderr)
    second_state = snapshot(src)
    assert objects(env, "locks"), "backup-only credentials deleted a lock"

    # Restores work with the same credentials (they read only).
    undo = wrap_storage(AppendOnlyBackend)
    versions = json.loads(env.ok("versions", "--json").out)
    assert len(versions) == 2
    for version, state in zip(sorted(versions, key=lambda v: v["time_ns"]), (first_state, second_state)):
        target = tmp_path / f"restored-{version['id'][:8]}"
        env.ok("restore", version["id"], "--target", target)
        assert snapshot(restored_root(target, src)) == state
    undo()

    # The trusted machine's prune, with full rights, removes the leftovers and the stale locks.
    r = env.ok("prune", FSBACKUP_LEFTOVER_AGE_FOR_TESTS="0")
    assert objects(env, "locks") == set()
    assert env.ok("unlock").out.strip() == "no stale locks"
    left = objects(env, "data") | objects(env, "index")
    assert not any(".tmp-" in name for name in left), left
    volumes = {Path(n).name for n in left if n.startswith("data/")}
    indexes = {Path(n).name for n in left if n.startswith("index/")}
    assert volumes == indexes                    # no volume without its index object, nor the reverse
    r = env.ok("check", "--read-data")
    assert "no damage found" in r.out
    for version, state in zip(sorted(versions, key=lambda v: v["time_ns"]), (first_state, second_state)):
        target = tmp_path / f"again-{version['id'][:8]}"
        env.ok("restore", version["id"], "--target", target)
        assert snapshot(restored_root(target, src)) == state


def test_a_backup_only_repository_refuses_forget_with_one_line(env, tmp_path, wrap_storage):
    """Thinning out versions needs full rights: with backup-only ones it stops at the first
    delete with the permission error (exit 16), never a traceback."""
    src = write(tmp_path / "src" / "f", b"data")
    env.ok("backup", src.parent)
    write(src, b"more data")
    env.ok("backup", src.parent)
    unwrap = wrap_storage(AppendOnlyBackend)
    r = env.run("forget", "--keep-last", "1")
    assert r.rc == errors.EXIT_PERMISSION, r.err
    assert "backup-only credentials" in r.err and "Traceback" not in r.err
    write(src, b"still more data")
    r = env.run("backup", src.parent, "--keep-last", "1")     # the keep rules fail; the version stays
    assert r.rc == errors.EXIT_PERMISSION and "Traceback" not in r.err, r.err
    assert "is saved; the keep rules were not applied" in r.err
    unwrap()
    assert len(json.loads(env.ok("versions", "--json").out)) == 3



def test_a_forgotten_record_stored_with_backup_only_rights_deletes_nothing(env, tmp_path):
    """A compromised machine holds the keys, so it can store an authentic record that a version
    was forgotten, but it cannot delete the version. Such a record hides nothing, and the trusted
    machine's prune keeps the version's data (and names it), so no version is lost to it."""
    src = tmp_path / "src"
    for i in range(2):
        write(src / "f", pseudo_random(300_000, i))
        env.ok("backup", src)
    oldest = min(json.loads(env.ok("versions", "--json").out), key=lambda v: v["time_ns"])["id"]
    repo = open_repo(env, backup_only=True)
    try:
        repo.sync_catalog()
        try:
            repo.delete_version(oldest)          # what `forget` does: the record, then the delete
        except errors.PermissionDenied:
            pass
        assert repo.backend.refused == [f"delete versions/{oldest}"]
    finally:
        repo.close()
    assert (env.repo / "forgotten" / oldest).exists()
    assert len(json.loads(env.ok("versions", "--json").out)) == 2
    r = env.ok("prune", "--max-unused", "0", FSBACKUP_LEFTOVER_AGE_FOR_TESTS="0")
    assert f"version {oldest[:8]} is recorded as forgotten but still stored" in r.err, r.err
    env.ok("restore", oldest, "--target", tmp_path / "out")
    assert (restored_root(tmp_path / "out", src) / "f").read_bytes() == pseudo_random(300_000, 0)
    assert "no damage found" in env.ok("check", "--read-data").out


def test_a_b2_key_without_delete_files_backs_up(b2_env, tmp_path, monkeypatch):
    """On B2 (b2sdk's simulator, which enforces a key's capabilities): a key with listBuckets,
    listFiles, readFiles and writeFiles, as docs/append-only.md says to create, backs up and
    restores; a prune with the full key then removes the lock it had to leave."""
    from doubles import b2sim
    sim = b2sim.simulated()
    api = new_api(sim.api_config())
    api.authorize_account(REALM, sim.key_id, sim.key)
    # (the simulator refuses uploads to keys restricted to a bucket, which B2 allows: not restricted here)
    key = api.create_key(["listBuckets", "listFiles", "readFiles", "writeFiles"], "backup-only")
    backup_only = {ENV_KEY_ID: key.id_, ENV_KEY: key.application_key}
    b2_env.ok("init")
    src = write(tmp_path / "src" / "f", pseudo_random(300_000, 1))
    for content in (b"one", b"two"):
        write(src.parent / "notes", content)
        r = b2_env.run("backup", src.parent, **backup_only)
        assert r.rc == 0, r.err
        assert_at_most_the_lock_warning(r.err)
    r = b2_env.run("forget", "--keep-last", "1", **backup_only)
    assert r.rc == errors.EXIT_PERMISSION and "B2 refused" in r.err
    b2_env.ok("restore", "latest", "--target", tmp_path / "out", **backup_only)
    assert (restored_root(tmp_path / "out", src.parent) / "notes").read_bytes() == b"two"
    b2_env.ok("prune")
    for name, value in sim.environ().items():
        monkeypatch.setenv(name, value)
    repo = Repository.open(open_backend(b2_env.vars["FSBACKUP_REPOSITORY"]), TEST_PASSWORD.encode(),
                           str(tmp_path / "test-index.sqlite"))
    try:
        assert list_locks(repo) == []
    finally:
        repo.close()
    assert "no damage found" in b2_env.ok("check", "--read-data").out


def test_a_version_hidden_by_a_b2_key_without_delete_files_keeps_its_data(b2_env, tmp_path, monkeypatch):
    """A B2 key with writeFiles may hide a file, and its machine holds the keys to store an
    authentic record that the version was forgotten: together they would look like a forget.
    fsbackup's deletes remove every version of a name, so a hidden version was not forgotten: the
    trusted machine says so, its prune keeps the data, and the version unhidden restores."""
    from doubles import b2sim
    sim = b2sim.simulated()
    b2_env.ok("init")
    src = tmp_path / "src"
    for i in range(2):
        write(src / "f", pseudo_random(300_000, i))
        b2_env.ok("backup", src)
    oldest = min(json.loads(b2_env.ok("versions", "--json").out), key=lambda v: v["time_ns"])["id"]
    api = new_api(sim.api_config())
    api.authorize_account(REALM, sim.key_id, sim.key)
    key = api.create_key(["listBuckets", "listFiles", "readFiles", "writeFiles"], "backup-only")
    url = b2_env.vars["FSBACKUP_REPOSITORY"]
    bucket_name, prefix = parse_url(url)
    with monkeypatch.context() as m:                   # the compromised machine
        m.setenv(ENV_KEY_ID, key.id_)
        m.setenv(ENV_KEY, key.application_key)
        repo = Repository.open(sim.backend(url), TEST_PASSWORD.encode(), str(tmp_path / "its-index.sqlite"))
        try:
            repo.sync_catalog()
            try:
                repo.delete_version(oldest)            # the record is stored, the delete refused
            except errors.PermissionDenied:
                pass
        finally:
            repo.close()
        its_api = new_api(sim.api_config())
        its_api.authorize_account(REALM, key.id_, key.application_key)
        its_api.get_bucket_by_name(bucket_name).hide_file(f"{prefix}/versions/{oldest}")
    r = b2_env.ok("versions", "--json")                # the trusted machine had seen it
    assert oldest not in r.out and f"version {oldest[:8]} is hidden in the storage" in r.err, r.err
    r = b2_env.run("prune", "--max-unused", "0", FSBACKUP_LEFTOVER_AGE_FOR_TESTS="0")
    assert r.rc == errors.EXIT_CORRUPT and f"version {oldest[:8]} is gone from the repository" in r.err, r.err
    assert b2_env.run("check").rc == errors.EXIT_CORRUPT
    bucket = api.get_bucket_by_name(bucket_name)       # unhidden, with the full key
    marker = next(iter(bucket.list_file_versions(f"{prefix}/versions/{oldest}")))
    bucket.delete_file_version(marker.id_, marker.file_name)
    b2_env.ok("restore", oldest, "--target", tmp_path / "out")
    assert (restored_root(tmp_path / "out", src) / "f").read_bytes() == pseudo_random(300_000, 0)
