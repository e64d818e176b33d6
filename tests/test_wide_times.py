"""Times outside 1677-2262 (where nanoseconds leave 64-bit integers) and backup paths that are not
UTF-8, end to end: backup, the local index (and its rebuild), `ls -l`, restore, and a real mount.

Anyone who can write into a backed-up folder can `touch -d 2300-01-01 f`, and did make the whole
repository unusable. ext4 keeps times from 1901-12-13 to 2446 (earlier ones are clamped, so the
1900 file shows 1901 there); tmpfs keeps the kernel's whole range, signed 64-bit seconds.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import restored_root, snapshot, write
from test_mount import FUSE_MISSING, Mount

NS = 1_000_000_000
YEAR_1900 = -2_208_988_800 * NS + 123_456_789        # 1900-01-01, with nanoseconds
YEAR_2300 = 10_413_792_000 * NS + 987_654_321        # 2300-01-01: beyond int64 nanoseconds
FAR_PAST = -(2**62) * NS - 1                          # near the kernel's bounds: tmpfs keeps them
FAR_FUTURE = 2**62 * NS + 999_999_999


def make_tree(src: Path, old: int, new: int) -> Path:
    write(src / "old.txt", b"from long ago")
    write(src / "new.txt", b"from the future")
    write(src / "dir" / "inside", b"inside")
    os.symlink("old.txt", src / "link")
    os.utime(src / "old.txt", ns=(new, old))
    os.utime(src / "new.txt", ns=(old, new))
    os.utime(src / "link", ns=(old, new), follow_symlinks=False)
    os.utime(src / "dir", ns=(new, old))
    return src


def stated_times(root: Path) -> dict[str, tuple[int, int]]:
    """(mtime_ns, atime_ns of files) of the tree's entries that the test set, by name."""
    return {name: (os.lstat(root / name).st_mtime_ns, os.lstat(root / name).st_atime_ns if name.endswith(".txt") else 0)
            for name in ("old.txt", "new.txt", "link", "dir")}


def shown_time(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / NS).strftime("%Y-%m-%d %H:%M:%S")


def assert_round_trip(env, tmp_path: Path, src: Path, shown: bool = True) -> None:
    """Back up `src`, then see its times in the index (with and without a rebuild), in `ls -l`,
    in a restore, and in a second backup that takes every file as unchanged."""
    expected = stated_times(src)
    env.ok("backup", src)
    for fresh_index in (False, True):
        if fresh_index:
            shutil.rmtree(env.cache)
        rows = {Path(r["path"]).name: r for r in json.loads(env.ok("ls", "latest", src, "--json").out)}
        assert {name: rows[name]["mtime_ns"] for name in expected} == {n: t[0] for n, t in expected.items()}
        listing = env.ok("ls", "-l", "latest", src).out
        if shown:
            for name, (mtime, _) in expected.items():
                assert any(shown_time(mtime) in line and line.endswith(("/" + name, f"/{name} -> old.txt"))
                           for line in listing.splitlines()), listing
        env.ok("versions")
        env.ok("check")
    target = tmp_path / "restored"
    env.ok("restore", "latest", "--target", target)
    root = restored_root(target, src)
    assert stated_times(root) == expected
    assert snapshot(root) == snapshot(src)
    again = env.ok("backup", src).out
    assert "0 changed" in again and " 0 new" in again, again


def test_mtimes_in_1900_and_2300_survive_backup_index_ls_and_restore(env, tmp_path):
    src = make_tree(tmp_path / "src", YEAR_1900, YEAR_2300)
    assert os.stat(src / "new.txt").st_mtime_ns == YEAR_2300
    assert_round_trip(env, tmp_path, src)


def tmpfs_folder() -> str | None:
    """A folder on tmpfs (which keeps any time the kernel can), or None."""
    with open("/proc/mounts") as f:
        shm = any(line.split()[1:3] == ["/dev/shm", "tmpfs"] for line in f)
    return "/dev/shm" if shm and os.access("/dev/shm", os.W_OK) else None


@pytest.mark.skipif(tmpfs_folder() is None, reason="no writable tmpfs at /dev/shm")
def test_times_near_the_kernels_bounds_survive_on_tmpfs(env, tmp_path):
    base = Path(tempfile.mkdtemp(dir=tmpfs_folder(), prefix="fsbackup-test-"))
    try:
        src = make_tree(base / "src", FAR_PAST, FAR_FUTURE)
        assert os.stat(src / "old.txt").st_mtime_ns == FAR_PAST, "this tmpfs clamps times"
        assert_round_trip(env, base, src, shown=False)        # (datetime cannot show years past 9999)
        listing = env.ok("ls", "-l", "latest", src).out
        assert f"@{FAR_FUTURE // NS}" in listing and f"@{FAR_PAST // NS}" in listing, listing
    finally:
        shutil.rmtree(base)


@pytest.mark.skipif(bool(FUSE_MISSING), reason=f"FUSE unavailable: {FUSE_MISSING}")
def test_the_mount_shows_mtimes_in_1900_and_2300(env, tmp_path):
    src = make_tree(tmp_path / "src", YEAR_1900, YEAR_2300)
    expected = stated_times(src)
    env.ok("backup", src)
    mount = Mount(env, tmp_path / "mnt")
    try:
        inside = Path(str(mount.version_dir()) + str(src))
        assert {name: os.lstat(inside / name).st_mtime_ns for name in expected} == \
            {name: times[0] for name, times in expected.items()}
        assert (inside / "new.txt").read_bytes() == b"from the future"
    finally:
        assert mount.stop() == 0, mount.output()


def test_a_backup_path_that_is_not_utf8_round_trips(env, tmp_path):
    src = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9-\xff"))       # Latin-1 and a stray byte
    write(src / "file", b"data")
    r = env.run("backup", src)
    assert r.rc == 0 and "Traceback" not in r.err and "internal error" not in r.err, r.err
    for fresh_index in (False, True):
        if fresh_index:
            shutil.rmtree(env.cache)
        (version,) = json.loads(env.ok("versions", "--json").out)
        assert version["paths"] == [str(src)]
        assert [os.fsencode(p) for p in version["paths"]] == [os.fsencode(src)]
    env.ok("restore", "latest", "--target", tmp_path / "out")
    assert (restored_root(tmp_path / "out", src) / "file").read_bytes() == b"data"
    again = env.ok("backup", src).out                    # the same paths: the first version is its parent
    assert "1 unchanged" in again, again
