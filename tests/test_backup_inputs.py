"""What a backup reads besides the paths given: a stream (--stdin, --stdin-from-command), the paths
of --files-from lists, and what it leaves out by size (--exclude-larger-than) or by a pattern
whatever its case (--iexclude)."""
from __future__ import annotations

import io
import json
import os
import pty
import random
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Result, pseudo_random, write
from test_errors import assert_one_line_error
from test_mount import FUSE_MISSING, mounted  # noqa: F401  (mounted: a fixture)

from fsbackup.codec.chunker import Chunker


def backup_fed(env, data: bytes, *args: str) -> Result:
    """`fsbackup backup ARGS` as its own process, with `data` on its stdin."""
    p = subprocess.run([sys.executable, "-m", "fsbackup", "backup", *map(str, args)], input=data,
                       env=env.environ(), capture_output=True)
    return Result(p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"))


def fed_ok(env, data: bytes, *args: str) -> dict:
    r = backup_fed(env, data, *args, "--json")
    assert r.rc == 0, (r.rc, r.err)
    return json.loads(r.out)


def versions(env) -> list[dict]:
    return json.loads(env.ok("versions", "--json").out)


# ---- the stream cutter -------------------------------------------------------------------------

def test_a_stream_is_cut_where_the_same_bytes_in_memory_are():
    """Cut points do not depend on how the stream comes in (pieces of any size, windows): the
    same content read from stdin or from a file yields the same blocks, so one deduplicates
    against the other."""
    chunker = Chunker(12345)
    data = pseudo_random(20 << 20, 1)
    pieces = random.Random(2)
    stream = io.BytesIO(data)
    got = [bytes(b) for b in chunker.cut_stream(lambda n: stream.read(min(n, pieces.randint(1, 3 << 20))))]
    assert [len(b) for b in got] == [len(b) for b in chunker.cut(data)]
    assert b"".join(got) == data
    assert list(chunker.cut_stream(io.BytesIO(b"").read)) == []


# ---- --stdin ------------------------------------------------------------------------------------

def test_stdin_is_restored_byte_for_byte_at_its_path(env, tmp_path):
    data = pseudo_random(12 << 20, 3)       # more than one read window
    before = time.time_ns()
    summary = fed_ok(env, data, "--stdin", "--stdin-filename", "/var/lib/db.sql")
    assert summary["files_new"] == 1 and summary["bytes_read"] == len(data) and summary["total_size"] == len(data)
    [version] = versions(env)
    assert version["paths"] == ["/var/lib/db.sql"]
    assert "db.sql" in env.ok("ls", "latest", "/var/lib").out
    target = tmp_path / "out"
    env.ok("restore", "latest", "--target", target)
    restored = target / "var" / "lib" / "db.sql"
    assert restored.read_bytes() == data
    st = restored.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.getuid() and st.st_gid == os.getgid()
    assert before <= st.st_mtime_ns <= time.time_ns()


@pytest.mark.skipif(bool(FUSE_MISSING), reason=f"FUSE unavailable: {FUSE_MISSING}")
def test_the_mount_shows_the_stdin_file_at_its_path(env, mounted):
    data = pseudo_random(3 << 20, 7)
    fed_ok(env, data, "--stdin", "--stdin-filename", "/srv/dumps/db.sql")
    inside = mounted().version_dir() / "srv" / "dumps" / "db.sql"
    assert inside.read_bytes() == data
    assert stat.S_IMODE(inside.stat().st_mode) == 0o600


def test_an_empty_stdin_is_an_empty_file_named_stdin(env, tmp_path):
    summary = fed_ok(env, b"", "--stdin")
    assert summary["files_new"] == 1 and summary["total_size"] == 0
    assert versions(env)[0]["paths"] == ["/stdin"]
    env.ok("restore", "latest", "--target", tmp_path / "out")
    assert (tmp_path / "out" / "stdin").read_bytes() == b""


def test_folders_this_machine_lacks_are_made_up_above_the_stdin_file(env, tmp_path):
    fed_ok(env, b"dump", "--stdin", "--stdin-filename", "no-such-folder-here/sub/db.sql")
    env.ok("restore", "latest", "--target", tmp_path / "out")
    folder = tmp_path / "out" / "no-such-folder-here" / "sub"
    assert (folder / "db.sql").read_bytes() == b"dump"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755 and folder.stat().st_uid == os.getuid()


def test_a_second_identical_stdin_stores_nothing_new(env):
    data = pseudo_random(6 << 20, 4)
    first = fed_ok(env, data, "--stdin", "--stdin-filename", "db.sql")
    second = fed_ok(env, data, "--stdin", "--stdin-filename", "db.sql")
    assert first["bytes_added"] > len(data) // 2
    assert second["bytes_read"] == len(data)          # read again: a stream has nothing to compare
    assert second["bytes_added"] == 0 and second["volumes"] == 0 and second["blocks_new"] == 0


def test_a_changed_dump_stores_only_the_blocks_around_the_change(env):
    data = pseudo_random(12 << 20, 5)
    fed_ok(env, data, "--stdin", "--stdin-filename", "db.sql")
    changed = data[:6 << 20] + b"a new row" + data[6 << 20:]
    summary = fed_ok(env, changed, "--stdin", "--stdin-filename", "db.sql")
    assert summary["bytes_new"] < 6 << 20


def test_stdin_names_that_are_refused(env):
    for name in ("../etc/passwd", "/var/../etc/x", "", "/", "a/" + "x" * 256):
        assert_one_line_error(backup_fed(env, b"x", "--stdin", "--stdin-filename", name), 2, "--stdin")
    assert versions(env) == []


def test_stdin_is_read_with_bounded_memory(env):
    """256 MiB through stdin, in volumes of 1 MiB: what the process holds stays well below it.
    Random bytes, so that every block is new and stored (zeros would be one block, deduplicated:
    a backup that kept its stored blocks would pass). Measured by a fresh process, whose largest
    child is the backup."""
    size = 256 << 20
    measure = ("import resource, subprocess, sys\n"
               f"p = subprocess.run('head -c {size} /dev/urandom | {sys.executable} -m fsbackup backup --stdin --json "
               "--volume-size 1M --no-verify', shell=True)\n"
               "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n")
    p = subprocess.run([sys.executable, "-c", measure], env=env.environ(), capture_output=True, text=True)
    rc, peak_kib = map(int, p.stderr.split()[-2:])
    assert rc == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["bytes_read"] == size and doc["bytes_new"] == size
    assert peak_kib < 200 << 10, f"peak RSS {peak_kib >> 10} MiB for {size >> 20} MiB of stdin"


def test_stdin_and_other_inputs_do_not_mix(env, tmp_path):
    list_file = write(tmp_path / "list", b"/etc/hostname\n")
    assert_one_line_error(backup_fed(env, b"x", "--stdin", "--files-from", "-"), 2, "--files-from -")
    assert_one_line_error(backup_fed(env, b"x", "--stdin", "--files-from", list_file), 2, "--files-from")
    assert_one_line_error(backup_fed(env, b"x", "--stdin", tmp_path), 2, "PATH")
    assert_one_line_error(env.run("backup", tmp_path, "--stdin-filename", "x"), 2, "--stdin-filename")
    assert_one_line_error(env.run("backup"), 2, "nothing to back up")
    assert_one_line_error(env.run("backup", tmp_path, "-0"), 2, "--null")
    assert versions(env) == []


def test_stdin_from_a_terminal_is_refused(env):
    """Someone who forgot the pipe would otherwise wait on a backup reading what they type."""
    leader, follower = pty.openpty()
    try:
        p = subprocess.run([sys.executable, "-m", "fsbackup", "backup", "--stdin"], stdin=follower,
                           env=env.environ(), capture_output=True, text=True, timeout=60)
    finally:
        os.close(follower)
        os.close(leader)
    assert_one_line_error(Result(p.returncode, p.stdout, p.stderr), 2, "not a terminal")
    assert versions(env) == []


# ---- --stdin-from-command -----------------------------------------------------------------------

def test_stdin_from_command_backs_up_its_output(env, tmp_path):
    r = env.ok("backup", "--json", "--stdin-from-command", "--stdin-filename", "/srv/dump.txt", "--",
               "sh", "-c", "printf 'one\\n'; printf 'two\\n'")
    assert json.loads(r.out)["total_size"] == 8
    env.ok("restore", "latest", "--target", tmp_path / "out")
    assert (tmp_path / "out" / "srv" / "dump.txt").read_bytes() == b"one\ntwo\n"


def test_the_command_does_not_get_the_passphrase(env, tmp_path):
    """As --pre-command and --post-command: the passphrase stays with fsbackup."""
    assert "FSBACKUP_PASSWORD" in env.environ()
    env.ok("backup", "--stdin-from-command", "--stdin-filename", "/env.txt", "--",
           "sh", "-c", 'printf "%s" "${FSBACKUP_PASSWORD-unset}"')
    env.ok("restore", "latest", "--target", tmp_path / "out")
    assert (tmp_path / "out" / "env.txt").read_bytes() == b"unset"


def test_a_failing_command_stores_no_version(env, tmp_path):
    src = write(tmp_path / "src" / "a", b"a")
    env.ok("backup", src.parent)
    before = versions(env)
    # Blocks of its output are stored before the command fails: they are left to prune.
    r = env.run("backup", "--stdin-from-command", "--volume-size", "1M", "--",
                "sh", "-c", "head -c 12000000 /dev/urandom; exit 3")
    assert_one_line_error(r, 1, "sh -c", "exit status 3", "no version was stored")
    assert versions(env) == before
    r = env.run("backup", "--stdin-from-command", "--", "sh", "-c", "echo partial; kill -9 $$")
    assert_one_line_error(r, 1, "sh -c", "failed with signal 9", "no version was stored")
    r = env.run("backup", "--stdin-from-command", "--", "no-such-command-anywhere")
    assert_one_line_error(r, 1, "no-such-command-anywhere", "no version was stored")
    assert_one_line_error(env.run("backup", "--stdin-from-command"), 2, "--stdin-from-command needs the command")
    assert versions(env) == before


def test_a_command_still_writing_when_the_backup_fails_is_stopped(env, tmp_path, wrap_storage):
    from doubles.faults import FaultyBackend

    def failing_uploads(plain):
        faulty = FaultyBackend(plain)
        faulty.go_down(after=1, method="put")          # the lock is stored, then no volume
        return faulty
    wrap_storage(failing_uploads)
    pid_file = tmp_path / "pid"
    r = env.run("backup", "--volume-size", "1M", "--stdin-from-command", "--",
                "sh", "-c", f"echo $$ > {pid_file}; exec cat /dev/urandom")
    assert r.rc == 17, r.err
    pid = int(pid_file.read_text())
    assert not os.path.exists(f"/proc/{pid}"), "the command still runs"


# ---- --files-from -------------------------------------------------------------------------------

def test_files_from_lines(env, tmp_path):
    src = tmp_path / "src"
    write(src / "deep" / "in" / "a tree" / "with spaces.txt", b"spaces")
    write(src / "deep" / "in" / "a tree" / "not listed.txt", b"no")
    write(src / "top.txt", b"top")
    write(src / "#hash.txt", b"hash")
    listing = write(tmp_path / "list", (
        f"# what to back up\n\n{src}/deep/in/a tree/with spaces.txt\r\n{src}/top.txt\n"
        f"{src}/missing file\n   \n{src}/#hash.txt\n").encode())
    r = env.run("backup", "--files-from", listing, "--json")
    assert r.rc == 3, r.err
    summary = json.loads(r.out)
    assert summary["files_new"] == 3
    assert summary["warnings"] == [f"{src}/missing file (listed in --files-from) does not exist; left out"]
    assert "missing file" in r.err
    target = tmp_path / "out"
    env.ok("restore", "latest", "--target", target)
    restored = Path(str(target) + str(src))
    assert (restored / "deep" / "in" / "a tree" / "with spaces.txt").read_bytes() == b"spaces"
    assert (restored / "top.txt").read_bytes() == b"top"
    assert (restored / "#hash.txt").read_bytes() == b"hash"     # a name that starts with '#' later in a line
    assert sorted(os.listdir(restored / "deep" / "in" / "a tree")) == ["with spaces.txt"]
    # The folders above a listed file are recorded as folders (their metadata), as above any path given.
    assert stat.S_IMODE((restored / "deep").stat().st_mode) == stat.S_IMODE((src / "deep").stat().st_mode)


def test_files_from_nul_separated_on_stdin_adds_to_the_paths_given(env, tmp_path):
    src = tmp_path / "src"
    write(src / "line\nbreak.txt", b"newline")
    write(src / " lead and trail ", b"blanks")
    write(src / "skipped", b"no")
    given = write(tmp_path / "given" / "g.txt", b"given")
    listing = b"".join(os.fsencode(p) + b"\0" for p in (src / "line\nbreak.txt", src / " lead and trail "))
    r = backup_fed(env, listing, given.parent, "--files-from", "-", "-0", "--json")
    assert r.rc == 0, r.err
    assert sorted(versions(env)[0]["paths"]) == sorted([str(given.parent), str(src / "line\nbreak.txt"),
                                                        str(src / " lead and trail ")])
    target = tmp_path / "out"
    env.ok("restore", "latest", "--target", target)
    restored = Path(str(target) + str(src))
    assert (restored / "line\nbreak.txt").read_bytes() == b"newline"
    assert (restored / " lead and trail ").read_bytes() == b"blanks"
    assert not (restored / "skipped").exists()
    assert (Path(str(target) + str(given))).read_bytes() == b"given"


def test_files_from_that_lists_nothing(env, tmp_path):
    empty = write(tmp_path / "list", b"# nothing tonight\n\n")
    assert_one_line_error(env.run("backup", "--files-from", empty), 2, "name no path")
    only_missing = write(tmp_path / "list2", f"{tmp_path}/gone\n".encode())
    r = env.run("backup", "--files-from", only_missing)
    assert r.rc == 13 and "nothing to back up" in r.err, r.err
    assert_one_line_error(env.run("backup", "--files-from", tmp_path / "no-list"), 2, "cannot read --files-from")
    assert versions(env) == []


# ---- leaving files out --------------------------------------------------------------------------

def test_exclude_larger_than_keeps_a_file_of_exactly_the_size(env, tmp_path):
    src = tmp_path / "src"
    write(src / "exactly", b"x" * 1024)
    write(src / "one more", b"x" * 1025)
    write(src / "sub" / "big", b"x" * 4096)
    env.ok("backup", src, "--exclude-larger-than", "1K")
    listed = env.ok("ls", "latest", str(src), "-l").out
    assert "exactly" in listed and "one more" not in listed
    assert "big" not in env.ok("ls", "latest", str(src / "sub")).out
    # A file named on the command line, or in a list, is measured too (docs/backup.md).
    listed_file = write(tmp_path / "list", os.fsencode(src / "exactly") + b"\n")
    env.ok("backup", src / "one more", "--files-from", listed_file, "--exclude-larger-than", "1K")
    assert env.ok("ls", "latest", str(src)).out.split() == [str(src), str(src / "exactly")]
    assert_one_line_error(env.run("backup", src, "--exclude-larger-than", "lots"), 2, "file size")


def test_iexclude_matches_whatever_the_case(env, tmp_path):
    src = tmp_path / "src"
    for name in ("photo.jpg", "PHOTO2.Jpg", "notes.txt", "Été.TXT", "keep.png"):
        write(src / name, name.encode())
    patterns = write(tmp_path / "patterns", "# case-insensitive\nété.txt\n".encode())
    env.ok("backup", src, "--iexclude", "*.JPG", "--iexclude-file", patterns, "--exclude", "*.PNG")
    listed = env.ok("ls", "latest", str(src)).out
    assert "photo.jpg" not in listed and "PHOTO2.Jpg" not in listed and "Été.TXT" not in listed
    assert "notes.txt" in listed
    assert "keep.png" in listed          # --exclude still minds the case
    env.ok("backup", src, "--iexclude", f"{str(src).upper()}/NOTES.*")
    assert "notes.txt" not in env.ok("ls", "latest", str(src)).out


def test_a_long_list_is_reduced_to_its_outermost_paths_quickly():
    """`find -print0` lists every folder and what is inside it: each path inside another listed one
    is dropped, in time proportional to the list (not to its square)."""
    from fsbackup.fsutil import outermost
    listed = [b"/home/alice/d%d" % i for i in range(50_000)]
    listed += [b"/home/alice/d%d/f%d" % (i, j) for i in range(50_000) for j in range(3)] + [b"/srv/x"]
    started = time.monotonic()
    assert outermost(reversed(listed)) == sorted(listed[:50_000]) + [b"/srv/x"]
    assert time.monotonic() - started < 10
    assert outermost([b"/", b"/etc", b"/home/alice"]) == [b"/"]
    assert outermost([b"/home/al", b"/home/alice", b"/home/alice/x"]) == [b"/home/al", b"/home/alice"]
