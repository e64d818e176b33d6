"""Local state that belongs to its owner alone: the mount's block cache folder, owner-only folders
opened without following symlinks, the spool's temporary file, and the passphrase's environment."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write

from fsbackup.errors import PermissionDenied, UsageError
from fsbackup.mount.diskcache import CACHE_TAG, DiskCache
from fsbackup.private import open_private, open_private_folder, private_temp_file

BLOCK = bytes(range(32))


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# ---- the block cache's folder ---------------------------------------------------------------

def test_a_foreign_folder_with_files_is_refused_and_left_as_it_was(tmp_path):
    docs = tmp_path / "Documents"
    write(docs / "report.odt", b"r" * 5000)
    write(docs / "notes" / "todo.txt", b"t" * 5000)
    docs.chmod(0o755)
    with pytest.raises(UsageError, match="report.odt|notes"):
        DiskCache(str(docs), max_bytes=100)
    assert (docs / "report.odt").read_bytes() == b"r" * 5000
    assert (docs / "notes" / "todo.txt").read_bytes() == b"t" * 5000
    assert sorted(os.listdir(docs)) == ["notes", "report.odt"]
    assert mode_of(docs) == 0o755


def test_a_new_folder_is_created_owner_only_with_the_cache_tag(tmp_path):
    folder = tmp_path / "a" / "cache"
    cache = DiskCache(str(folder), max_bytes=1 << 20)
    cache.put(BLOCK, b"stored")
    assert cache.get(BLOCK) == b"stored"
    cache.close()
    assert mode_of(folder) == 0o700
    tag = (folder / "CACHEDIR.TAG").read_bytes()
    assert tag == CACHE_TAG and tag.startswith(b"Signature: 8a477f597d28d172789f06886806bc55")
    assert mode_of(folder / BLOCK.hex()) == 0o600


def test_an_empty_folder_is_taken_and_made_owner_only(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    DiskCache(str(folder), max_bytes=1 << 20).close()
    assert mode_of(folder) == 0o700
    assert (folder / "CACHEDIR.TAG").read_bytes() == CACHE_TAG


def test_only_its_own_entries_are_counted_and_evicted(tmp_path):
    """Files that appear later in the cache's folder (a user's, or anything not named like an
    entry) are never counted against the bound nor deleted, even when the cache evicts."""
    folder = tmp_path / "cache"
    cache = DiskCache(str(folder), max_bytes=1 << 20)
    cache.put(BLOCK, b"x" * 1000)
    cache.close()
    write(folder / "notes.txt", b"n" * (2 << 20))
    write(folder / ("ab" * 31), b"not quite an entry name")
    write(folder / ".tmp-mine", b"not a temporary name fsbackup makes")
    (folder / "subfolder").mkdir()
    os.symlink(tmp_path / "elsewhere", folder / ("cd" * 32))
    cache = DiskCache(str(folder), max_bytes=1500)
    assert cache.get(BLOCK) == b"x" * 1000        # the foreign 2 MiB did not push it out
    cache.put(bytes(32), b"y" * 1000)             # this one does
    cache.close()
    assert not (folder / BLOCK.hex()).exists()
    assert (folder / bytes(32).hex()).read_bytes() == b"y" * 1000
    for name in ("notes.txt", "ab" * 31, ".tmp-mine", "subfolder", "cd" * 32):
        assert os.path.lexists(folder / name), name


def test_a_cache_made_before_the_tag_is_taken_as_it_is(tmp_path):
    folder = tmp_path / "blocks"
    folder.mkdir(mode=0o700)
    write(folder / BLOCK.hex(), b"old entry")
    write(folder / ".tmp-0123456789abcdef", b"left by a crash")
    cache = DiskCache(str(folder), max_bytes=1 << 20)
    assert cache.get(BLOCK) == b"old entry"
    cache.close()
    assert sorted(os.listdir(folder)) == sorted(["CACHEDIR.TAG", BLOCK.hex()])


def test_a_symlinked_cache_folder_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "link")
    with pytest.raises(PermissionDenied, match="symlink"):
        DiskCache(str(tmp_path / "link"), max_bytes=1 << 20)
    assert os.listdir(real) == []


def test_an_entry_replaced_by_a_symlink_is_not_followed(tmp_path):
    folder = tmp_path / "cache"
    cache = DiskCache(str(folder), max_bytes=1 << 20)
    cache.put(BLOCK, b"stored")
    secret = write(tmp_path / "secret", b"someone else's file")
    os.unlink(folder / BLOCK.hex())
    os.symlink(secret, folder / BLOCK.hex())
    assert cache.get(BLOCK) is None
    cache.close()
    assert secret.read_bytes() == b"someone else's file"


def test_another_users_folder_is_refused(unprivileged_user):
    base = unprivileged_user.folder()
    theirs = base / "cache"
    theirs.mkdir()
    unprivileged_user.own(theirs)
    with pytest.raises(PermissionDenied, match="belongs to another user"):
        DiskCache(str(theirs), max_bytes=1 << 20)
    assert os.listdir(theirs) == []


# ---- owner-only folders and files -----------------------------------------------------------

def test_a_private_folder_is_created_owner_only_and_made_so(tmp_path):
    fd = open_private_folder(str(tmp_path / "a" / "logs"))
    os.close(fd)
    assert mode_of(tmp_path / "a" / "logs") == 0o700
    (tmp_path / "a" / "logs").chmod(0o777)
    os.close(open_private_folder(str(tmp_path / "a" / "logs")))
    assert mode_of(tmp_path / "a" / "logs") == 0o700


def test_a_private_folder_that_is_a_symlink_or_another_users_is_refused(tmp_path, unprivileged_user):
    os.symlink(tmp_path, tmp_path / "link")
    with pytest.raises(PermissionDenied, match="symlink"):
        open_private_folder(str(tmp_path / "link"))
    base = unprivileged_user.folder()
    (base / "logs").mkdir()
    unprivileged_user.own(base / "logs")
    with pytest.raises(PermissionDenied, match="belongs to another user"):
        open_private_folder(str(base / "logs"))


def test_open_private_does_not_follow_a_planted_symlink(tmp_path):
    folder = open_private_folder(str(tmp_path / "logs"))
    victim = write(tmp_path / "victim", b"untouched")
    os.symlink(victim, tmp_path / "logs" / "mount.log")
    try:
        with pytest.raises(PermissionDenied, match="symlink"):
            open_private(folder, "mount.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        fd = open_private(folder, "other.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.close(fd)
    finally:
        os.close(folder)
    assert victim.read_bytes() == b"untouched"
    assert mode_of(tmp_path / "logs" / "other.log") == 0o600


def test_the_spool_is_an_unnamed_file_in_an_owner_only_folder(tmp_path):
    folder = tmp_path / "index" / "tmp"
    with private_temp_file(str(folder)) as f:
        f.write(b"entries")
        f.seek(0)
        assert f.read() == b"entries"
        assert os.listdir(folder) == []              # no name another process could open or swap
        assert stat.S_IMODE(os.fstat(f.fileno()).st_mode) == 0o600
    assert mode_of(folder) == 0o700
    os.rmdir(folder)
    os.symlink(tmp_path, folder)
    with pytest.raises(PermissionDenied, match="symlink"):
        private_temp_file(str(folder))


# ---- the passphrase's environment -----------------------------------------------------------

def test_forgetting_the_passphrase_clears_the_environment_and_what_children_inherit():
    """os.environ, the C environment children inherit, and /proc/self/environ (the initial
    environment, which unsetenv leaves in place) no longer hold it."""
    secret = "a passphrase nobody may read 7c1d"
    code = (
        "import os, subprocess\n"
        "from fsbackup.private import forget_passphrase\n"
        "forget_passphrase()\n"
        "assert 'FSBACKUP_PASSWORD' not in os.environ\n"
        "child = subprocess.run(['env'], capture_output=True, env=None).stdout\n"
        "initial = open('/proc/self/environ', 'rb').read()\n"
        "print(repr(child.count(b'7c1d')), repr(initial.count(b'7c1d')), repr(b'KEEP=1' in initial))\n"
    )
    env = dict(os.environ, FSBACKUP_PASSWORD=secret, KEEP="1")
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["0", "0", "True"]
