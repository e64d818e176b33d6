"""restore's choices: --include/--exclude, --dry-run, --overwrite=MODE, --delete and VERSION:SUBPATH.

Each test builds a small tree, backs it up, and compares what restore leaves in the target with a
tree computed by hand. --delete is also run over a target a local user planted symlinks in: it
removes the symlinks and never follows them.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import make_full_tree, restored_root, snapshot, write
from test_corruption import assert_one_line_error
from test_restore_race import _assert_untouched, _root_only_folder

OLD_MTIME_NS = 1_600_000_000_123_456_789


def _source(tmp_path: Path) -> Path:
    """docs/ (with deep/ inside), music/, cache/ and a file at the top; docs is mode 0751."""
    src = tmp_path / "src"
    for rel, data in [("docs/a.odt", b"a odt"), ("docs/b.txt", b"b text"), ("docs/deep/c.odt", b"c odt"),
                      ("docs/deep/d.log", b"d log"), ("music/e.mp3", b"e mp3"), ("cache/f.odt", b"f odt"),
                      ("top.odt", b"top odt")]:
        write(src / rel, data)
    os.chmod(src / "docs", 0o751)
    os.utime(src / "docs", ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    return src


def _tree(root: Path) -> set[str]:
    """Every entry below `root`, as relative paths ('d/' for a directory)."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            found.add(os.path.normpath(os.path.join(rel, d)) + "/")
        for f in filenames:
            found.add(os.path.normpath(os.path.join(rel, f)))
    return found


ALL = {"docs/", "docs/a.odt", "docs/b.txt", "docs/deep/", "docs/deep/c.odt", "docs/deep/d.log", "music/",
       "music/e.mp3", "cache/", "cache/f.odt", "top.odt"}


@pytest.fixture
def src(env, tmp_path) -> Path:
    s = _source(tmp_path)
    env.ok("backup", s)
    return s


# ---- --include / --exclude --------------------------------------------------------------------------

@pytest.mark.parametrize("options, expected", [
    (["--include", "*.odt"], {"docs/", "docs/a.odt", "docs/deep/", "docs/deep/c.odt", "cache/", "cache/f.odt",
                              "top.odt"}),
    (["--include", "*.odt", "--exclude", "cache"], {"docs/", "docs/a.odt", "docs/deep/", "docs/deep/c.odt",
                                                    "top.odt"}),
    (["--include", "{src}/docs/deep"], {"docs/", "docs/deep/", "docs/deep/c.odt", "docs/deep/d.log"}),
    (["--include", "*/docs/*.odt"], {"docs/", "docs/a.odt", "docs/deep/", "docs/deep/c.odt"}),
    (["--exclude", "*.log", "--exclude", "{src}/music"], ALL - {"docs/deep/d.log", "music/", "music/e.mp3"}),
    (["--exclude", "deep", "--include", "docs"], {"docs/", "docs/a.odt", "docs/b.txt"}),
    (["--include", "nothing-matches"], set()),
    (["--iinclude", "*.ODT", "--iexclude", "CACHE"], {"docs/", "docs/a.odt", "docs/deep/", "docs/deep/c.odt",
                                                      "top.odt"}),
    (["--include", "*.ODT"], set()),                                # --include minds the case
    (["--iexclude", "{src}/DOCS", "--exclude", "*.mp3"], {"music/", "cache/", "cache/f.odt", "top.odt"}),
])
def test_include_and_exclude_restore_exactly_the_matching_entries(env, src, tmp_path, options, expected):
    target = tmp_path / "out"
    env.ok("restore", f"latest:{src}", "--target", target, *[o.format(src=src) for o in options])
    assert _tree(target) == expected


def test_include_restores_the_folders_on_the_way_with_their_metadata_and_keeps_absolute_places(env, src, tmp_path):
    target = tmp_path / "out"
    env.ok("restore", "latest", "--include", "c.odt", "--target", target)
    root = restored_root(target, src)
    assert _tree(root) == {"docs/", "docs/deep/", "docs/deep/c.odt"}
    st = os.stat(root / "docs")
    assert stat.S_IMODE(st.st_mode) == 0o751 and st.st_mtime_ns == OLD_MTIME_NS


