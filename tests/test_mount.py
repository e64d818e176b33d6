"""Real FUSE mounts: what a person does with `fsbackup mount`, `cp -a`, `find` and `stat`."""
from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import make_full_tree, pseudo_random, snapshot, write

from fsbackup.mount import is_dead_mount
from fsbackup.mount.session import READ_AHEAD_KIB, mount_device

FUSE_MISSING = (not os.path.exists("/dev/fuse") and "/dev/fuse is missing") or \
               (not shutil.which("fusermount3") and "fusermount3 is not installed") or None
pytestmark = pytest.mark.skipif(bool(FUSE_MISSING), reason=f"FUSE unavailable: {FUSE_MISSING}")
FSBACKUP = (sys.executable, "-m", "fsbackup")


class Mount:
    """`fsbackup mount` in a process of its own, its output in `log`. `launcher` is the command that
    runs fsbackup (e.g. behind setpriv, or a script that injects faults); `environ` extends env's."""

    def __init__(self, env, mountpoint: Path, *extra: str, launcher: tuple[str, ...] = FSBACKUP, **environ):
        self.env, self.mountpoint = env, mountpoint
        if not is_dead_mount(mountpoint):           # (a test may mount onto a dead mount)
            mountpoint.mkdir(exist_ok=True)
        self.log = open(env.tmp / "mount.log", "a+")
        self.proc = subprocess.Popen([*launcher, "mount", str(mountpoint), *extra],
                                     env=env.environ(**environ), stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not os.path.ismount(mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                raise AssertionError(f"mount did not come up: {self.log.read()}")
            time.sleep(0.05)

    def version_dir(self) -> Path:
        return self.mountpoint / os.readlink(self.mountpoint / "latest")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> int:
        if os.path.ismount(self.mountpoint):
            subprocess.run(["fusermount3", "-u", str(self.mountpoint)])
        try:
            return self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            if os.path.ismount(self.mountpoint) or is_dead_mount(self.mountpoint):
                subprocess.run(["fusermount3", "-uz", str(self.mountpoint)])
            self.log.close()


@pytest.fixture
def mounted(env, tmp_path):
    mounts = []

    def start(*extra, **options):
        m = Mount(env, tmp_path / "mnt", *extra, **options)
        mounts.append(m)
        return m
    yield start
    for m in mounts:
        m.stop()


def test_cp_a_of_a_whole_version_reproduces_the_source(env, tmp_path, mounted):
    src = make_full_tree(tmp_path / "src")
    before = snapshot(src, with_atime=False)
    env.ok("backup", src)
    m = mounted()
    out = tmp_path / "copy"
    subprocess.run(["cp", "-a", "--preserve=all", str(m.version_dir()) + str(src), str(out)], check=True)
    after = snapshot(out, with_atime=False)
    assert after.keys() == before.keys()
    for rel in before:
        assert after[rel] == before[rel], rel
    inside = m.version_dir() / str(src).lstrip("/")
    assert os.stat(inside / "random.bin").st_ino == os.stat(inside / "hardlink-to-random").st_ino


def test_find_walk_and_stat_see_every_entry(env, tmp_path, mounted):
    src = make_full_tree(tmp_path / "src")
    env.ok("backup", src)
    m = mounted()
    inside = m.version_dir() / str(src).lstrip("/")
    found = subprocess.run(["find", str(inside)], capture_output=True, check=True).stdout.splitlines()
    expected = subprocess.run(["find", str(src)], capture_output=True, check=True).stdout.splitlines()
    assert sorted(p[len(os.fsencode(inside)):] for p in found) == sorted(p[len(os.fsencode(src)):] for p in expected)
    for dirpath, dirnames, filenames in os.walk(inside):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            assert st.st_nlink >= 1
    st = os.lstat(inside / "chardev") if (src / "chardev").exists() else None
    if st is not None:
        assert st.st_rdev == os.makedev(1, 3)


def test_random_reads_of_a_large_file_match(env, tmp_path, mounted):
    src = tmp_path / "src"
    data = pseudo_random(24 << 20, 3)
    write(src / "big", data)
    env.ok("backup", src)
    m = mounted()
    import random
    rng = random.Random(2)
    with open(m.version_dir() / str(src).lstrip("/") / "big", "rb") as f:
        for _ in range(100):
            off = rng.randrange(0, len(data))
            f.seek(off)
            n = rng.choice([1, 4096, 200_000])
            assert f.read(n) == data[off:off + n]


def test_a_root_mount_reads_ahead_a_whole_request_and_reads_in_order_match(env, tmp_path, mounted):
    """Root's mount raises the kernel's read-ahead on it to FUSE's largest request (the kernel
    default splits a file read in order into 128 KiB requests), and bytes read in order through
    the wider read-ahead match."""
    if os.geteuid() != 0:
        pytest.skip("only root may set a mount's read-ahead (/sys/class/bdi)")
    src = tmp_path / "src"
    data = pseudo_random(6 << 20, 5)
    write(src / "big", data)
    env.ok("backup", src)
    m = mounted()
    device = os.stat(m.mountpoint).st_dev
    ra = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
    deadline = time.monotonic() + 5
    while ra.read_text().strip() != str(READ_AHEAD_KIB) and time.monotonic() < deadline:
        time.sleep(0.05)                  # (set at the loop's first turn after the kernel's INIT)
    assert ra.read_text().strip() == str(READ_AHEAD_KIB)
    assert (m.version_dir() / str(src).lstrip("/") / "big").read_bytes() == data


def test_the_mount_device_is_read_from_mountinfo_with_escaped_names(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text("22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw\n"
                    "40 22 0:41 / /mnt/old\\040backups ro - fuse.fsbackup fsbackup ro\n"
                    "41 22 0:42 / /mnt/old\\040backups ro - fuse.fsbackup fsbackup ro\n"
                    "42 22 0:43 / /mnt/other ro - tmpfs tmpfs ro\n")
    assert mount_device("/mnt/old backups", str(info)) == "0:42"      # the last mounted there
    assert mount_device("/mnt/other", str(info)) is None               # not FUSE
    assert mount_device("/", str(info)) is None


def test_many_concurrent_readers(env, tmp_path, mounted):
    src = tmp_path / "src"
    files = {f"f{i}": pseudo_random((3 << 20) + i, 60 + i) for i in range(8)}
    for name, data in files.items():
        write(src / name, data)
    env.ok("backup", src)
    m = mounted()
    base = m.version_dir() / str(src).lstrip("/")
    bad = []

    def read(name):
        if (base / name).read_bytes() != files[name]:
            bad.append(name)
    threads = [threading.Thread(target=read, args=(n,)) for n in files for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == []


def test_writes_are_refused_with_erofs(env, tmp_path, mounted):
    src = tmp_path / "src"
    write(src / "a", b"a")
    env.ok("backup", src)
    m = mounted()
    base = m.version_dir() / str(src).lstrip("/")
    attempts = [lambda: open(base / "a", "w"), lambda: open(base / "new", "w"), lambda: os.mkdir(base / "d"),
                lambda: os.rename(base / "a", base / "b"), lambda: os.chmod(base / "a", 0o777),
                lambda: os.unlink(base / "a"), lambda: os.setxattr(base / "a", "user.x", b"1"),
                lambda: os.symlink("x", base / "l")]
    for attempt in attempts:
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno == errno.EROFS


def test_corrupt_volume_gives_eio_on_that_file_only(env, tmp_path, mounted):
    src = tmp_path / "src"
    write(src / "a", pseudo_random(300_000, 1))
    write(src / "b", pseudo_random(300_000, 2))
    env.ok("backup", src, "--volume-size", "100K")
    vols = sorted((env.repo / "data").rglob("*"), key=lambda p: p.stat().st_mtime_ns)
    vols = [v for v in vols if v.is_file()]
    m = mounted()
    base = m.version_dir() / str(src).lstrip("/")
    # find which volume holds a's data by damaging each in turn is slow; damage the first volume written
    raw = bytearray(vols[0].read_bytes())
    raw[20] ^= 0xFF
    vols[0].write_bytes(bytes(raw))
    results = {}
    for name in ("a", "b"):
        try:
            results[name] = (base / name).read_bytes() == pseudo_random(300_000, 1 if name == "a" else 2)
        except OSError as e:
            results[name] = e.errno
    assert sorted(results.values(), key=str) == [True, errno.EIO] or set(results.values()) == {errno.EIO, True}
    m.log.flush()


def test_backup_while_mounted_appears_and_unmount_by_signal(env, tmp_path, mounted):
    src = tmp_path / "src"
    write(src / "a", b"first")
    env.ok("backup", src)
    m = mounted()
    assert len(os.listdir(m.mountpoint / "versions")) == 1
    time.sleep(1.1)
    write(src / "a", b"second")
    env.ok("backup", src)
    deadline = time.monotonic() + 10
    while len(os.listdir(m.mountpoint / "versions")) < 2:
        assert time.monotonic() < deadline, "new version did not appear"
        time.sleep(0.2)
    while (m.version_dir() / str(src).lstrip("/") / "a").read_bytes() != b"second":
        assert time.monotonic() < deadline, "latest did not move"
        time.sleep(0.2)
    m.proc.send_signal(signal.SIGTERM)
    assert m.proc.wait(timeout=20) == 0
    assert not os.path.ismount(m.mountpoint)


def test_unmount_with_fusermount_exits_zero(env, tmp_path, mounted):
    write(tmp_path / "src" / "a", b"a")
    env.ok("backup", tmp_path / "src")
    m = mounted()
    assert subprocess.run(["fusermount3", "-u", str(m.mountpoint)]).returncode == 0
    assert m.proc.wait(timeout=20) == 0
    assert not os.path.ismount(m.mountpoint)


def test_mountpoint_errors_are_one_line(env, tmp_path):
    r = env.run("mount", tmp_path / "missing")
    assert r.rc == 2 and "does not exist" in r.err and "Traceback" not in r.err
    busy = tmp_path / "busy"
    write(busy / "x", b"")
    r = env.run("mount", busy)
    assert r.rc == 2 and "not empty" in r.err
    r = env.run("mount", busy / "x")
    assert r.rc == 2 and "not a directory" in r.err


def test_mount_rebuilds_a_missing_index_first(env, tmp_path, mounted):
    write(tmp_path / "src" / "a", b"data")
    env.ok("backup", tmp_path / "src")
    shutil.rmtree(env.cache)
    m = mounted()
    assert (m.version_dir() / str(tmp_path / "src" / "a").lstrip("/")).read_bytes() == b"data"


def test_daemon_mode_detaches_once_ready(env, tmp_path):
    write(tmp_path / "src" / "a", b"data")
    env.ok("backup", tmp_path / "src")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = env.run_process("mount", mnt, "--daemon")
    try:
        assert r.rc == 0, r.err
        assert os.path.ismount(mnt)
        assert (mnt / "latest" / str(tmp_path / "src" / "a").lstrip("/")).read_bytes() == b"data"
        assert env.run_process("umount", mnt).rc == 0
        deadline = time.monotonic() + 10
        while os.path.ismount(mnt) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not os.path.ismount(mnt)
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)])


def test_metadata_calls_statfs_xattrs_and_stable_inodes(env, tmp_path, mounted):
    src = make_full_tree(tmp_path / "src")
    env.ok("backup", src)
    m = mounted("--allow-other")
    inside = m.version_dir() / str(src).lstrip("/")
    assert os.getxattr(inside / "text.txt", "user.comment") == b"an xattr value"
    with pytest.raises(OSError) as e:
        os.getxattr(inside / "text.txt", "user.missing")
    assert e.value.errno == errno.ENODATA
    assert os.listxattr(inside / "text.txt") == ["user.comment"]
    vfs = os.statvfs(m.mountpoint)
    assert vfs.f_bsize > 0 and vfs.f_blocks > 0 and vfs.f_namemax >= 255
    st = os.stat(inside / "sparse")
    assert st.st_size == 8 << 20 and st.st_blocks * 512 < 1 << 20
    inodes = {p: os.lstat(inside / p).st_ino for p in ("text.txt", "deep/a/b", "random.bin")}
    m.stop()
    m2 = mounted()
    inside2 = m2.version_dir() / str(src).lstrip("/")
    assert {p: os.lstat(inside2 / p).st_ino for p in inodes} == inodes


def test_listing_stays_quick_while_a_large_copy_streams(env, tmp_path, mounted):
    src = tmp_path / "src"
    write(src / "big", pseudo_random(96 << 20, 9))
    for i in range(300):
        write(src / "many" / f"f{i}", b"x")
    env.ok("backup", src)
    m = mounted()
    inside = m.version_dir() / str(src).lstrip("/")
    copier = threading.Thread(target=lambda: shutil.copyfile(inside / "big", tmp_path / "big-copy"))
    copier.start()
    slowest = 0.0
    while copier.is_alive():
        t = time.monotonic()
        assert len(os.listdir(inside / "many")) == 300
        os.stat(inside / "many" / "f7")
        slowest = max(slowest, time.monotonic() - t)
        time.sleep(0.02)
    copier.join()
    assert (tmp_path / "big-copy").read_bytes() == pseudo_random(96 << 20, 9)
    assert slowest < 1.0, f"a listing took {slowest:.2f} s while a copy streamed"
