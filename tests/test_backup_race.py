"""A local user racing a root backup: directories swapped for symlinks, files for FIFOs.

The scan reaches every entry relative to its parent directory's descriptor, opened with
O_NOFOLLOW, so nothing outside the backed-up tree is recorded; a source file is opened without
blocking and must be the regular file the scan saw, so a FIFO swapped in never hangs the backup.
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import pseudo_random, restored_root, write

ATTEMPTS = 6


def test_a_directory_swapped_for_a_symlink_during_backup_records_nothing_from_outside(env, tmp_path):
    src = tmp_path / "src"
    outside = tmp_path / "outside"
    names = [f"f{i:03}.txt" for i in range(60)]
    for d in range(20):
        for name in names:
            write(src / f"d{d:02}" / name, b"inside\n")
    for name in names:          # the same names outside: what a followed symlink would find
        write(outside / name, b"SECRET outside the tree\n")
    os.setxattr(outside / names[0], "user.secret", b"SECRET")
    for attempt in range(ATTEMPTS):
        stop = threading.Event()

        def swap():
            while not stop.is_set():
                for d in range(20):
                    victim = src / f"d{d:02}"
                    try:
                        os.rename(victim, tmp_path / "parked")
                        os.symlink(outside, victim)
                        time.sleep(0.001)
                        os.unlink(victim)
                        os.rename(tmp_path / "parked", victim)
                    except OSError:
                        pass

        racer = threading.Thread(target=swap)
        racer.start()
        try:
            r = env.run("backup", src)
        finally:
            stop.set()
            racer.join()
        assert r.rc in (0, 3), r.err
        target = tmp_path / f"out{attempt}"
        env.ok("restore", "latest", "--target", target)
        for dirpath, _, files in os.walk(restored_root(target, src)):
            for name in files:
                p = os.path.join(dirpath, name)
                if not os.path.islink(p):
                    assert b"SECRET" not in Path(p).read_bytes(), p
                    assert "user.secret" not in os.listxattr(p, follow_symlinks=False), p


# Between the scan and the read of `victim`, replace it by a FIFO nobody writes to: a blocking
# open of it would never return. The swap happens right after the scan looked at the file.
FIFO_SWAP = textwrap.dedent("""
    import os, sys
    import fsbackup.engine.backup as backup
    from fsbackup.cli import main

    class SwappingOs:
        swapped = False

        def __getattr__(self, name):
            return getattr(os, name)

        def _after(self, path, result):
            if not self.swapped and os.fsencode(path).endswith(b"victim"):
                self.swapped = True
                victim = sys.argv[1]
                os.unlink(victim)
                os.mkfifo(victim)
            return result

        def lstat(self, path, *args, **kwargs):
            return self._after(path, os.lstat(path, *args, **kwargs))

        def stat(self, path, *args, **kwargs):
            return self._after(path, os.stat(path, *args, **kwargs))

    backup.os = SwappingOs()
    sys.exit(main(["backup", sys.argv[2]]))
""")


@pytest.mark.parametrize("size", [100, 2 << 20])
def test_a_file_swapped_for_a_fifo_during_backup_is_skipped_without_hanging(env, tmp_path, size):
    src = tmp_path / "src"
    write(src / "before.txt", b"before")
    victim = write(src / "victim", pseudo_random(size, 3))
    write(src / "zafter.txt", b"after")
    try:
        p = subprocess.run([sys.executable, "-c", FIFO_SWAP, victim, src], env=env.environ(),
                           capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the backup hung on a FIFO swapped in for a file")
    assert os.path.exists(victim) and stat.S_ISFIFO(os.lstat(victim).st_mode)   # the swap happened
    assert p.returncode == 3, p.stderr
    assert "victim" in p.stderr and "Traceback" not in p.stderr
    listing = env.ok("ls", "latest", str(src)).out
    assert "before.txt" in listing and "zafter.txt" in listing
