"""The mount against other local users: POSIX ACLs and trusted.* xattrs through a real mount read
by an unprivileged user, a cache folder that holds someone's files, the daemon's log folder and
its environment."""
from __future__ import annotations

import os
import re
import stat
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import TEST_PASSWORD, pseudo_random, write
from test_mount import FUSE_MISSING, Mount

pytestmark = pytest.mark.skipif(bool(FUSE_MISSING), reason=f"FUSE unavailable: {FUSE_MISSING}")

# The binary form of system.posix_acl_access (linux/posix_acl_xattr.h), so the test needs no setfacl.
ACL_VERSION = 2
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
ACL_UNDEFINED_ID = 0xFFFFFFFF


def posix_acl(owner: int, group: int, other: int, users: dict[int, int]) -> bytes:
    """An access ACL: rwx bits for the owner, owning group and others, and for named users."""
    entries = [(ACL_USER_OBJ, owner, ACL_UNDEFINED_ID)]
    entries += [(ACL_USER, perm, uid) for uid, perm in sorted(users.items())]
    entries += [(ACL_GROUP_OBJ, group, ACL_UNDEFINED_ID), (ACL_MASK, 0o7, ACL_UNDEFINED_ID),
                (ACL_OTHER, other, ACL_UNDEFINED_ID)]
    return struct.pack("<I", ACL_VERSION) + b"".join(struct.pack("<HHI", *e) for e in entries)


@pytest.fixture
def open_folder():
    """A folder in the system's temporary folder that every user can traverse: the mount shows a
    backed-up path's ancestors with their own modes, and pytest's folders are root's alone."""
    base = Path(tempfile.mkdtemp(prefix="fsb-mount-"))
    base.chmod(0o755)
    yield base
    for mnt in base.glob("mnt*"):
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)])
    subprocess.run(["rm", "-rf", "--one-file-system", str(base)])


def as_user(user, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", *command],
                          capture_output=True, text=True)


def user_reads(user, path: Path) -> subprocess.CompletedProcess:
    return as_user(user, sys.executable, "-c", "import sys; sys.stdout.write(open(sys.argv[1]).read())", str(path))


def test_posix_acls_are_enforced_for_other_users(env, open_folder, unprivileged_user):
    src = open_folder / "src"
    src.mkdir(mode=0o755)
    src.chmod(0o755)
    denied = write(src / "denied", b"everyone but one user may read this\n")
    denied.chmod(0o644)
    os.setxattr(denied, "system.posix_acl_access", posix_acl(0o6, 0o4, 0o4, {unprivileged_user.uid: 0}))
    granted = write(src / "granted", b"only root and one user may read this\n")
    granted.chmod(0o600)
    os.setxattr(granted, "system.posix_acl_access", posix_acl(0o6, 0, 0, {unprivileged_user.uid: 0o4}))
    plain = write(src / "plain", b"anyone\n")
    plain.chmod(0o644)
    assert user_reads(unprivileged_user, denied).returncode != 0           # the source itself, as a check
    env.ok("backup", src)
    m = Mount(env, open_folder / "mnt", "--allow-other")
    try:
        inside = m.version_dir() / str(src).lstrip("/")
        assert user_reads(unprivileged_user, inside / "plain").stdout == "anyone\n"
        r = user_reads(unprivileged_user, inside / "denied")
        assert r.returncode != 0 and "Permission denied" in r.stderr, r
        r = user_reads(unprivileged_user, inside / "granted")
        assert r.returncode == 0 and r.stdout == "only root and one user may read this\n", r
        assert (inside / "denied").read_bytes() == b"everyone but one user may read this\n"   # root
    finally:
        assert m.stop() == 0


