"""Rows of the local index never change meaning under a reader: a rebuild (repair) needs the index
to itself, and version and content ids are never handed out twice (fsbackup/catalog/connection.py)."""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Env, pseudo_random, restored_root, snapshot, write
from test_mount import FUSE_MISSING, Mount

from fsbackup.catalog import Catalog
from fsbackup.errors import EXIT_LOCKED


def index_file(env: Env) -> Path:
    (path,) = env.cache.rglob("index.sqlite")
    return path


def lock_is_held(index: Path) -> bool:
    """Whether some process holds the index's local lock (we cannot take it exclusively)."""
    fd = os.open(str(index) + ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def version_rows(index: Path) -> dict[str, int]:
    db = Catalog(str(index))
    try:
        return dict(db.rows("SELECT name, id FROM versions"))
    finally:
        db.close()


def many_files(root: Path, n: int) -> Path:
    for i in range(n):
        write(root / f"d{i % 20}" / f"f{i}", pseudo_random(2000 + i, i))
    return root


def test_repair_refuses_while_a_restore_runs_and_the_restore_is_exact(env, tmp_path):
    """Issue: repair renumbered rows under a running restore, which wrote other files' bytes, exit 0."""
    src = many_files(tmp_path / "src", 3000)
    env.ok("backup", src)
    write(src / "d0" / "f0", b"changed")
    env.ok("backup", src)
    expected = snapshot(src)
    ids = version_rows(index_file(env))
    target = tmp_path / "out"
    restore = subprocess.Popen([sys.executable, "-m", "fsbackup", "restore", "latest", "--target", str(target)],
                               env=env.environ(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    refused = 0
    while restore.poll() is None:
        if lock_is_held(index_file(env)):
            r = env.run("repair")
            if restore.poll() is None or r.rc == EXIT_LOCKED:
                assert r.rc == EXIT_LOCKED, r.err
                assert "in use by another fsbackup process" in r.err and len(r.err.splitlines()) == 1, r.err
                refused += 1
    out, err = restore.communicate()
    assert restore.returncode == 0, err
    assert refused >= 1, "the restore ended before repair could be tried against it"
    assert snapshot(restored_root(target, src)) == expected
    assert version_rows(index_file(env)) == ids
    env.ok("repair")                                        # alone now: it runs, and keeps the version ids
    assert version_rows(index_file(env)) == ids


def test_a_command_waits_for_then_refuses_during_a_rebuild(env, tmp_path):
    env.ok("backup", many_files(tmp_path / "src", 10))
    code = ("import sys, time\nfrom fsbackup.catalog import Catalog\n"
            f"i = Catalog({str(index_file(env))!r})\n"
            "with i.exclusive():\n    print('held', flush=True)\n    time.sleep(30)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        r = env.run("ls", "latest")
        assert r.rc == EXIT_LOCKED and "being rebuilt" in r.err, r.err
        assert time.monotonic() - started >= 5               # it waited a while first
    finally:
        holder.kill()
        holder.wait()
    env.ok("ls", "latest")


@pytest.mark.skipif(bool(FUSE_MISSING), reason=f"FUSE unavailable: {FUSE_MISSING}")
def test_repair_refuses_while_mounted_so_the_mount_never_serves_another_versions_files(env, tmp_path):
    """Issue: repair under a running mount made it serve another version's files."""
    src = many_files(tmp_path / "src", 50)
    env.ok("backup", src)
    write(src / "d1" / "f1", b"second version")
    env.ok("backup", src)
    m = Mount(env, tmp_path / "mnt")
    try:
        versions = sorted(os.listdir(m.mountpoint / "versions"))
        first = m.mountpoint / "versions" / versions[0] / str(src).lstrip("/")
        r = env.run("repair")
        assert r.rc == EXIT_LOCKED and "(a mount" in r.err, r.err
        assert (first / "d1" / "f1").read_bytes() == pseudo_random(2001, 1)
        assert (m.version_dir() / str(src).lstrip("/") / "d1" / "f1").read_bytes() == b"second version"
    finally:
        assert m.stop() == 0
    env.ok("repair")


def test_version_and_content_ids_are_never_handed_out_twice(env, tmp_path):
    src = tmp_path / "src"
    write(src / "a", pseudo_random(5000, 1))
    env.ok("backup", src)
    write(src / "a", pseudo_random(5000, 2))
    env.ok("backup", src)
    index = index_file(env)
    db = Catalog(str(index))
    (newest_id, newest_name), = db.rows("SELECT id, name FROM versions ORDER BY id DESC LIMIT 1")
    (top_content,) = db.row("SELECT MAX(id) FROM contents")
    db.close()
    env.ok("forget", newest_name)                             # the newest rows, and its content, go
    write(src / "a", pseudo_random(5000, 3))
    env.ok("backup", src)
    db = Catalog(str(index))
    (new_id,) = db.row("SELECT MAX(id) FROM versions")
    (new_content,) = db.row("SELECT MAX(id) FROM contents")
    db.close()
    assert new_id > newest_id and new_content > top_content
    ids = version_rows(index)
    env.ok("repair")                                          # a rebuild keeps version ids, and the counters
    assert version_rows(index) == ids
    write(src / "a", pseudo_random(5000, 4))
    env.ok("backup", src)
    assert max(version_rows(index).values()) > new_id


def test_a_damaged_local_index_is_set_aside_and_rebuilt(env, tmp_path):
    src = many_files(tmp_path / "src", 20)
    env.ok("backup", src)
    expected = snapshot(src)
    for damage in (b"garbage " * 1000, None):
        index = index_file(env)
        if damage is None:                                   # truncated in the middle of a page
            data = index.read_bytes()
            index.write_bytes(data[:len(data) // 2 + 100])
        else:
            index.write_bytes(damage)
        for suffix in ("-wal", "-shm"):
            Path(str(index) + suffix).unlink(missing_ok=True)
        r = env.run("versions", "--json")
        assert r.rc == 0 and "damaged" in r.err and "set aside" in r.err, r.err
        assert len(json.loads(r.out)) == 1
        assert list(index.parent.glob("index.sqlite.damaged-*"))
        env.ok("restore", "latest", "--target", tmp_path / f"out-{damage is None}")
        assert snapshot(restored_root(tmp_path / f"out-{damage is None}", src)) == expected
        for aside in index.parent.glob("index.sqlite.damaged-*"):
            aside.unlink()


def test_a_damaged_page_deep_in_the_local_index_is_named_and_repair_rebuilds_it(env, tmp_path):
    src = many_files(tmp_path / "src", 400)
    env.ok("backup", src)
    expected = snapshot(src)
    index = index_file(env)
    db = Catalog(str(index))
    db.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (root_page,) = db.row("SELECT rootpage FROM sqlite_master WHERE name='nodes'")
    (page_size,) = db.row("PRAGMA page_size")
    db.close()
    with open(index, "r+b") as f:                          # the root page of the file tree: garbage
        f.seek((root_page - 1) * page_size)
        f.write(b"\xff" * page_size)
    r = env.run("ls", "latest")
    assert r.rc == 12 and "local index" in r.err and "is damaged" in r.err and "fsbackup repair" in r.err, r.err
    assert "Traceback" not in r.err and len(r.err.splitlines()) == 1
    r = env.run("repair")
    assert r.rc == 0 and "set aside" in r.err, r.err
    env.ok("restore", "latest", "--target", tmp_path / "out")
    assert snapshot(restored_root(tmp_path / "out", src)) == expected
