"""A real FUSE mount reading from B2 (b2sdk's simulator, in the mount's own process)."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from conftest import Env, make_full_tree, pseudo_random, snapshot, write
from test_mount import FUSE_MISSING, pytestmark  # noqa: F401 - the same skip, with its reason

SESSION = Path(__file__).with_name("b2_session.py")


def test_mount_of_a_b2_repository_serves_every_byte(tmp_path):
    env = Env(tmp_path)
    env.vars["FSBACKUP_REPOSITORY"] = "b2://fsbackup-mount/repo"
    src = make_full_tree(tmp_path / "src")
    big = write(src / "big.bin", pseudo_random(9 * 1024 * 1024 + 5, 3))   # several blocks
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    log = open(tmp_path / "session.log", "w+")
    commands = ["init", f"backup --volume-size 2M {shlex.quote(str(src))}", f"mount {shlex.quote(str(mnt))}"]
    proc = subprocess.Popen([sys.executable, str(SESSION), "fsbackup-mount", *commands],
                            env=env.environ(), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise AssertionError(f"the B2 mount did not come up: {log.read()}")
            time.sleep(0.05)
        inside = mnt / os.readlink(mnt / "latest") / str(src).lstrip("/")
        with open(inside / "big.bin", "rb") as f:       # range reads of single blocks
            for offset in (0, 4 * 1024 * 1024 - 3, 9 * 1024 * 1024):
                f.seek(offset)
                assert f.read(4096) == big.read_bytes()[offset:offset + 4096]
        out = tmp_path / "copy"
        subprocess.run(["cp", "-a", "--preserve=all", str(inside), str(out)], check=True)
        assert snapshot(out, with_atime=False) == snapshot(src, with_atime=False)
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", str(mnt)])
        try:
            rc = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
            if os.path.ismount(mnt):
                subprocess.run(["fusermount3", "-uz", str(mnt)])
    log.seek(0)
    assert rc == 0, log.read()
