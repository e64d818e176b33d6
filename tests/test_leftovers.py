"""What a stopped run left behind is adopted or removed, with a note, by repair (and prune), under the
exclusive lock and only once older than the leftover age: backups share their lock, so a backup
cannot tell another's upload in progress from a stopped run's leftovers, and leaves both alone.
A backup still forgets volumes the repository lost, never a cryptic error. Partial uploads
(temporaries of puts a killed run never finished) are removed once old enough."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import pseudo_random, restored_root, snapshot, write
from doubles.faults import FaultyBackend
from doubles.memory import MemoryBackend
from test_b2_cli import b2_env  # noqa: F401  (a fixture)
from test_crash import backup_killed_at_put, index_path
from test_faults import FaultyStorage

from fsbackup import errors
from fsbackup.backends import open_backend
from fsbackup.backends.local import LocalBackend
from fsbackup.backends.retry import RetryingBackend
from fsbackup.repository import locks


def objects(env, folder: str) -> set[str]:
    root = env.repo / folder
    return {str(p.relative_to(env.repo)) for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")}


def aged(path: Path, seconds: float) -> Path:
    """Make `path` look last written `seconds` ago (not following a link)."""
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)
    return path


def partial_uploads(root: Path) -> set[Path]:
    return {p for p in root.rglob(".tmp-*")}


def recorded_volumes(env) -> set[str]:
    db = sqlite3.connect(index_path(env))
    try:
        return {name for (name,) in db.execute("SELECT name FROM volumes")}
    finally:
        db.close()


def test_a_volume_left_without_its_index_object_is_left_by_backups_and_adopted_by_repair(env, tmp_path):
    src = tmp_path / "src"
    write(src / "big", pseudo_random(3 << 20, 5))
    log = tmp_path / "puts.log"
    r = backup_killed_at_put(env, src, 2, "after", log)       # the lock, then the first volume, and no more
    assert r.returncode != 0 and log.read_text().split()[1].startswith("data/")
    # (the other upload thread may have stored a second volume, even with its index object, before
    # the kill landed)
    indexed = {o.rsplit("/", 1)[1] for o in objects(env, "index")}
    orphans = {v for v in objects(env, "data") if v.rsplit("/", 1)[1] not in indexed}
    assert orphans and objects(env, "versions") == set()
    assert "removed the lock of backup (append) on host" in env.ok("unlock").out     # the killed backup's, stale

    r = env.ok("backup", src, "--volume-size", "1M")          # as if another machine's upload in progress
    assert "adopted" not in r.err and "Traceback" not in r.err
    assert all(f"index/{volume.rsplit('/', 1)[1]}" not in objects(env, "index") for volume in orphans)
    r = env.ok("repair")
    for volume in orphans:
        name = volume.rsplit("/", 1)[1]
        assert f"re-created index/{name} from its volume" in r.out
        assert f"index/{name}" in objects(env, "index") and name in recorded_volumes(env)
    env.ok("restore", "latest", "--target", tmp_path / "out")
    assert snapshot(restored_root(tmp_path / "out", src)) == snapshot(src)


def test_leftovers_made_by_hand_are_settled_by_repair_with_notes_once_old_enough(env, tmp_path):
    src = write(tmp_path / "src" / "f", pseudo_random(100_000, 1)).parent
    env.ok("backup", src)
    garbage_volume = "data/ab/" + "ab" * 32                         # a volume whose table does not read
    write(env.repo / garbage_volume, b"FSBV\1\0\0\0 not really a volume")
    lonely_index = "index/" + "cd" * 32                             # an index object for no volume
    write(env.repo / lonely_index, b"FSBI\1\0\0\0 whatever")
    stranger = "data/zz/notes.txt"
    write(env.repo / stranger, b"someone's notes")

    r = env.ok("backup", src)                                       # a backup deletes nothing
    assert f"note: {stranger} is not an fsbackup object; left alone" in r.err and "note: removed" not in r.err
    r = env.run("repair")                                           # too young to be judged: reported
    assert r.rc == errors.EXIT_CORRUPT and "note: removed" not in r.err and "note: deleted" not in r.err
    assert (env.repo / garbage_volume).exists() and (env.repo / lonely_index).exists()

    for obj in (garbage_volume, lonely_index):
        aged(env.repo / obj, locks.LEFTOVER_AGE + 60)
    r = env.ok("repair")
    assert f"note: deleted {garbage_volume}" in r.err
    assert f"note: removed {lonely_index}: its volume is missing" in r.err
    assert f"note: {stranger} is not an fsbackup object; left alone" in r.err
    assert not (env.repo / garbage_volume).exists() and not (env.repo / lonely_index).exists()
    assert (env.repo / stranger).exists()
    r = env.ok("repair")                                            # settled: nothing more to say
    assert "note: deleted" not in r.err and "note: removed" not in r.err


def test_volumes_the_remote_lost_are_forgotten_so_new_versions_store_their_blocks_again(env, tmp_path):
    src = write(tmp_path / "src" / "f", pseudo_random(300_000, 2)).parent
    env.ok("backup", src)
    shutil.rmtree(env.repo / "data")
    shutil.rmtree(env.repo / "index")                               # e.g. pruned from another machine
    r = env.run("backup", src)                                      # all of them: not taken on trust
    assert r.rc == 12 and "lists 0 of the 1 index objects" in r.err and "--accept-missing" in r.err
    r = env.ok("backup", src, "--accept-missing")
    assert "every file is read again" in r.err and "1 unchanged" not in r.out   # though unchanged
    r = env.ok("backup", src)
    assert "every file is read again" not in r.err and "1 unchanged" in r.out      # once
    env.ok("restore", "latest", "--target", tmp_path / "out")
    assert snapshot(restored_root(tmp_path / "out", src)) == snapshot(src)


def test_leftovers_on_b2_are_settled_too(b2_env, tmp_path, monkeypatch):
    env = b2_env
    for k in ("B2_APPLICATION_KEY_ID", "B2_APPLICATION_KEY"):
        monkeypatch.setenv(k, env.vars[k])
    env.ok("init")
    src = write(tmp_path / "src" / "f", pseudo_random(100_000, 3)).parent
    env.ok("backup", src)
    backend = open_backend(env.vars["FSBACKUP_REPOSITORY"])
    [(volume, _)] = backend.list("data/")
    backend.delete("index/" + volume.rsplit("/", 1)[1])              # as if a run stopped between the two
    backend.put("index/" + "cd" * 32, b"FSBI\1\0\0\0 whatever")
    env.vars["XDG_CACHE_HOME"] = str(tmp_path / "another-cache")      # a machine that never saw that volume
    assert "note: removed" not in env.ok("backup", src).err
    # B2's upload times cannot be set back: the age is shortened instead
    r = env.ok("repair", FSBACKUP_LEFTOVER_AGE_FOR_TESTS="0")
    assert f"note: adopted {volume}" in r.err and "note: removed index/" in r.err
    assert {n for n, _ in backend.list("index/")} == {"index/" + volume.rsplit("/", 1)[1]}
    env.ok("restore", "latest", "--target", tmp_path / "out")
    assert snapshot(restored_root(tmp_path / "out", src)) == snapshot(src)


@pytest.mark.parametrize("after", [1, 3, 6, 10])
def test_a_backup_on_b2_cut_off_at_any_call_leaves_a_repository_the_next_backup_uses(b2_env, tmp_path,
                                                                                     wrap_storage, monkeypatch, after):
    """B2 lives in this process, so the storage is cut off instead of the process killed: from
    the `after`-th call on, every call fails for good. The version before stays exact, and the
    next backup (the storage back, the stopped run's lock removed) settles what was left."""
    env = b2_env
    env.ok("init")
    src = tmp_path / "src"
    for i in range(3):
        write(src / f"f{i}", pseudo_random(150_000, i))
    env.ok("backup", src, "--volume-size", "256K")
    before = snapshot(src)
    for i in range(3, 12):
        write(src / f"f{i}", pseudo_random(150_000, i))
    storage = FaultyStorage(wrap_storage, monkeypatch)
    storage.setup = lambda faulty: faulty.go_down(after=after)
    r = env.run("backup", src, "--volume-size", "256K")
    assert r.rc == errors.EXIT_BACKEND and "Traceback" not in r.err, r.err
    storage.setup = lambda faulty: None
    env.ok("unlock", "--all")
    versions = [v["id"] for v in json.loads(env.ok("versions", "--json").out)]
    assert len(versions) == 1
    env.ok("restore", versions[0], "--target", tmp_path / "old")
    assert snapshot(restored_root(tmp_path / "old", src)) == before
    env.ok("backup", src, "--volume-size", "256K")
    env.ok("restore", "latest", "--target", tmp_path / "new")
    assert snapshot(restored_root(tmp_path / "new", src)) == snapshot(src)
    env.ok("check")


# ---- partial uploads ------------------------------------------------------------------------

def test_the_local_backend_removes_old_partial_uploads_in_every_folder_and_follows_no_link(tmp_path):
    root = tmp_path / "repo"
    backend = LocalBackend(str(root))
    backend.put("config", b"{}")
    backend.put("data/ab/" + "ab" * 32, b"a volume")
    old = {".tmp-1": 10, "data/ab/.tmp-2": 2000, "index/.tmp-3": 300, "locks/.tmp-4": 40}
    for name, size in old.items():
        aged(write(root / name, b"x" * size), 3600)
    fresh = write(root / "data" / "ab" / ".tmp-5", b"a put in progress")
    elsewhere = aged(write(tmp_path / "elsewhere" / ".tmp-6", b"not the repository's"), 3600)
    os.symlink(elsewhere.parent, root / "data" / "cd")          # a linked folder is not walked
    os.symlink(elsewhere, root / "index" / ".tmp-7")            # a link is no partial upload
    aged(root / "index" / ".tmp-7", 3600)

    assert backend.remove_partial_uploads(600) == (len(old), sum(old.values()))
    assert partial_uploads(root) == {fresh, root / "index" / ".tmp-7"}
    assert elsewhere.exists() and backend.get("data/ab/" + "ab" * 32) == b"a volume"
    assert backend.remove_partial_uploads(600) == (0, 0)
    assert RetryingBackend(FaultyBackend(backend)).remove_partial_uploads(0) == (1, len(b"a put in progress"))
    assert MemoryBackend().remove_partial_uploads(0) == (0, 0)    # its puts leave nothing behind


def test_partial_uploads_of_a_killed_backup_are_removed_by_repair_once_old_enough(env, tmp_path):
    src = tmp_path / "src"
    write(src / "big", pseudo_random(3 << 20, 6))
    log = tmp_path / "puts.log"
    r = backup_killed_at_put(env, src, 2, "mid", log)      # the first volume written under its temporary name
    assert r.returncode == -signal.SIGKILL
    killed = partial_uploads(env.repo / "data")
    assert killed and all(p.stat().st_size > 0 for p in killed)
    by_hand = [write(env.repo / name, pseudo_random(1000, i)) for i, name in
               enumerate([".tmp-config", "index/.tmp-a", "versions/.tmp-b", "keys/.tmp-c", "locks/.tmp-d"])]
    # the night after: every one of them is older than any put still running could be
    for path in killed | set(by_hand):
        aged(path, locks.PARTIAL_UPLOAD_AGE + 60)
    # a lock being written right now by a process taking its lock (which it will not get), and a
    # volume upload of a run whose lock went stale while it still ran: too young to be sure
    young = {aged(write(env.repo / "locks" / ".tmp-young", b"lock"), 5 * 60),
             aged(write(env.repo / "data" / "ab" / ".tmp-young", b"volume"), 5 * 60)}
    env.ok("unlock")                                        # the killed backup's lock

    size = sum(p.stat().st_size for p in killed | set(by_hand))
    r = env.ok("backup", src, "--volume-size", "1M")        # backups leave them: they may be others' puts
    assert "partial upload" not in r.err and partial_uploads(env.repo) == killed | set(by_hand) | young
    r = env.ok("repair")
    assert (f"note: removed {len(killed) + len(by_hand)} partial upload(s) of runs that stopped midway "
            f"({size} bytes)") in r.err
    assert partial_uploads(env.repo) == young
    r = env.ok("repair")
    assert "partial upload" not in r.err
    env.ok("restore", "latest", "--target", tmp_path / "out")
    assert snapshot(restored_root(tmp_path / "out", src)) == snapshot(src)