# ---- --dry-run ----------------------------------------------------------------------------------------

COUNTS = ("files", "dirs", "others", "replaced", "unchanged", "kept", "deleted")


def _counts(result) -> dict:
    doc = json.loads(result.out)
    return {k: doc[k] for k in COUNTS}


def test_dry_run_writes_nothing_not_even_the_target_and_counts_as_a_real_run(env, src, tmp_path):
    os.symlink("top.odt", src / "link")
    env.ok("backup", src)
    target = tmp_path / "new" / "out"
    r = env.ok("restore", f"latest:{src}", "--target", target, "--dry-run", "--json")
    assert not (tmp_path / "new").exists()
    assert json.loads(r.out)["dry_run"] is True and json.loads(r.out)["would_write"] == 38
    planned = _counts(r)
    assert planned == {"files": 7, "dirs": 5, "others": 1, "replaced": 0, "unchanged": 0, "kept": 0, "deleted": 0}
    assert _counts(env.ok("restore", f"latest:{src}", "--target", target, "--json")) == planned


def test_dry_run_over_a_used_target_changes_nothing_and_counts_as_the_real_run(env, src, tmp_path):
    target = tmp_path / "out"
    env.ok("restore", f"latest:{src}", "--target", target)
    (target / "docs" / "a.odt").write_bytes(b"edited")
    write(target / "docs" / "extra.txt", b"extra")
    write(target / "docs" / "extra-dir" / "inside", b"extra")
    shutil.rmtree(target / "music")
    before = {p: (os.lstat(target / p).st_ino, os.lstat(target / p).st_mtime_ns) for p in _tree(target)}
    args = ("restore", f"latest:{src}", "--target", target, "--overwrite=if-changed", "--delete")
    r = env.ok(*args, "--dry-run", "-v")
    assert f"would replace {target}/docs/a.odt" in r.out.splitlines()
    assert f"would delete {target}/docs/extra-dir" in r.out.splitlines()
    assert f"would restore {target}/music/e.mp3" in r.out.splitlines()
    assert f"would leave unchanged {target}/docs/b.txt" in r.out.splitlines()
    assert {p: (os.lstat(target / p).st_ino, os.lstat(target / p).st_mtime_ns) for p in _tree(target)} == before
    planned = _counts(env.ok(*args, "--dry-run", "--json"))
    assert planned == {"files": 2, "dirs": 5, "others": 0, "replaced": 1, "unchanged": 5, "kept": 0, "deleted": 2}
    assert _counts(env.ok(*args, "--json")) == planned
    assert _tree(target) == ALL


def test_dry_run_without_overwrite_refuses_as_the_real_run_would(env, src, tmp_path):
    target = tmp_path / "out"
    write(target / "top.odt", b"mine")
    assert_one_line_error(env.run("restore", f"latest:{src}", "--target", target, "--dry-run"), 4, "--overwrite")


def test_every_entry_type_counts_alike_in_a_dry_run_and_the_real_run(env, tmp_path):
    """Large, sparse and hard-linked files, symlinks, a FIFO, a device: over an empty target, then
    over the restored tree with --overwrite=if-changed, where every entry is left as it is."""
    src = make_full_tree(tmp_path / "src")
    env.ok("backup", src)
    target = tmp_path / "out"
    args = ("restore", f"latest:{src}", "--target", target, "--json")
    planned = _counts(env.ok(*args, "--dry-run"))
    assert not target.exists()
    assert _counts(env.ok(*args)) == planned and planned["replaced"] == planned["unchanged"] == 0
    restored = snapshot(target, with_atime=False)
    inodes = {p: os.lstat(target / os.fsdecode(p)).st_ino for p in restored if not p.startswith(b"<")}
    planned = _counts(env.ok(*args, "--overwrite=if-changed", "--dry-run"))
    entries = [p for p in inodes if not (target / os.fsdecode(p)).is_dir() or (target / os.fsdecode(p)).is_symlink()]
    assert planned["unchanged"] == len(entries) == 12 and planned["replaced"] == 0      # (folders are used)
    assert _counts(env.ok(*args, "--overwrite=if-changed")) == planned
    assert {p: os.lstat(target / os.fsdecode(p)).st_ino for p in inodes} == inodes
    assert snapshot(target, with_atime=False) == restored


