"""A restore that stops midway (disk full, Ctrl-C, killed) never leaves a partial file under a
final name: files are written under a temporary name in their directory and renamed into place
only once complete and checked. A replaced file (--overwrite) stays whole until the rename.
A killed restore may leave its temporary; the next restore into that directory removes it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import pseudo_random, restored_root, snapshot, write
from test_corruption import flip, read_layout, volume_path
from test_crash import CHECKOUT, child_env
from test_errors import small_disk  # noqa: F401  (a fixture)

from fsbackup.errors import EXIT_CORRUPT, EXIT_INTERRUPTED, EXIT_NO_SPACE

TEMP_PREFIX = ".fsbackup-restore-"

# Runs `fsbackup.cli.main(argv[3:])` with LocalBackend.get wrapped: the k-th download from a
# volume (argv[1]) waits half a second, so the writer catches up with every block before it, and
# then sends the process signal argv[2] (INT or KILL).
SIGNAL_AT_GET = r"""
import os, signal, sys, threading, time
from fsbackup.backends import local

k, sig, argv = int(sys.argv[1]), getattr(signal, "SIG" + sys.argv[2]), sys.argv[3:]
real_get, lock, calls = local.LocalBackend.get, threading.Lock(), [0]

def get(self, name, *args, **kwargs):
    if name.startswith("data/"):
        with lock:
            calls[0] += 1
            n = calls[0]
        if n == k:
            time.sleep(0.5)
            os.kill(os.getpid(), sig)
            if sig == signal.SIGKILL:
                time.sleep(60)
    return real_get(self, name, *args, **kwargs)

local.LocalBackend.get = get
from fsbackup.cli import main
sys.exit(main(argv))
"""


def restore_signalled_at_get(env, k: int, sig: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SIGNAL_AT_GET, str(k), sig, "restore", *map(str, args)],
                          env=child_env(env), cwd=CHECKOUT, capture_output=True, text=True, timeout=120)


def temporaries(root: Path) -> list[str]:
    return [os.path.join(d, n) for d, dirs, files in os.walk(root) for n in dirs + files if n.startswith(TEMP_PREFIX)]


def assert_only_whole_files(root: Path, expected: dict[str, bytes]) -> None:
    """Every file under `root` holds exactly its expected bytes, whatever is missing."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            assert rel in expected, f"unexpected file {rel}"
            data = Path(dirpath, name).read_bytes()
            assert data == expected[rel], f"{rel} holds {len(data)} bytes, not its {len(expected[rel])}"


@pytest.mark.parametrize("kind", ["small files", "large file"])
def test_disk_full_leaves_no_partial_file_and_no_temporary(env, tmp_path, small_disk, kind):  # noqa: F811
    # The 2 MiB disk takes the first files, not the last: small files (up to 1 MiB) are written
    # in a batch, a large one block by block.
    sizes = {"small files": [700 << 10] * 4, "large file": [900 << 10, 3 << 20]}[kind]
    src = tmp_path / "src"
    expected = {f"f{i}": pseudo_random(size, i) for i, size in enumerate(sizes)}
    for name, data in expected.items():
        write(src / name, data)
    env.ok("backup", src)
    target = small_disk / "out"
    r = env.run("restore", "latest", "--target", target)
    assert r.rc == EXIT_NO_SPACE and "no space" in r.err and "Traceback" not in r.err, r.err
    root = restored_root(target, src)
    assert_only_whole_files(root, expected)
    assert len(os.listdir(root)) < len(expected)
    assert temporaries(target) == []


def big_tree(src: Path, seed: int) -> dict[str, bytes]:
    """A file of about 20 blocks, restored block by block, and a small one."""
    files = {"big": pseudo_random(16 << 20, seed), "small": pseudo_random(4096, seed + 100)}
    for name, data in files.items():
        write(src / name, data)
    return files


def test_interrupted_restore_leaves_no_partial_file_and_no_temporary(env, tmp_path):
    src = tmp_path / "src"
    expected = big_tree(src, 1)
    env.ok("backup", src)
    target = tmp_path / "out"
    p = restore_signalled_at_get(env, 8, "INT", "latest", "--target", target)
    assert p.returncode == EXIT_INTERRUPTED and "interrupted" in p.stderr and "Traceback" not in p.stderr, p.stderr
    root = restored_root(target, src)
    assert not (root / "big").exists()
    assert_only_whole_files(root, expected)
    assert temporaries(target) == []


def test_killed_overwrite_keeps_the_old_file_whole_and_the_next_restore_removes_the_temporary(env, tmp_path):
    src = tmp_path / "src"
    old = big_tree(src, 1)
    env.ok("backup", src)
    target = tmp_path / "out"
    env.ok("restore", "latest", "--target", target)
    new = big_tree(src, 2)
    before = snapshot(src)
    env.ok("backup", src)

    p = restore_signalled_at_get(env, 8, "KILL", "latest", "--target", target, "--overwrite")
    assert p.returncode == -signal.SIGKILL, p.stderr
    root = restored_root(target, src)
    assert (root / "big").read_bytes() == old["big"]       # not replaced yet, and whole
    left = temporaries(target)
    assert len(left) == 1 and os.path.dirname(left[0]) == str(root)     # the half-written new content

    env.ok("restore", "latest", "--target", target, "--overwrite")
    assert temporaries(target) == []
    assert snapshot(root) == before
    assert (root / "big").read_bytes() == new["big"]


@pytest.mark.parametrize("size", [100 << 10, 3 << 20], ids=["small", "large"])
def test_damaged_file_restored_with_overwrite_leaves_the_old_files_whole(env, tmp_path, size):
    """The new content of two hard links is damaged: each name keeps its old file, whole (the
    second link is not linked to the first name's old file)."""
    src = tmp_path / "src"
    old = {"a": pseudo_random(size, 1), "b": pseudo_random(size, 2)}
    for name, data in old.items():
        write(src / name, data)
    env.ok("backup", src)
    first = set(os.listdir(env.repo / "versions"))
    target = tmp_path / "out"
    env.ok("restore", "latest", "--target", target)
    os.unlink(src / "b")
    write(src / "a", pseudo_random(size, 3))
    os.link(src / "a", src / "b")
    env.ok("backup", src)
    (second,) = set(os.listdir(env.repo / "versions")) - first
    layout = read_layout(env, src, second)
    volume, offset, length = layout.blocks[layout.files[b"a"][-1]]
    flip(volume_path(env, volume), offset + length // 2)

    r = env.run("restore", "latest", "--target", target, "--overwrite")
    assert r.rc == EXIT_CORRUPT and "Traceback" not in r.err, r.err
    root = restored_root(target, src)
    assert {name: (root / name).read_bytes() for name in old} == old
    assert os.stat(root / "a").st_ino != os.stat(root / "b").st_ino
    assert temporaries(target) == []
