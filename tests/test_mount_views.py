"""Real FUSE mounts of a repository several hosts back up into: hosts/, tags/, history/, a
version filter, and versions another machine makes while mounted."""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from conftest import make_full_tree, snapshot, write
from test_mount import FUSE_MISSING, mounted  # noqa: F401 - a fixture
from test_mount_faults import wait_for
from test_views import backup

pytestmark = pytest.mark.skipif(bool(FUSE_MISSING), reason=f"FUSE unavailable: {FUSE_MISSING}")

# `fsbackup mount` showing host a's versions only: the filter passed to mount() directly (the
# command line's own options for it are another change's).
def versions_by_host(env) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for v in json.loads(env.ok("versions", "--json").out):
        found.setdefault(v["host"], []).append(v["id"])
    return found


def test_each_host_shows_its_versions_as_restore_gives_them(env, tmp_path, mounted):
    src = make_full_tree(tmp_path / "src")
    backup(env, src, "--host", "a")
    write(src / "text.txt", b"changed on a")
    backup(env, src, "--host", "a", "--tag", "weekly")
    write(tmp_path / "other" / "b-file", b"b's")
    backup(env, tmp_path / "other", "--host", "b")
    m = mounted()
    root = m.mountpoint
    assert sorted(os.listdir(root)) == ["history", "hosts", "latest", "tags", "versions"]
    assert sorted(os.listdir(root / "hosts")) == ["a", "b"] and os.listdir(root / "tags") == ["weekly"]
    a_times = sorted(os.listdir(root / "hosts" / "a"))
    assert len(a_times) == 3 and a_times[-1] == "latest"
    newest_a = a_times[-2]
    assert os.readlink(root / "hosts" / "a" / "latest") == newest_a
    assert os.readlink(root / "tags" / "weekly" / "latest") == newest_a
    assert os.listdir(root / "hosts" / "b") == [os.readlink(root / "latest").split("/")[1], "latest"]
    # one directory, one inode, wherever it shows
    a, weekly = root / "hosts" / "a", root / "tags" / "weekly"
    for place in (a / newest_a, a / "latest", weekly / newest_a):
        assert os.stat(place).st_ino == os.stat(root / "versions" / newest_a).st_ino
        assert os.stat(place / str(src / "text.txt").lstrip("/")).st_ino == \
            os.stat(root / "versions" / newest_a / str(src / "text.txt").lstrip("/")).st_ino

    newest_a_id = versions_by_host(env)["a"][-1]
    restored = tmp_path / "restored"
    env.ok("restore", newest_a_id, "--target", restored)
    copied = tmp_path / "copied"
    subprocess.run(["cp", "-a", "--preserve=all", str(root / "hosts" / "a" / newest_a), str(copied)], check=True)
    differ = subprocess.run(["diff", "-r", "--no-dereference", str(root / "hosts" / "a" / newest_a), str(restored)],
                            capture_output=True, text=True).stdout.splitlines()
    # (diff compares no special files: it names each, which snapshot() below compares)
    assert all(line.startswith("File ") and (" is a fifo " in line or " is a character special file " in line)
               for line in differ), differ
    assert snapshot(copied, with_atime=False) == snapshot(restored, with_atime=False)
    assert (copied / str(src / "text.txt").lstrip("/")).read_bytes() == b"changed on a"


def test_history_of_a_file_and_of_a_directory(env, tmp_path, mounted):
    src = tmp_path / "src"
    contents = [b"one", b"two", b"two", b"three"]               # edited across 4 versions: 3 contents
    for data in contents:
        write(src / "notes" / "f", data)
        backup(env, src)
    write(src / "notes" / "g", b"late")
    backup(env, src)
    m = mounted()
    times = sorted(os.listdir(m.mountpoint / "versions"))
    history = m.mountpoint / "history" / str(src / "notes" / "f").lstrip("/")
    assert sorted(os.listdir(history)) == [times[0], times[1], times[3]]
    for name, data in zip((times[0], times[1], times[3]), (b"one", b"two", b"three")):
        assert (history / name).read_bytes() == data
        in_version = m.mountpoint / "versions" / name / str(src / "notes" / "f").lstrip("/")
        st, version_st = os.stat(history / name), os.stat(in_version)
        assert (st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns) == \
            (version_st.st_ino, version_st.st_mode, version_st.st_size, version_st.st_mtime_ns)
    notes = history.parent
    assert sorted(os.listdir(notes)) == ["f", "g"]
    assert os.listdir(notes / "g") == [times[4]] and os.path.isdir(notes / "g")
    listed = subprocess.run(["ls", "-l", str(history)], capture_output=True, text=True, check=True).stdout
    assert listed.count("\n-") == 3, listed


def test_a_version_another_machine_makes_shows_in_every_view_within_the_sync_interval(env, tmp_path, mounted):
    src = tmp_path / "src"
    write(src / "f", b"from a")
    backup(env, src, "--host", "a")
    m = mounted(FSBACKUP_MOUNT_SYNC_SECONDS="1")
    history = m.mountpoint / "history" / str(src / "f").lstrip("/")
    assert os.listdir(m.mountpoint / "hosts") == ["a"] and len(os.listdir(history)) == 1
    write(src / "f", b"from b")
    next_second = time.time()
    backup(env, src, "--host", "b", "--index", tmp_path / "other-index.sqlite")    # another machine
    wait_for(lambda: os.listdir(m.mountpoint / "hosts") == ["a", "b"], "host b appeared", seconds=10)
    assert time.time() - next_second < 10
    (b_time, _) = os.listdir(m.mountpoint / "hosts" / "b")
    wait_for(lambda: len(os.listdir(history)) == 2, "the new content appeared in history/", seconds=10)
    assert (history / b_time).read_bytes() == b"from b"
    assert os.readlink(m.mountpoint / "hosts" / "b" / "latest") == b_time


def test_a_version_filter_narrows_what_the_mount_shows(env, tmp_path, mounted):
    write(tmp_path / "a" / "f", b"a's")
    backup(env, tmp_path / "a", "--host", "a")
    write(tmp_path / "b" / "f", b"b's")
    backup(env, tmp_path / "b", "--host", "b")
    write(tmp_path / "c" / "f", b"a's too")
    backup(env, tmp_path / "c", "--host", "a", "--tag", "t")
    m = mounted("--host", "a", "--tag", "t")
    assert os.listdir(m.mountpoint / "hosts") == ["a"] and len(os.listdir(m.mountpoint / "versions")) == 1
    assert os.listdir(m.mountpoint / "tags") == ["t"]
    assert (m.version_dir() / str(tmp_path / "c" / "f").lstrip("/")).read_bytes() == b"a's too"
    assert os.listdir(m.mountpoint / "history" / str(tmp_path).lstrip("/")) == ["c"]