# ---- --overwrite MODE ---------------------------------------------------------------------------------

def _used_target(env, src: Path, target: Path) -> dict[str, int]:
    """A restored target, then: docs/a.odt edited (another size), docs/b.txt touched (same bytes, another
    mtime), docs/deep/c.odt left alone, an extra file. Returns the inode of each."""
    env.ok("restore", f"latest:{src}", "--target", target)
    (target / "docs" / "a.odt").write_bytes(b"edited locally")
    os.utime(target / "docs" / "b.txt", ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    write(target / "docs" / "extra.txt", b"mine")
    return {p: os.lstat(target / p).st_ino for p in ("docs/a.odt", "docs/b.txt", "docs/deep/c.odt")}


@pytest.mark.parametrize("mode, replaced, counts", [
    ("--overwrite", {"docs/a.odt", "docs/b.txt", "docs/deep/c.odt"}, {"replaced": 7, "unchanged": 0, "kept": 0}),
    ("--overwrite=always", {"docs/a.odt", "docs/b.txt", "docs/deep/c.odt"},
     {"replaced": 7, "unchanged": 0, "kept": 0}),
    ("--overwrite=if-changed", {"docs/a.odt", "docs/b.txt"}, {"replaced": 2, "unchanged": 5, "kept": 0}),
    ("--overwrite=never", set(), {"replaced": 0, "unchanged": 0, "kept": 7}),
])
def test_each_overwrite_mode_replaces_what_it_promises(env, src, tmp_path, mode, replaced, counts):
    target = tmp_path / "out"
    inodes = _used_target(env, src, target)
    doc = json.loads(env.ok("restore", f"latest:{src}", "--target", target, mode, "--json").out)
    assert {k: doc[k] for k in counts} == counts and doc["deleted"] == 0
    for rel, ino in inodes.items():
        assert (os.lstat(target / rel).st_ino != ino) == (rel in replaced), rel
        if rel in replaced:     # content and mtime are the version's again
            assert (target / rel).read_bytes() == (src / rel).read_bytes()
            assert os.lstat(target / rel).st_mtime_ns == os.lstat(src / rel).st_mtime_ns
    if mode == "--overwrite=never":
        assert (target / "docs" / "a.odt").read_bytes() == b"edited locally"
        assert os.lstat(target / "docs" / "b.txt").st_mtime_ns == OLD_MTIME_NS
    assert (target / "docs" / "extra.txt").read_bytes() == b"mine"      # no --delete: extras stay


def test_overwrite_never_keeps_a_file_in_a_directorys_place_and_restores_the_rest(env, src, tmp_path):
    target = tmp_path / "out"
    write(target / "docs", b"a file where the version has a folder")
    doc = json.loads(env.ok("restore", f"latest:{src}", "--target", target, "--overwrite=never", "--json").out)
    assert doc["kept"] == 1
    assert (target / "docs").read_bytes() == b"a file where the version has a folder"
    assert _tree(target) == {p for p in ALL if not p.startswith("docs/")} | {"docs"}


def test_if_changed_replaces_a_symlink_to_another_target_and_keeps_one_to_the_same(env, src, tmp_path):
    os.symlink("top.odt", src / "same")
    os.symlink("top.odt", src / "other")
    env.ok("backup", src)
    target = tmp_path / "out"
    env.ok("restore", f"latest:{src}", "--target", target)
    os.unlink(target / "other")
    os.symlink("elsewhere", target / "other")
    same = os.lstat(target / "same").st_ino
    doc = json.loads(env.ok("restore", f"latest:{src}", "--target", target, "--overwrite=if-changed",
                            "--json").out)
    assert doc["replaced"] == 1 and doc["unchanged"] == 8
    assert os.readlink(target / "other") == "top.odt" and os.lstat(target / "same").st_ino == same


# ---- --delete -----------------------------------------------------------------------------------------

def test_delete_removes_exactly_the_extras_below_the_restored_paths(env, src, tmp_path):
    target = tmp_path / "out"
    env.ok("restore", "latest", "--target", target)
    root = restored_root(target, src)
    extras = [write(root / "docs" / "extra.txt", b"x"), write(root / "docs" / "deep" / "extra-dir" / "f", b"x")]
    os.symlink("a.odt", root / "docs" / "extra-link")
    outside = [write(target / "outside.txt", b"x"), write(root / "music" / "mine.mp3", b"x"),
               write(root / "own-folder" / "f", b"x")]
    (root / "docs" / "deep" / "d.log").write_bytes(b"a local log")
    r = env.ok("restore", "latest", str(src / "docs"), "--target", target, "--delete", "--exclude", "*.log",
               "--overwrite=if-changed", "--json")
    assert json.loads(r.out)["deleted"] == 3
    assert not any(os.path.lexists(p) for p in extras + [root / "docs" / "extra-link", root / "docs/deep/extra-dir"])
    assert all(p.read_bytes() == b"x" for p in outside)
    # an excluded entry the version holds is neither restored nor deleted
    assert (root / "docs" / "deep" / "d.log").read_bytes() == b"a local log"
    assert _tree(root / "docs") == {p[len("docs/"):] for p in ALL if p.startswith("docs/") and p != "docs/"}


def test_delete_with_a_subpath_cleans_the_target_itself(env, src, tmp_path):
    target = tmp_path / "out"
    write(target / "old-report.odt", b"x")
    doc = json.loads(env.ok("restore", f"latest:{src}/docs", "--target", target, "--delete", "--json").out)
    assert doc["deleted"] == 1
    assert _tree(target) == {p[len("docs/"):] for p in ALL if p.startswith("docs/") and p != "docs/"}


def test_an_extra_that_cannot_be_deleted_is_one_line_naming_it(env, src, tmp_path):
    """An immutable file (chattr +i) cannot be deleted even by root: exit 16, naming it."""
    target = tmp_path / "out"
    stuck = write(target / "stuck.txt", b"x")
    if subprocess.run(["chattr", "+i", stuck], capture_output=True).returncode != 0:
        print("skipped: chattr +i does not work here (no chattr, or a file system without the flag)")
        pytest.skip("chattr +i does not work here")
    try:
        r = env.run("restore", f"latest:{src}/docs", "--target", target, "--delete")
        assert_one_line_error(r, 16, "permission denied deleting", str(stuck))
        assert stuck.read_bytes() == b"x"
    finally:
        subprocess.run(["chattr", "-i", stuck], check=True)


def _as_user(user, *argv: str) -> None:
    subprocess.run(["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", *argv], check=True)


@pytest.mark.parametrize("mode", ["never", "if-changed"])
def test_delete_never_follows_symlinks_a_user_planted_in_the_target(env, src, tmp_path, unprivileged_user, mode):
    secret = _root_only_folder(tmp_path / "secret")
    os.chmod(tmp_path, 0o755)
    base = unprivileged_user.folder()
    try:
        target = base / "out"
        target.mkdir()
        unprivileged_user.own(target)
        env.ok("restore", f"latest:{src}", "--target", target)
        for d in ("", "docs", "docs/deep"):
            unprivileged_user.own(target / d)
        # The user swaps a restored folder for a symlink to root's folder and plants two more.
        _as_user(unprivileged_user, "mv", str(target / "docs" / "deep"), str(target / "docs" / "moved"))
        _as_user(unprivileged_user, "ln", "-s", str(secret), str(target / "docs" / "deep"))
        _as_user(unprivileged_user, "ln", "-s", str(secret), str(target / "docs" / "planted-dir"))
        _as_user(unprivileged_user, "ln", "-s", str(secret / "keep"), str(target / "planted-file"))
        r = env.run("restore", f"latest:{src}", "--target", target, f"--overwrite={mode}", "--delete", "--json")
        assert r.rc == 0, r.err
        doc = json.loads(r.out)
        _assert_untouched(secret)
        for planted in ("docs/planted-dir", "docs/moved", "planted-file"):
            assert not os.path.lexists(target / planted)
        if mode == "never":             # kept as it is, and not entered (as are the 5 files outside it)
            assert doc["kept"] == 6 and os.readlink(target / "docs" / "deep") == str(secret)
        else:                           # replaced by the folder, the symlink removed, not followed
            assert doc["replaced"] == 1 and _tree(target) == ALL
        assert doc["deleted"] == 3
    finally:
        shutil.rmtree(base)


# ---- VERSION:SUBPATH ----------------------------------------------------------------------------------

def test_a_subpath_folder_restores_its_contents_directly_into_the_target(env, src, tmp_path):
    target = tmp_path / "out"
    env.ok("restore", f"latest:{src}/docs", "--target", target)
    assert _tree(target) == {"a.odt", "b.txt", "deep/", "deep/c.odt", "deep/d.log"}
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o751     # the target stands for the folder
    version = json.loads(env.ok("versions", "--json").out)[0]["id"]
    env.ok("restore", f"{version[:8]}:{src}/docs", "deep", "--target", tmp_path / "by-id")
    assert _tree(tmp_path / "by-id") == {"deep/", "deep/c.odt", "deep/d.log"}


def test_a_subpath_file_restores_that_file_into_the_target(env, src, tmp_path):
    target = tmp_path / "out"
    env.ok("restore", f"latest:{src}/docs/deep/c.odt", "--target", target)
    assert _tree(target) == {"c.odt"} and (target / "c.odt").read_bytes() == b"c odt"


# ---- errors -------------------------------------------------------------------------------------------

def test_bad_choices_are_refused_with_one_line(env, src, tmp_path):
    target = tmp_path / "out"
    assert_one_line_error(env.run("restore", f"latest:{src}/nowhere", "--target", target), 13, "nowhere")
    assert_one_line_error(env.run("restore", f"latest:{src}/docs", "/etc", "--target", target), 2, "/etc")
    assert_one_line_error(env.run("restore", f"latest:{src}/top.odt", "x", "--target", target), 2, "folder")
    assert_one_line_error(env.run("restore", "latest:", "--target", target), 2, "no path after ':'")
    assert_one_line_error(env.run("restore", ":/etc", "--target", target), 2, "no version before ':'")
    assert_one_line_error(env.run("restore", "latest", "--target", target, "--delete"), 2, "does not exist")
    assert_one_line_error(env.run("restore", "latest", "--target", target, "--include", "docs/*.odt"), 2,
                          "'*/docs/*.odt'")
    assert_one_line_error(env.run("restore", "latest", "--target", target, "--exclude", ""), 2, "empty pattern")
    assert_one_line_error(env.run("restore", "latest", "--target", target, "--overwrite", "sometimes"), 2,
                          "always, if-changed or never")
    assert not target.exists()


def test_ls_takes_version_subpath_as_its_path(env, src):
    assert env.ok("ls", f"latest:{src}/docs/deep").out.splitlines() == \
        [f"{src}/docs/deep", f"{src}/docs/deep/c.odt", f"{src}/docs/deep/d.log"]
    assert env.ok("ls", f"latest:{src}/docs/deep").out == env.ok("ls", "latest", f"{src}/docs/deep").out
    assert_one_line_error(env.run("ls", f"latest:{src}", "/etc"), 2, "once")
