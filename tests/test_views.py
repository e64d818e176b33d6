"""The mount's views of the fleet (hosts/, tags/, history/) and its version filter, driven
directly through the view (no kernel)."""
from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

import pytest
from conftest import write
from test_vfs import open_view

from fsbackup.mount import namespace
from fsbackup.mount.namespace import HISTORY_INODE, HOSTS_INODE, ROOT_INODE, TAGS_INODE, FsOpError, in_version
from fsbackup.mount.view import RepositoryView


def names(view: RepositoryView, ino: int) -> list[bytes]:
    return [name for name, _, _ in view.readdir(ino, 0, 100000)]


def lookup_path(view: RepositoryView, ino: int, path: str | bytes):
    """The attributes of `path` (relative) below directory `ino`."""
    attr = view.getattr(ino)
    for part in os.fsencode(path).strip(b"/").split(b"/"):
        attr = view.lookup(attr.ino, part)
    return attr


def read_all(view: RepositoryView, ino: int) -> bytes:
    return view.read(view.open(ino), 0, 1 << 30)


def next_second() -> None:
    """Wait for the next second: versions made in one second get _2 names, which the tests avoid."""
    time.sleep(1.05 - time.time() % 1)


def backup(env, src: Path, *options: str) -> None:
    next_second()
    env.ok("backup", src, *options)


@pytest.fixture
def fleet(env, tmp_path):
    """Versions from hosts a (two, the second tagged `weekly`) and b (one): a's files are a/x
    (changed), b's b/y."""
    write(tmp_path / "a" / "x", b"a one")
    backup(env, tmp_path / "a", "--host", "a")
    write(tmp_path / "a" / "x", b"a two")
    backup(env, tmp_path / "a", "--host", "a", "--tag", "weekly")
    write(tmp_path / "b" / "y", b"b one")
    backup(env, tmp_path / "b", "--host", "b")
    view = open_view(env)
    yield env, tmp_path, view
    view.close()


def test_hosts_and_tags_show_their_versions_as_the_same_directories(fleet):
    env, tmp_path, view = fleet
    by_name = view.by_name
    a_names = sorted(name for name, v in by_name.items() if v.host == "a")
    assert names(view, HOSTS_INODE) == [b"a", b"b"]
    assert names(view, TAGS_INODE) == [b"weekly"]
    a = view.lookup(HOSTS_INODE, b"a")
    assert stat.S_ISDIR(a.mode) and not in_version(a.ino)
    assert names(view, a.ino) == [*a_names, b"latest"]
    for name in a_names:                                   # one directory, one inode, wherever it shows
        assert view.lookup(a.ino, name) == lookup_path(view, ROOT_INODE, b"versions/" + name)
    latest = view.lookup(a.ino, b"latest")
    assert stat.S_ISLNK(latest.mode) and view.readlink(latest.ino) == a_names[-1]
    assert latest.size == len(a_names[-1])
    b = view.lookup(HOSTS_INODE, b"b")
    assert view.readlink(view.lookup(b.ino, b"latest").ino) == view.latest          # b made the newest
    weekly = view.lookup(TAGS_INODE, b"weekly")
    assert names(view, weekly.ino) == [a_names[-1], b"latest"]
    x = lookup_path(view, weekly.ino, a_names[-1] + os.fsencode(f"{tmp_path}/a/x"))
    assert read_all(view, x.ino) == b"a two"
    for missing in (b"c", b"latest"):
        with pytest.raises(FsOpError) as e:
            view.lookup(HOSTS_INODE, missing)
        assert e.value.errno == errno.ENOENT


def test_numbers_of_top_level_directories_stay_the_same_and_below_every_versions(fleet):
    env, tmp_path, view = fleet
    first = {name: attr.ino for name, attr, _ in view.readdir(HOSTS_INODE, 0)}
    history = {name: attr.ino for name, attr, _ in view.readdir(HISTORY_INODE, 0)}
    numbers = [*first.values(), *history.values()]
    assert all(namespace.FIRST_ALLOCATED_INODE <= ino <= namespace.NODE_MASK for ino in numbers)
    assert len({*first.values(), *history.values()}) == len(first) + len(history)
    env.ok("forget", *(v.name for v in view.by_name.values() if v.host == "a"))     # a's directory goes ...
    assert view.refresh_versions()
    assert names(view, HOSTS_INODE) == [b"b"]
    with pytest.raises(FsOpError) as e:
        view.getattr(first[b"a"])
    assert e.value.errno == errno.ENOENT
    assert view.lookup(HOSTS_INODE, b"b").ino == first[b"b"]            # ... and the others keep their numbers
    assert {name: attr.ino for name, attr, _ in view.readdir(HISTORY_INODE, 0)} == history
    backup(env, tmp_path / "a", "--host", "a")
    assert view.refresh_versions()
    assert view.lookup(HOSTS_INODE, b"a").ino == first[b"a"]            # back: the same number


def test_versions_coming_or_going_make_host_and_tag_entries_stale(fleet):
    env, tmp_path, view = fleet
    a = view.lookup(HOSTS_INODE, b"a").ino
    weekly = view.lookup(TAGS_INODE, b"weekly").ino
    backup(env, tmp_path / "a", "--host", "a")
    changed = view.refresh_versions()
    (new,) = changed
    stale = view.invalidations(changed)
    assert {HOSTS_INODE, TAGS_INODE, a, weekly} <= set(stale.inodes)
    assert {(a, new), (a, b"latest"), (weekly, new), (weekly, b"latest"), (HOSTS_INODE, b"a"),
            (TAGS_INODE, b"weekly")} <= set(stale.entries)       # (b was never shown: the kernel has no entry)
    assert view.readlink(view.lookup(a, b"latest").ino) == new