def test_trusted_xattrs_are_served_to_root_only(env, open_folder, unprivileged_user):
    src = open_folder / "src"
    src.mkdir(mode=0o755)
    src.chmod(0o755)
    f = write(src / "f", b"data")
    f.chmod(0o644)
    os.setxattr(f, "user.comment", b"for everyone")
    os.setxattr(f, "trusted.secret", b"for root only")
    env.ok("backup", src)
    m = Mount(env, open_folder / "mnt", "--allow-other")
    try:
        path = m.version_dir() / str(src).lstrip("/") / "f"
        assert sorted(os.listxattr(path)) == ["trusted.secret", "user.comment"]
        assert os.getxattr(path, "trusted.secret") == b"for root only"
        code = ("import os, sys\n"
                "print(sorted(os.listxattr(sys.argv[1])))\n"
                "try: os.getxattr(sys.argv[1], 'trusted.secret'); print('read')\n"
                "except OSError as e: print(e.errno)\n")
        r = as_user(unprivileged_user, sys.executable, "-c", code, str(path))
        assert r.returncode == 0, r.stderr
        import errno
        assert r.stdout.split("\n")[:2] == ["['user.comment']", str(errno.ENODATA)]
    finally:
        assert m.stop() == 0


def test_mount_refuses_a_cache_folder_holding_someones_files(env, tmp_path):
    write(tmp_path / "src" / "a", pseudo_random(100_000, 1))
    env.ok("backup", tmp_path / "src")
    docs = tmp_path / "Documents"
    write(docs / "thesis.odt", pseudo_random(3 << 20, 2))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = env.run_process("mount", mnt, "--daemon", "--cache-dir", docs, "--cache-size", "1M")
    try:
        assert r.rc == 2, r
        assert r.err.count("\n") == 1 and "thesis.odt" in r.err and "--cache-dir" in r.err, r.err
        assert not os.path.ismount(mnt)
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-uz", str(mnt)])
    assert (docs / "thesis.odt").read_bytes() == pseudo_random(3 << 20, 2)
    assert os.listdir(docs) == ["thesis.odt"]


def start_daemon(env, mnt: Path, *extra: str, **environ) -> int:
    mnt.mkdir(exist_ok=True)
    r = env.run_process("mount", mnt, "--daemon", *extra, **environ)
    assert r.rc == 0, r
    return int(re.search(r"pid (\d+)", r.out).group(1))


def stop_daemon(mnt: Path, pid: int) -> None:
    subprocess.run(["fusermount3", "-u", str(mnt)])
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.1)
    if os.path.ismount(mnt):
        subprocess.run(["fusermount3", "-uz", str(mnt)])


def test_daemon_logs_into_an_owner_only_folder(env, tmp_path):
    """--index in a folder others can write (here: one that is 1777, like /tmp): the log goes to a
    folder fsbackup creates there, owner-only; a symlink planted where the log goes is refused."""
    write(tmp_path / "src" / "a", b"data")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    index = shared / "x.sqlite"
    env.ok("backup", tmp_path / "src", "--index", index)
    pid = start_daemon(env, tmp_path / "mnt", "--index", str(index))
    stop_daemon(tmp_path / "mnt", pid)
    logs = shared / "logs"
    assert stat.S_IMODE(os.lstat(logs).st_mode) == 0o700 and not logs.is_symlink()
    assert stat.S_IMODE(os.lstat(logs / "mount.log").st_mode) == 0o600
    assert not (shared / "mount.log").exists()

    victim = write(tmp_path / "victim", b"untouched")
    os.unlink(logs / "mount.log")
    os.symlink(victim, logs / "mount.log")
    r = env.run_process("mount", tmp_path / "mnt", "--daemon", "--index", index)
    assert r.rc == 16 and r.err.count("\n") == 1 and "symlink" in r.err, r
    assert not os.path.ismount(tmp_path / "mnt")
    assert victim.read_bytes() == b"untouched"


def test_the_daemon_keeps_no_passphrase_in_its_environment(env, tmp_path):
    write(tmp_path / "src" / "a", b"data")
    env.ok("backup", tmp_path / "src")
    pid = start_daemon(env, tmp_path / "mnt", KEEP_ME="1")
    try:
        initial = Path(f"/proc/{pid}/environ").read_bytes()
        assert TEST_PASSWORD.encode() not in initial
        assert b"KEEP_ME=1" in initial                   # only the passphrase is cleared
        assert (tmp_path / "mnt" / "latest" / str(tmp_path / "src" / "a").lstrip("/")).read_bytes() == b"data"
    finally:
        stop_daemon(tmp_path / "mnt", pid)
