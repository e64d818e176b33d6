"""A local user racing a root restore: directories swapped for symlinks while it writes.

Restore reaches every entry relative to its parent directory's descriptor, opened with O_NOFOLLOW:
a directory replaced by a symlink while it works is never followed, so nothing outside the
target is written or chmod-ed.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from conftest import pseudo_random, restored_root, write

ATTEMPTS = 6


def _source_tree(src: Path) -> Path:
    """Directories of small files, FIFOs and symlinks, and a large file: every kind of write restore does."""
    for d in range(12):
        for f in range(12):
            write(src / f"d{d:02}" / "sub" / f"f{f:02}.txt", b"restored content %d %d\n" % (d, f))
        os.mkfifo(src / f"d{d:02}" / "fifo")
        os.symlink("sub/f00.txt", src / f"d{d:02}" / "link")
        os.chmod(src / f"d{d:02}", 0o777)
    write(src / "d00" / "big.bin", pseudo_random(3 << 20, 7))
    return src


def _root_only_folder(path: Path) -> Path:
    path.mkdir(mode=0o700)
    os.chmod(path, 0o700)
    write(path / "keep", b"root's own file")
    return path


def _assert_untouched(secret: Path) -> None:
    st = os.stat(secret)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == 0
    assert sorted(os.listdir(secret)) == ["keep"]
    assert (secret / "keep").read_bytes() == b"root's own file"
    assert stat.S_IMODE(os.stat(secret / "keep").st_mode) != 0o777


# The user's side of the race: every time the directory restore creates directly in the user's
# folder appears, move it away and put a symlink to the root-only folder in its place.
USER_RACER = textwrap.dedent("""
    import os, stat, sys, time
    target, first, secret, done = sys.argv[1:5]
    top = os.path.join(target, first)
    deadline, n = time.monotonic() + 120, 0
    while not os.path.exists(done) and time.monotonic() < deadline:
        try:
            if stat.S_ISDIR(os.lstat(top).st_mode):
                os.rename(top, os.path.join(target, "moved-%d" % n))
                os.symlink(secret, top)
                n += 1
        except OSError:
            pass
""")


def test_a_user_swapping_a_directory_for_a_symlink_never_makes_a_root_restore_write_outside(
        env, tmp_path, unprivileged_user):
    src = _source_tree(tmp_path / "src")
    env.ok("backup", src)
    secret = _root_only_folder(tmp_path / "secret")
    first = src.resolve().parts[1]       # the directory restore creates in the target first
    base = unprivileged_user.folder()
    try:
        for attempt in range(ATTEMPTS):
            target, done = base / f"out{attempt}", base / f"done{attempt}"
            target.mkdir()
            unprivileged_user.own(target)       # a folder the user can write
            racer = subprocess.Popen(["setpriv", f"--reuid={unprivileged_user.uid}",
                                      f"--regid={unprivileged_user.gid}", "--clear-groups",
                                      sys.executable, "-c", USER_RACER, target, first, secret, done])
            try:
                time.sleep(0.2)     # the racer is running
                r = env.run("restore", "latest", "--target", target)
            finally:
                done.touch()
                racer.wait(timeout=60)
            assert (target / "moved-0").is_dir()   # the race was run
            assert r.rc in (0, 1), r.err         # stopped by the symlink, or done through its descriptors
            assert "Traceback" not in r.err
            _assert_untouched(secret)
    finally:
        shutil.rmtree(base)


def test_directories_swapped_for_symlinks_anywhere_in_the_target_are_never_followed(env, tmp_path):
    """Root stands in for a user who could rename any directory restore made: the race reaches
    directories deep in the tree, small-file batches, large files and the final metadata pass."""
    src = _source_tree(tmp_path / "src")
    env.ok("backup", src)
    secret = _root_only_folder(tmp_path / "secret")
    for attempt in range(ATTEMPTS):
        target = tmp_path / f"out{attempt}"
        root = restored_root(target, src)
        victims = [root / f"d{d:02}" / ("sub" if attempt % 2 else "") for d in range(12)]
        stop = threading.Event()

        def swap():
            pending = list(victims)
            while pending and not stop.is_set():
                for v in list(pending):
                    try:
                        if stat.S_ISDIR(os.lstat(v).st_mode):
                            os.rename(v, str(v).rstrip("/") + ".moved")
                            os.symlink(secret, v)
                            pending.remove(v)
                    except OSError:
                        pass
                time.sleep(0.0005)

        racer = threading.Thread(target=swap)
        racer.start()
        try:
            r = env.run("restore", "latest", "--target", target)
        finally:
            stop.set()
            racer.join()
        assert any(os.path.islink(v) for v in victims)     # the race was run
        assert r.rc in (0, 1), r.err
        assert "Traceback" not in r.err
        _assert_untouched(secret)