def test_history_of_a_file_has_one_entry_per_distinct_content(env, tmp_path):
    src = tmp_path / "src"
    made = []
    for data in (b"first", b"second", b"second", b"third"):      # edited across 4 versions: 3 contents
        write(src / "f", data)
        os.utime(src / "f", ns=(len(made) * 10**9, len(made) * 10**9))
        backup(env, src)
        made.append(data)
    view = open_view(env)
    try:
        version_names = sorted(view.by_name)
        history = lookup_path(view, ROOT_INODE, f"history{src}/f")
        assert stat.S_ISDIR(history.mode)
        entries = view.readdir(history.ino, 0)
        # named by the first version that had each content, carrying that version's node
        assert [name for name, _, _ in entries] == [version_names[0], version_names[1], version_names[3]]
        for (name, attr, _), data, version in zip(entries, (b"first", b"second", b"third"), (0, 1, 3)):
            in_version_tree = lookup_path(view, ROOT_INODE, f"versions/{os.fsdecode(name)}{src}/f")
            assert attr.ino == in_version_tree.ino and attr.mtime_ns == version * 10**9 and attr.size == len(data)
            assert stat.S_ISREG(attr.mode) and attr.mode == in_version_tree.mode
            assert view.lookup(history.ino, name) == attr
            assert read_all(view, attr.ino) == data
        with pytest.raises(FsOpError) as e:
            view.lookup(history.ino, version_names[2])           # the same content as the one before it
        assert e.value.errno == errno.ENOENT
    finally:
        view.close()


def test_history_of_a_directory_lists_every_name_it_ever_held(env, tmp_path):
    src = tmp_path / "src"
    write(src / "kept", b"k")
    write(src / "gone", b"g")
    backup(env, src)
    (src / "gone").unlink()
    write(src / "new" / "inside", b"n")
    backup(env, src)
    view = open_view(env)
    try:
        top = names(view, HISTORY_INODE)
        assert top == sorted(top) and src.parts[1].encode() in top
        history = lookup_path(view, ROOT_INODE, f"history{src}")
        listed = view.readdir(history.ino, 0)
        assert [name for name, _, _ in listed] == [b"gone", b"kept", b"new"]
        assert all(stat.S_ISDIR(attr.mode) and not in_version(attr.ino) for _, attr, _ in listed)
        gone = view.lookup(history.ino, b"gone")
        assert gone.ino == listed[0][1].ino and view.getattr(gone.ino) == gone   # one number for one path
        (entry,) = view.readdir(gone.ino, 0)
        assert read_all(view, entry[1].ino) == b"g"
        inside = lookup_path(view, history.ino, "new/inside")
        assert stat.S_ISDIR(inside.mode) and len(view.readdir(inside.ino, 0)) == 1
        for missing in (b"never", b"kept/x"):
            with pytest.raises(FsOpError) as e:
                lookup_path(view, history.ino, missing)
            assert e.value.errno in (errno.ENOENT, errno.ENOTDIR)
        assert view.path_of(history.ino) == f"/history{src}"
    finally:
        view.close()


def test_a_path_that_was_a_file_and_a_directory_lists_both(env, tmp_path):
    src = tmp_path / "src"
    write(src / "p", b"a file")
    backup(env, src)
    (src / "p").unlink()
    write(src / "p" / "child", b"c")
    backup(env, src)
    view = open_view(env)
    try:
        first = sorted(view.by_name)[0]
        history = lookup_path(view, ROOT_INODE, f"history{src}/p")
        listed = {name: attr for name, attr, _ in view.readdir(history.ino, 0)}
        assert list(listed) == [first, b"child"]
        assert stat.S_ISREG(listed[first].mode) and read_all(view, listed[first].ino) == b"a file"
        assert stat.S_ISDIR(listed[b"child"].mode)
    finally:
        view.close()


def test_a_history_directory_is_open_only_to_whom_every_version_opened_it(env, tmp_path):
    src = tmp_path / "src"
    write(src / "d" / "f", b"x")
    os.chmod(src / "d", 0o755)
    os.chmod(src / "d" / "f", 0o640)
    backup(env, src)
    os.chmod(src / "d", 0o750)                   # others lose search: history/d must not give it back
    backup(env, src)
    view = open_view(env)
    try:
        d = lookup_path(view, ROOT_INODE, f"history{src}/d")
        assert stat.S_IMODE(d.mode) == 0o550 and (d.uid, d.gid) == (os.getuid(), os.getgid())
        f = view.lookup(d.ino, b"f")
        assert stat.S_IMODE(f.mode) == 0o550      # a file's read is its history folder's read and search
        if os.geteuid() == 0:
            os.chown(src / "d", 1234, 1234)      # another owner: root's alone
            backup(env, src)
            assert view.refresh_versions()
            d = lookup_path(view, ROOT_INODE, f"history{src}/d")
            assert (stat.S_IMODE(d.mode), d.uid, d.gid) == (0o500, 0, 0)
    finally:
        view.close()


def test_a_version_filter_narrows_every_view(fleet):
    env, tmp_path, _ = fleet
    view = open_view(env, version_filter=lambda v: v.host == "a")
    try:
        assert len(view.by_name) == 2 and all(v.host == "a" for v in view.by_name.values())
        assert names(view, HOSTS_INODE) == [b"a"]
        latest = view.readlink(lookup_path(view, ROOT_INODE, "latest").ino)
        assert latest == b"versions/" + sorted(view.by_name)[-1]
        assert tmp_path.parts[1].encode() in names(view, HISTORY_INODE)
        history = lookup_path(view, ROOT_INODE, f"history{tmp_path}")
        assert names(view, history.ino) == [b"a"]          # b's tree is not shown anywhere
        with pytest.raises(FsOpError):
            view.lookup(history.ino, b"b")
    finally:
        view.close()
