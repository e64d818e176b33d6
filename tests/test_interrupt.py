"""Ctrl-C: each command stops with exit code 130 and one line saying what the interruption left
(docs/exit-codes.md). The commands run as real processes, paused at a chosen storage call, and
get a real SIGINT there."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import pseudo_random, write
from test_crash import CHECKOUT, child_env
from test_errors import assert_one_line_error

# Runs `fsbackup.cli.main(argv[5:])` with one LocalBackend method (argv[1]: get, put or delete)
# wrapped: the argv[3]-th call on an object whose name starts with argv[2] is made, its name
# written to the log argv[4], and then the calling thread waits (up to a minute) for the log to
# hold a second line, written by the test after its SIGINT.
PAUSE_AT = r"""
import os, sys, threading, time
from fsbackup.backends import local
from fsbackup.cli import main

method, prefix, nth, log_path, argv = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5:]
real, lock, calls = getattr(local.LocalBackend, method), threading.Lock(), [0]

def paused(self, name, *args, **kwargs):
    result = real(self, name, *args, **kwargs)
    if name.startswith(prefix):
        with lock:
            calls[0] += 1
            pause = calls[0] == nth
        if pause:
            with open(log_path, "a") as log:
                log.write(name + "\n")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(open(log_path).read().splitlines()) < 2:
                time.sleep(0.02)
    return result

setattr(local.LocalBackend, method, paused)
sys.exit(main(argv))
"""


def interrupted(env, tmp_path: Path, pause_at: tuple[str, str, int], *args) -> subprocess.CompletedProcess:
    """Run `fsbackup args` paused at the given storage call, send it SIGINT there, and return how
    it ended."""
    log = tmp_path / "pause.log"
    log.write_text("")
    method, prefix, nth = pause_at
    p = subprocess.Popen([sys.executable, "-c", PAUSE_AT, method, prefix, str(nth), str(log), *map(str, args)],
                         env=child_env(env), cwd=CHECKOUT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not log.read_text() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert log.read_text(), f"never reached {pause_at}: {p.communicate(timeout=60)}"
    p.send_signal(signal.SIGINT)
    with open(log, "a") as f:
        f.write("go on\n")
    out, err = p.communicate(timeout=120)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def result(r: subprocess.CompletedProcess):
    from conftest import Result
    return Result(r.returncode, r.stdout, r.stderr)


def version_ids(env) -> list[str]:
    return [v["id"] for v in json.loads(env.ok("versions", "--json").out)]


@pytest.fixture
def four_versions(env, tmp_path):
    src = tmp_path / "src"
    for i in range(4):           # each version's data is its own: forgetting one leaves a volume unused
        write(src / "file", pseudo_random(200_000, i))
        env.ok("backup", src)
    return version_ids(env)


def test_interrupted_forget_says_which_versions_it_removed(env, tmp_path, four_versions):
    kept = four_versions[-1]             # the newest (versions made within a second sort by id)
    r = result(interrupted(env, tmp_path, ("delete", "versions/", 1), "forget", "--keep-last", "1"))
    remaining = version_ids(env)
    [gone] = [v for v in four_versions if v not in remaining]
    assert_one_line_error(r, 130, "interrupted", f"forget removed 1 of 3 versions ({gone[:8]})", "not removed",
                          *[v[:8] for v in remaining if v != kept], "run forget again for them")
    env.ok("forget", "--keep-last", "1")
    assert version_ids(env) == [kept]


def test_interrupted_forget_by_id_names_the_versions_left_to_forget(env, tmp_path, four_versions):
    oldest, second, third, newest = four_versions
    r = result(interrupted(env, tmp_path, ("delete", "versions/", 2), "forget", newest[:8], oldest[:8], third))
    assert_one_line_error(r, 130, "interrupted", "forget removed 2 of 3 versions", newest[:8], oldest[:8],
                          f"not removed: {third[:8]}")
    assert version_ids(env) == [second, third]


def test_interrupted_prune_is_safe_and_says_to_run_it_again(env, tmp_path, four_versions, no_leftover_age):
    env.ok("forget", "--keep-last", "1")
    r = result(interrupted(env, tmp_path, ("delete", "data/", 1), "prune"))
    assert_one_line_error(r, 130, "interrupted", "no version lost data", "run 'fsbackup prune' again")
    env.ok("prune")
    env.ok("check", "--read-data")


def test_interrupted_backup_saves_no_version(env, tmp_path):
    src = tmp_path / "src"
    write(src / "big", pseudo_random(3 << 20, 1))
    r = result(interrupted(env, tmp_path, ("put", "data/", 1), "backup", src, "--volume-size", "1M"))
    assert_one_line_error(r, 130, "interrupted", "stopped before saving its version", "reuses the data")
    assert version_ids(env) == []


def test_backup_interrupted_while_verifying_says_its_version_is_saved(env, tmp_path):
    src = tmp_path / "src"
    write(src / "big", pseudo_random(1 << 20, 1))
    r = result(interrupted(env, tmp_path, ("get", "data/", 1), "backup", src))
    [saved] = version_ids(env)
    assert_one_line_error(r, 130, "interrupted", f"version {saved[:8]} is saved", "verifying it was cut short")


def test_backup_interrupted_in_its_retention_says_its_version_is_saved_and_what_forget_removed(
        env, tmp_path, four_versions):
    src = tmp_path / "src"
    write(src / "file", pseudo_random(200_000, 99))
    r = result(interrupted(env, tmp_path, ("delete", "versions/", 1), "backup", src, "--keep-last", "1"))
    remaining = version_ids(env)
    [new] = [v for v in remaining if v not in four_versions]
    assert len(remaining) == 4
    assert_one_line_error(r, 130, "interrupted", f"version {new[:8]} is saved; forget removed 1 of 4 versions",
                          "not removed")


def test_interrupted_restore_says_the_files_restored_are_complete(env, tmp_path):
    src = tmp_path / "src"
    for i in range(3):
        write(src / f"big{i}", pseudo_random(2 << 20, i))
    env.ok("backup", src, "--volume-size", "1M")
    r = result(interrupted(env, tmp_path, ("get", "data/", 1), "restore", "latest", "--target", tmp_path / "out"))
    assert_one_line_error(r, 130, "interrupted", "files restored so far are complete", "--overwrite")


def test_interrupted_reader_changed_nothing(env, tmp_path, four_versions):
    r = result(interrupted(env, tmp_path, ("get", "data/", 1), "check", "--read-data"))
    assert_one_line_error(r, 130, "interrupted", "nothing in the repository was changed")
    assert version_ids(env) == four_versions
