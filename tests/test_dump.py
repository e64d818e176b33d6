"""`fsbackup dump`: a file's content byte for byte, a directory as a tar or zip archive that tar,
unzip and Python's zipfile read back with its metadata, and damage as an error, never wrong bytes."""
from __future__ import annotations

import os
import pty
import shutil
import socket
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import make_full_tree, pseudo_random, restored_root, snapshot, write
from test_corruption import assert_one_line_error, backed_up, flip, volume_path

from fsbackup.errors import EXIT_CORRUPT, EXIT_NO_SPACE, EXIT_NOT_FOUND, EXIT_USAGE


def dump(env, *args: str, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    """`fsbackup dump ...` as a process, its stdout as bytes."""
    return subprocess.run([sys.executable, "-m", "fsbackup", "dump", *map(str, args)], env=env.environ(),
                          stdout=stdout, stderr=subprocess.PIPE)


def comparable(snap: dict) -> dict:
    """A `snapshot` without what an archive cannot carry: how much disk a sparse file takes."""
    for rec in snap.values():
        if isinstance(rec, dict):
            rec.pop("allocated_le_size", None)
    return snap


@pytest.fixture
def full(env, tmp_path) -> Path:
    src = make_full_tree(tmp_path / "src")
    os.link(src / "text.txt", src / "deep" / "hardlink-to-text")
    env.ok("backup", src)
    return src


def test_a_file_goes_to_stdout_byte_for_byte(env, full):
    for name in ("random.bin", "sparse", "empty", "text.txt"):
        p = dump(env, "latest", full / name)
        assert p.returncode == 0, p.stderr
        assert p.stdout == (full / name).read_bytes(), name


def test_version_colon_path_names_the_path_as_ls_and_restore_take_it(env, full):
    p = dump(env, f"latest:{full / 'text.txt'}")
    assert p.returncode == 0 and p.stdout == (full / "text.txt").read_bytes(), p.stderr
    for args, words in (([f"latest:{full}", str(full)], "once"), (["latest"], "give the path")):
        p = dump(env, *args)
        err = p.stderr.decode()
        assert p.returncode == EXIT_USAGE and p.stdout == b"" and len(err.splitlines()) == 1 and words in err, err


def test_a_directory_is_a_tar_that_tar_extracts_with_all_metadata(env, full, tmp_path):
    p = dump(env, "latest", full)
    assert p.returncode == 0, p.stderr
    out = tmp_path / "out"
    out.mkdir()
    x = subprocess.run(["tar", "-x", "--xattrs", "--xattrs-include=*", "--same-owner", "--same-permissions",
                        "-C", out], input=p.stdout, capture_output=True)
    assert x.returncode == 0, x.stderr
    # Names are the version's paths without the leading '/': the tree lands where restore puts it.
    extracted = restored_root(out, full)
    assert comparable(snapshot(extracted, with_atime=False)) == comparable(snapshot(full, with_atime=False))
    top = os.stat(extracted)
    assert (stat.S_IMODE(top.st_mode), top.st_mtime_ns) == (stat.S_IMODE(os.stat(full).st_mode),
                                                            os.stat(full).st_mtime_ns)


def test_tar_lists_the_archive(env, full):
    p = dump(env, "latest", full)
    t = subprocess.run(["tar", "-tv"], input=p.stdout, capture_output=True)
    assert t.returncode == 0, t.stderr
    rel = str(full).lstrip("/")
    listing = t.stdout.decode()
    assert f" {rel}/\n" in listing and f" {rel}/deep/a/b/c/d/leaf.txt\n" in listing, listing
    # the second name of a hard-linked file is a link to the first, not a second copy
    assert f" {rel}/random.bin link to {rel}/hardlink-to-random\n" in listing, listing


def test_a_zip_holds_contents_modes_symlinks_and_times(env, full, tmp_path):
    target = tmp_path / "out.zip"
    r = env.run("dump", "latest", full, "--archive", "zip", "-o", target)
    assert r.rc == 0, r.err
    # left out, with a warning each: what zip cannot hold
    assert "fifo: a zip archive cannot hold" in r.err and "bad-" in r.err and "only hold UTF-8 names" in r.err, r.err
    listed = subprocess.run([sys.executable, "-m", "zipfile", "-l", target], capture_output=True, text=True)
    assert listed.returncode == 0 and "text.txt" in listed.stdout, listed.stderr
    rel = str(full).lstrip("/")
    with zipfile.ZipFile(target) as z:
        infos = {i.filename: i for i in z.infolist()}
        assert z.read(f"{rel}/random.bin") == (full / "random.bin").read_bytes()
        assert z.read(f"{rel}/hardlink-to-random") == (full / "random.bin").read_bytes()
        assert z.read(f"{rel}/sparse") == (full / "sparse").read_bytes()
        assert stat.S_IMODE(infos[f"{rel}/text.txt"].external_attr >> 16) == 0o640
        assert stat.S_ISDIR(infos[f"{rel}/deep/a/"].external_attr >> 16)
        assert stat.S_IMODE(infos[f"{rel}/deep/a/"].external_attr >> 16) == 0o751
        assert stat.S_ISLNK(infos[f"{rel}/link-to-text"].external_attr >> 16)
        assert z.read(f"{rel}/link-to-text") == b"text.txt"
    out = tmp_path / "unzipped"
    u = subprocess.run(["unzip", "-q", "-X", target, "-d", out], capture_output=True)
    assert u.returncode == 0, u.stderr
    got = out / rel
    assert os.readlink(got / "link-to-text") == "text.txt"
    assert stat.S_IMODE(os.stat(got / "text.txt").st_mode) == 0o640
    assert (got / "random.bin").read_bytes() == (full / "random.bin").read_bytes()
    # unzip takes the mtime from the extended-timestamp field: whole seconds
    assert os.stat(got / "text.txt").st_mtime_ns // 10**9 == os.stat(full / "text.txt").st_mtime_ns // 10**9


def test_a_file_can_be_archived_and_target_writes_a_file(env, full, tmp_path):
    target = tmp_path / "one.tar"
    env.ok("dump", "latest", full / "text.txt", "--archive", "tar", "--target", target)
    t = subprocess.run(["tar", "-tf", target], capture_output=True, text=True)
    assert t.stdout.split() == [str(full / "text.txt").lstrip("/")]
    env.ok("dump", "latest", full / "text.txt", "-o", target)
    assert target.read_bytes() == (full / "text.txt").read_bytes()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600          # what it holds is no one else's to read
    r = env.run("dump", "latest", full, "-o", tmp_path)
    assert r.rc == EXIT_USAGE and len(r.err.splitlines()) == 1 and "directory" in r.err, r.err
    with socket.socket(socket.AF_UNIX) as sock:          # a file that cannot be opened to write
        sock.bind(str(tmp_path / "socket"))
        r = env.run("dump", "latest", full, "-o", tmp_path / "socket")
    assert r.rc == EXIT_USAGE and len(r.err.splitlines()) == 1 and "cannot write to" in r.err, r.err
    r = env.run("dump", "latest", full, "-o", tmp_path / "no folder" / "x.tar")
    assert r.rc == EXIT_USAGE and len(r.err.splitlines()) == 1 and "cannot write to" in r.err, r.err


def test_an_archive_is_not_written_to_a_terminal(env, full):
    leader, follower = pty.openpty()
    try:
        p = dump(env, "latest", full, stdout=follower)
    finally:
        os.close(follower)
        os.close(leader)
    err = p.stderr.decode()
    assert p.returncode == EXIT_USAGE and len(err.splitlines()) == 1 and "terminal" in err, err


def test_a_missing_path_is_one_line_and_exit_13(env, full):
    p = dump(env, "latest", full / "no such file")
    assert p.returncode == EXIT_NOT_FOUND and p.stdout == b"" and len(p.stderr.splitlines()) == 1, p.stderr


def test_a_stopped_reader_is_no_error(env, full):
    p = subprocess.run(f"{sys.executable} -m fsbackup dump latest {full / 'random.bin'} | head -c 10",
                       shell=True, env=env.environ(), capture_output=True)
    assert p.stdout == (full / "random.bin").read_bytes()[:10]
    assert p.stderr == b""


@pytest.mark.parametrize("how", ["stdout", "target"])
@pytest.mark.parametrize("what", ["text.txt", "."])
def test_a_full_output_is_one_line_and_exit_15(env, full, how, what):
    """/dev/full fails every write with ENOSPC, as a full disk under a --target file or a pipe would."""
    path = os.path.normpath(full / what)
    if how == "stdout":
        with open("/dev/full", "wb") as devfull:
            p = dump(env, "latest", path, stdout=devfull)
    else:
        p = dump(env, "latest", path, "-o", "/dev/full")
    err = p.stderr.decode()
    assert p.returncode == EXIT_NO_SPACE and len(err.splitlines()) == 1, err
    assert "cannot write the dump" in err and "No space left" in err, err


# ---- damage ---------------------------------------------------------------------------------

def test_a_damaged_block_stops_a_file_dump_with_an_error_and_never_wrong_bytes(env, tmp_path):
    backed = backed_up(env, tmp_path)
    second = backed.layout.files[b"big.bin"][1]
    volume, offset, length = backed.layout.blocks[second]
    flip(volume_path(env, volume), offset + length // 2)
    p = dump(env, "latest", backed.src / "big.bin")
    r = type("R", (), {"rc": p.returncode, "err": p.stderr.decode()})
    assert_one_line_error(r, EXIT_CORRUPT, "big.bin")
    whole = (backed.src / "big.bin").read_bytes()
    assert len(p.stdout) < len(whole) and whole.startswith(p.stdout)     # a prefix, cut before the damage


def test_a_damaged_block_stops_an_archive_and_leaves_no_target(env, tmp_path):
    backed = backed_up(env, tmp_path)
    (block,) = backed.layout.files[b"small2"]
    volume, offset, length = backed.layout.blocks[block]
    flip(volume_path(env, volume), offset + length // 2)
    for archive in ("tar", "zip"):
        target = tmp_path / f"out.{archive}"
        r = env.run("dump", "latest", backed.src, "--archive", archive, "-o", target)
        assert_one_line_error(r, EXIT_CORRUPT, "small2")
        assert not target.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".fsbackup-dump")]
    p = dump(env, "latest", backed.src)
    assert p.returncode == EXIT_CORRUPT
    # The stream stops: tar finds it truncated, not a complete archive with a wrong file.
    t = subprocess.run(["tar", "-t"], input=p.stdout, capture_output=True)
    assert t.returncode != 0 or b"small2" not in t.stdout


def test_a_big_file_streams_in_bounded_memory(env, tmp_path):
    size = 128 << 20
    src = tmp_path / "src"
    write(src / "small", b"small")
    with open(src / "big", "wb") as f:
        for i in range(size >> 20):
            f.write(pseudo_random(1 << 20, i))
    env.ok("backup", src)
    script = ("import resource, subprocess, sys\n"
              "p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
              "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")

    def max_rss(path: Path) -> int:
        p = subprocess.run([sys.executable, "-c", script, sys.executable, "-m", "fsbackup", "dump", "latest", path],
                           env=env.environ(), capture_output=True, text=True)
        rc, max_rss_kib = map(int, p.stdout.split())
        assert rc == 0, p.stderr
        return max_rss_kib * 1024
    grown = max_rss(src / "big") - max_rss(src / "small")
    assert grown < size // 2, f"{grown >> 20} MiB more resident while dumping {size >> 20} MiB"
    shutil.rmtree(src)


def test_remote_storage_reads_runs_of_blocks(env, tmp_path, monkeypatch):
    """On remote storage a file's blocks come as range reads of runs (repository.fetching)."""
    from fsbackup.repository import Repository
    src = tmp_path / "src"
    write(src / "big", pseudo_random(9 << 20, 5))
    write(src / "sub" / "small", b"small")
    env.ok("backup", src)
    monkeypatch.setattr(Repository, "storage_is_local", property(lambda self: False))
    runs: list[int] = []
    fetch_run = Repository.fetch_run

    def counted(self, blocks):
        runs.append(len(blocks))
        return fetch_run(self, blocks)
    monkeypatch.setattr(Repository, "fetch_run", counted)
    env.ok("dump", "latest", src / "big", "-o", tmp_path / "big")
    assert (tmp_path / "big").read_bytes() == (src / "big").read_bytes()
    assert runs and max(runs) > 1, runs
    env.ok("dump", "latest", src, "-o", tmp_path / "src.tar")
    x = subprocess.run(["tar", "-x", "-f", tmp_path / "src.tar", "-C", tmp_path], capture_output=True)
    assert x.returncode == 0, x.stderr
    assert (restored_root(tmp_path, src) / "big").read_bytes() == (src / "big").read_bytes()


def test_times_beyond_the_tar_header_are_exact(env, tmp_path):
    src = tmp_path / "src"
    times = {"before-1970": -1_234_567_890_123_456_789, "after-2242": 9_000_000_000_000_000_001,
             "fraction": 1_700_000_000_000_000_001}
    for name, ns in times.items():
        os.utime(write(src / name, name.encode()), ns=(ns, ns))
    env.ok("backup", src)
    p = dump(env, "latest", src)
    out = tmp_path / "out"
    out.mkdir()
    x = subprocess.run(["tar", "-x", "-C", out], input=p.stdout, capture_output=True)
    assert x.returncode == 0, x.stderr
    got = {name: os.stat(restored_root(out, src) / name).st_mtime_ns for name in times}
    assert got == times
