"""Bad input gets one clear line and its documented exit code, never a traceback."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from conftest import pseudo_random, write


def assert_one_line_error(r, rc: int, *words: str) -> None:
    assert r.rc == rc, (r.rc, r.err)
    assert "Traceback" not in r.err
    lines = [ln for ln in r.err.splitlines() if ln.strip()]
    assert len(lines) == 1, r.err
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_wrong_passphrase(env):
    assert_one_line_error(env.run("versions", FSBACKUP_PASSWORD="wrong"), 11, "wrong passphrase")


def test_missing_repository(blank_env):
    r = blank_env.run("versions")
    assert_one_line_error(r, 10, "no repository", "fsbackup init")


def test_folder_that_is_not_a_repository(blank_env):
    write(blank_env.repo / "holiday.jpg", b"x")
    assert_one_line_error(blank_env.run("versions"), 10, "not an fsbackup repository")
    assert_one_line_error(blank_env.run("init"), 2, "not empty")


def test_init_twice_refuses(env):
    assert_one_line_error(env.run("init"), 2, "already holds")


def test_unknown_format_version(env):
    cfg = env.repo / "config"
    cfg.write_bytes(cfg.read_bytes().replace(b'"format": 2', b'"format": 99'))
    assert_one_line_error(env.run("versions"), 10, "format 99")


def test_missing_source_path(env, tmp_path):
    assert_one_line_error(env.run("backup", tmp_path / "nope"), 13, "does not exist")


def test_unknown_and_ambiguous_version(env, tmp_path):
    src = tmp_path / "src"
    write(src / "a", b"a")
    assert_one_line_error(env.run("ls", "latest"), 13, "no versions")
    for _ in range(17):          # 17 versions: two of them share a first hex digit
        env.ok("backup", src)
    assert_one_line_error(env.run("ls", "deadbeefdeadbeef"), 13, "no version")
    assert_one_line_error(env.run("ls", "zz"), 13, "not a version id")
    import json
    ids = [v["id"] for v in json.loads(env.ok("versions", "--json").out)]
    firsts = [i[0] for i in ids]
    dup = next(c for c in firsts if firsts.count(c) > 1)
    assert_one_line_error(env.run("ls", dup), 13, "ambiguous")


def test_restore_target_that_is_a_file(env, tmp_path):
    src = tmp_path / "src"
    write(src / "a", b"a")
    env.ok("backup", src)
    f = write(tmp_path / "file", b"")
    assert_one_line_error(env.run("restore", "latest", "--target", f), 2, "not a directory")


def test_path_not_in_version(env, tmp_path):
    src = tmp_path / "src"
    write(src / "a", b"a")
    env.ok("backup", src)
    assert_one_line_error(env.run("ls", "latest", "/no/such/path"), 13, "not in version")


def test_no_passphrase_without_a_terminal(env):
    r = env.run_process("versions", FSBACKUP_PASSWORD="")
    # An empty FSBACKUP_PASSWORD is a passphrase (a wrong one here); without any source we ask for one.
    assert r.rc == 11
    environ = env.environ()
    del environ["FSBACKUP_PASSWORD"]
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-m", "fsbackup", "versions"], env=environ, capture_output=True,
                       text=True, stdin=subprocess.DEVNULL)
    assert p.returncode == 2 and "FSBACKUP_PASSWORD" in p.stderr and "Traceback" not in p.stderr


def test_password_file_and_command(env, tmp_path):
    from conftest import TEST_PASSWORD
    pw = write(tmp_path / "pw", TEST_PASSWORD.encode() + b"\n")
    assert env.run("versions", "--password-file", pw, FSBACKUP_PASSWORD="wrong").rc == 0
    environ_cmd = {"FSBACKUP_PASSWORD_COMMAND": f"cat {pw}"}
    saved = env.vars.pop("FSBACKUP_PASSWORD")
    try:
        assert env.run("versions", **environ_cmd).rc == 0
    finally:
        env.vars["FSBACKUP_PASSWORD"] = saved


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (needs root, as CI has); skipped with the reason elsewhere."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs to fill needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_disk_full_while_restoring(env, tmp_path, small_disk):
    src = tmp_path / "src"
    write(src / "big", pseudo_random(5 << 20, 1))
    env.ok("backup", src)
    assert_one_line_error(env.run("restore", "latest", "--target", small_disk / "out"), 15, "no space")


def test_disk_full_while_writing_the_index(env, tmp_path, small_disk):
    """Whichever write meets the full disk (a page of the index, its WAL, the shared-memory file
    SQLite reports as a "disk I/O error", or a journal mode switch), the error is "no space"."""
    src = tmp_path / "src"
    for i in range(3000):
        write(src / f"dir{i % 50}" / f"file-with-a-long-name-{i:06d}", b"x")
    for free_kib in (8, 16, 32, 64, 128, 256, 512, 1024):
        for leftover in small_disk.iterdir():       # (the index, and the folder of the backup's file list)
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        with open(small_disk / "filler", "wb") as f:
            f.write(b"\0" * ((2 << 20) - free_kib * 1024))
        r = env.run("backup", src, "--index", small_disk / "index.sqlite")
        assert_one_line_error(r, 15, "no space", "--index")



def run_redirected(env, redirections: str, *args: str, without: tuple[str, ...] = (), **extra_env):
    """Run the CLI as a process through a shell that applies `redirections` (e.g. '2>&-': stderr
    closed, which subprocess's DEVNULL is not), with the variables named in `without` unset."""
    import sys

    from conftest import Result
    environ = {k: v for k, v in env.environ(**extra_env).items() if k not in without}
    p = subprocess.run(["sh", "-c", f'exec "$@" {redirections}', "sh", sys.executable, "-m", "fsbackup",
                        *map(str, args)], env=environ, capture_output=True, text=True)
    return Result(p.returncode, p.stdout, p.stderr)


def test_closed_stderr_stdin_and_stdout_are_not_errors(env, tmp_path):
    src = tmp_path / "src"
    write(src / "a", b"a")
    r = run_redirected(env, "2>&-", "backup", src)
    assert r.rc == 0 and "saved version" in r.out, r
    r = run_redirected(env, "2>&-", "ls", "latest")
    assert r.rc == 0 and str(src / "a") in r.out.splitlines(), r
    r = run_redirected(env, "<&- >&-", "--json", "versions")
    assert r.rc == 0 and not r.err, r
    # errors keep their exit code; with stderr closed their line is lost, never written elsewhere
    r = run_redirected(env, "2>&-", "ls", "latest", "/no/such/path")
    assert r.rc == 13 and not r.out, r
    r = run_redirected(env, "<&- 2>&-", "versions", "--repo", tmp_path / "nothing")
    assert r.rc == 10 and not r.out, r


def test_closed_stdin_without_a_passphrase_is_a_usage_error(env):
    r = run_redirected(env, "<&-", "versions", without=("FSBACKUP_PASSWORD",))
    assert_one_line_error(r, 2, "no passphrase", "FSBACKUP_PASSWORD")
    r = run_redirected(env, "<&-", "key", "add", FSBACKUP_NEW_PASSWORD="x", without=("FSBACKUP_PASSWORD",))
    assert_one_line_error(r, 2, "no passphrase")
    r = run_redirected(env, "<&-", "key", "add")
    assert_one_line_error(r, 2, "no new passphrase", "FSBACKUP_NEW_PASSWORD")


def test_empty_new_passphrases_are_refused_everywhere(blank_env, tmp_path):
    empty_file = write(tmp_path / "empty-passphrase", b"")
    newline_file = write(tmp_path / "newline-passphrase", b"\n")
    saved = blank_env.vars.pop("FSBACKUP_PASSWORD")
    try:
        for options, environ in (([], {"FSBACKUP_PASSWORD": ""}), (["--password-file", empty_file], {}),
                                 (["--password-file", newline_file], {}), ([], {"FSBACKUP_PASSWORD_COMMAND": "true"})):
            assert_one_line_error(blank_env.run(*options, "init", **environ), 2, "empty passphrase")
            assert not blank_env.repo.exists(), (options, environ)
    finally:
        blank_env.vars["FSBACKUP_PASSWORD"] = saved
    blank_env.ok("init")
    for options, environ in (([], {"FSBACKUP_NEW_PASSWORD": ""}), (["--new-password-file", empty_file], {}),
                             (["--new-password-file", newline_file], {})):
        for action in ("add", "passwd"):
            assert_one_line_error(blank_env.run("key", action, *options, **environ), 2, "empty passphrase")
    assert len(blank_env.ok("key", "list").out.splitlines()) == 1
    # opening a repository with an empty passphrase is simply a wrong passphrase
    assert_one_line_error(blank_env.run("versions", FSBACKUP_PASSWORD=""), 11, "wrong passphrase")


def test_repository_url_naming_a_file(blank_env, tmp_path):
    f = write(tmp_path / "notes.txt", b"not a repository")
    for repo in (f, f"file://{f}", f / "sub"):
        for command in (["versions"], ["init"], ["backup", tmp_path], ["key", "list"], ["check"], ["unlock"]):
            r = blank_env.run("--repo", repo, *command)
            assert_one_line_error(r, 10, str(f), "is a file, not a repository folder")
    assert f.read_bytes() == b"not a repository"


def test_restore_target_below_a_file(env, tmp_path):
    src = tmp_path / "src"
    write(src / "a", b"a")
    env.ok("backup", src)
    f = write(tmp_path / "file", b"")
    for target in (f / "sub", f / "sub" / "deeper"):
        assert_one_line_error(env.run("restore", "latest", "--target", target), 2, str(target), str(f),
                              "not a directory")
    assert f.read_bytes() == b""


@pytest.mark.parametrize("command", [["versions"], ["versions", "--json"], ["ls", "latest"]])
def test_output_to_a_full_disk_is_one_line_and_exit_15(env, tmp_path, command):
    write(tmp_path / "src" / "f", b"data")
    env.ok("backup", tmp_path / "src")
    with open("/dev/full", "w") as full:
        p = subprocess.run([sys.executable, "-m", "fsbackup", *command], env=env.environ(), stdout=full,
                           stderr=subprocess.PIPE, text=True, timeout=120)
    assert p.returncode == 15 and p.stderr.splitlines() == [
        "fsbackup: error: cannot write the output: No space left on device"], p.stderr
