"""The directories above a backed-up path ("ancestors") are recorded as directories with the
metadata of what they resolve to, so a symlinked parent looks the same in `ls`, in a restore and
in the mount: a directory with the owner, mode and times of its target."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from conftest import write
from test_mount import FUSE_MISSING, mounted  # noqa: F401  (mounted: fixture)


def symlinked_parent(tmp_path: Path) -> tuple[Path, Path, Path]:
    """`top/link -> real`, a directory with its own mode, owner (as root), times and xattr;
    returns (the symlinked parent, the directory it points to, the path to back up below it)."""
    real = tmp_path / "top" / "real"
    write(real / "dir" / "file.txt", b"below a symlinked parent")
    link = tmp_path / "top" / "link"
    os.symlink("real", link)
    os.chmod(real, 0o750)
    os.setxattr(real, "user.where", b"on the target")
    if os.geteuid() == 0:
        os.chown(real, 1234, 5678)
    os.utime(real, ns=(1_500_000_000_111_111_111, 1_600_000_000_222_222_222))
    return link, real, link / "dir"


def assert_directory_like(st: os.stat_result, target: os.stat_result) -> None:
    assert stat.S_ISDIR(st.st_mode), stat.filemode(st.st_mode)
    assert oct(stat.S_IMODE(st.st_mode)) == oct(stat.S_IMODE(target.st_mode))
    assert (st.st_uid, st.st_gid) == (target.st_uid, target.st_gid)
    assert st.st_mtime_ns == target.st_mtime_ns


def test_ancestor_under_a_symlink_is_listed_and_restored_as_its_target_directory(env, tmp_path):
    link, real, top = symlinked_parent(tmp_path)
    env.ok("backup", top)
    target_st = os.stat(real)

    rows = {r["path"]: r for r in json.loads(env.ok("ls", "latest", link.parent, "--json").out)}
    row = rows[str(link)]
    assert row["type"] == "d" and row["target"] is None
    assert row["mode"] == target_st.st_mode and row["mtime_ns"] == target_st.st_mtime_ns
    assert (row["uid"], row["gid"]) == (target_st.st_uid, target_st.st_gid)
    long_lines = env.ok("ls", "latest", link.parent, "-l").out.splitlines()
    assert [ln for ln in long_lines if ln.endswith(" " + str(link))][0].startswith("drwxr-x--- ")

    out = tmp_path / "out"
    env.ok("restore", "latest", "--target", out)
    restored = Path(str(out) + str(link))      # under the name that was backed up, not its target's
    assert_directory_like(os.lstat(restored), target_st)
    assert os.getxattr(restored, "user.where") == b"on the target"
    assert (restored / "dir" / "file.txt").read_bytes() == b"below a symlinked parent"


@pytest.mark.skipif(bool(FUSE_MISSING), reason=f"FUSE unavailable: {FUSE_MISSING}")
def test_ancestor_under_a_symlink_is_a_directory_with_its_targets_metadata_in_the_mount(env, tmp_path, mounted):
    link, real, top = symlinked_parent(tmp_path)
    env.ok("backup", top)
    target_st = os.stat(real)
    inside = mounted().version_dir() / str(link).lstrip("/")
    assert_directory_like(os.lstat(inside), target_st)
    assert os.listdir(inside) == ["dir"]
    assert (inside / "dir" / "file.txt").read_bytes() == b"below a symlinked parent"
