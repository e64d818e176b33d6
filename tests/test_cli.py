"""The command line as a whole: --version and the entry points, the lock each command holds
(chosen where it opens the repository), the one reporter the engines tell the user through, and
the --json documents of the commands no other test reads."""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import socket
import subprocess
import sys
from contextlib import contextmanager

import pytest
from conftest import TEST_PASSWORD, write
from test_errors import assert_one_line_error
from test_locks import plant_lock

from fsbackup import errors
from fsbackup.backends import open_backend
from fsbackup.cli import build_parser, main
from fsbackup.cli.output import Output
from fsbackup.cli.repo import opened as cli_opened
from fsbackup.engine.backup import Backup, BackupOptions
from fsbackup.progress import Progress
from fsbackup.repository import Repository, locks


@contextmanager
def open_repo(env):
    repo = Repository.open(open_backend(str(env.repo)), TEST_PASSWORD.encode(), str(env.tmp / "test-index.sqlite"))
    try:
        yield repo
    finally:
        repo.close()


class Recorder:
    """A Reporter that keeps what it is told."""

    def __init__(self):
        self.lines: list[tuple[str, str]] = []

    def info(self, text: str) -> None:
        self.lines.append(("info", text))

    def warn(self, text: str) -> None:
        self.lines.append(("warn", text))

    def note(self, text: str) -> None:
        self.lines.append(("note", text))

    def progress(self) -> Progress:
        return Progress(enabled=False)

    def said(self, kind: str) -> list[str]:
        return [text for k, text in self.lines if k == kind]


# ---- --version and the ways to start fsbackup ------------------------------------------------

def test_version_prints_the_package_version(blank_env):
    expected = f"fsbackup {importlib.metadata.version('fsbackup')}\n"
    r = blank_env.run("--version")
    assert (r.rc, r.out, r.err) == (0, expected, "")
    p = blank_env.run_process("--version")
    assert (p.rc, p.out, p.err) == (0, expected, "")


def test_the_console_script_is_the_command_line():
    [script] = importlib.metadata.entry_points(group="console_scripts", name="fsbackup")
    assert script.value == "fsbackup.cli:main" and script.load() is main
    installed = os.path.join(os.path.dirname(sys.executable), "fsbackup")
    p = subprocess.run([installed, "--version"], capture_output=True, text=True)
    assert (p.returncode, p.stdout) == (0, f"fsbackup {importlib.metadata.version('fsbackup')}\n")


def test_every_command_has_help_and_a_description():
    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert list(commands.choices) == ["init", "backup", "forget", "prune", "versions", "tag", "ls", "find", "diff",
                                      "restore", "copy", "mount", "umount", "unlock", "key", "check", "repair",
                                      "dump", "stats", "completion"]
    helps = {a.dest: a.help for a in commands._choices_actions}
    for name, sub in commands.choices.items():
        assert helps[name] and sub.description, name
        assert sub.format_help().startswith(f"usage: fsbackup {name}")


# ---- lock modes --------------------------------------------------------------------------------

def lock_kinds(repo) -> list[str]:
    """The mode of each lock in the repository."""
    return [lock.mode for lock in locks.list_locks(repo)]


@pytest.mark.parametrize("mode, kinds", [("none", []), ("shared", ["shared"]), ("append", ["append"]),
                                         ("exclusive", ["exclusive"])])
def test_each_lock_mode_holds_its_lock_and_releases_it(env, mode, kinds):
    with open_repo(env) as repo:
        with locks.hold_lock(repo, mode, "test") as lock:
            assert lock_kinds(repo) == kinds
            assert (lock is None) == (mode == "none")
        assert lock_kinds(repo) == []
        with pytest.raises(RuntimeError), locks.hold_lock(repo, mode, "test"):
            raise RuntimeError("the command failed")
        assert lock_kinds(repo) == []


def test_no_lock_writes_none_but_refuses_a_live_lock(env):
    with open_repo(env) as repo:
        with locks.hold_lock(repo, "exclusive", "prune", no_lock=True) as lock:
            assert lock is None and lock_kinds(repo) == []
        plant_lock(repo, exclusive=False, command="check")
        with pytest.raises(errors.Locked), locks.hold_lock(repo, "exclusive", "prune", no_lock=True):
            pass


@pytest.mark.parametrize("mode, no_lock", [("shared", True), ("append", True), ("read", False)])
def test_lock_modes_that_do_not_exist_are_refused(env, mode, no_lock):
    with open_repo(env) as repo, pytest.raises(ValueError):
        with locks.hold_lock(repo, mode, "test", no_lock=no_lock):
            pass


def test_opened_releases_its_lock_and_closes_the_repository_however_the_block_ends(env, monkeypatch):
    for name, value in env.vars.items():
        monkeypatch.setenv(name, value)
    args = build_parser().parse_args(["check"])
    with pytest.raises(errors.CorruptObject), cli_opened(args, Output(args), lock="shared") as repo:
        with open_repo(env) as other:
            assert [(lock.command, lock.exclusive) for lock in locks.list_locks(other)] == [("check", False)]
        raise errors.CorruptObject("data/00", "a test")
    assert repo._catalog is None                        # closed
    with open_repo(env) as other:
        assert locks.list_locks(other) == []


def test_a_command_holding_a_lock_is_refused_beside_a_conflicting_one(env, tmp_path):
    write(tmp_path / "src" / "f", b"data")
    with open_repo(env) as repo:
        planted = plant_lock(repo, exclusive=False, command="check")
    for args in (["backup", tmp_path / "src"], ["prune"], ["forget", "--keep-last", "1"], ["repair"]):
        assert_one_line_error(env.run(*args, "--no-wait"), errors.EXIT_LOCKED, "check (shared)")
    for args in (["check"], ["versions"], ["backup", tmp_path / "src", "--dry-run"]):
        env.ok(*args)
    with open_repo(env) as repo:
        repo.delete_lock(planted.name)
        plant_lock(repo, exclusive=True, command="prune")
    assert_one_line_error(env.run("check", "--no-wait"), errors.EXIT_LOCKED, "prune on host")
    env.ok("versions")                                     # readers hold none


def test_backup_uses_the_lock_it_is_handed_and_takes_its_own_without_one(env, tmp_path):
    write(tmp_path / "src" / "f", b"data")
    with open_repo(env) as repo:
        for handed in (True, False):
            seen = []
            job = Backup(repo, BackupOptions())
            job.after_commit = lambda name: seen.append([(lock.command, lock.mode)
                                                         for lock in locks.list_locks(repo)])
            if handed:
                with locks.hold_lock(repo, "append", "mine") as lock:
                    checked = []
                    lock.ensure_held = lambda: checked.append(True)      # checked before the version is stored
                    assert job.run_locked([str(tmp_path / "src")], lock)
                assert checked == [True]
                assert seen == [[("mine", "append")]]                   # no second lock
            else:
                assert job.run_locked([str(tmp_path / "src")])
                assert seen == [[("backup", "append")]]
            assert locks.list_locks(repo) == []
        with locks.hold_lock(repo, "shared", "mine") as lock, pytest.raises(ValueError):
            Backup(repo, BackupOptions()).run_locked([str(tmp_path / "src")], lock)


# ---- one reporter ------------------------------------------------------------------------------

def test_the_engines_tell_the_user_through_one_reporter(env, tmp_path):
    from fsbackup.catalog.tree import VersionTree
    from fsbackup.catalog.versions import resolve_version
    from fsbackup.engine.check import repair
    from fsbackup.engine.restore import Restore
    src = tmp_path / "src"
    write(src / "f", b"data")
    with socket.socket(socket.AF_UNIX) as sock, open_repo(env) as repo:
        sock.bind(str(src / "socket"))
        backup = Backup(repo, BackupOptions(), heard := Recorder())
        name = backup.run_locked([str(src)])
        backup.warn("a file left out")      # (as root every file reads: the warning is made here)
        assert heard.lines == [("note", f"{src}/socket is a socket; skipped"), ("warn", "a file left out")]
        assert backup.stats.warnings == ["a file left out"]
        tree = VersionTree(repo.catalog, resolve_version(repo.catalog, name))
        restore = Restore(repo, tree, str(tmp_path / "target"), reporter=(heard := Recorder()))
        restore.run()
        restore.warn("a file not restored")
        assert heard.lines == [("warn", "a file not restored")] and restore.stats.warnings == ["a file not restored"]
        with locks.hold_lock(repo, "exclusive", "repair"):
            result = repair(repo, False, None, False, heard := Recorder())
        assert heard.lines == [("info", "rebuilt the local index: 1 versions, 1 volumes")]
        assert result.report.ok


# ---- --json documents ----------------------------------------------------------------------------

def test_json_of_init_restore_unlock_and_forget_by_id(blank_env, tmp_path):
    env = blank_env
    doc = json.loads(env.ok("init", "--json").out)
    assert doc == {"repository": str(env.repo), "id": json.loads((env.repo / "config").read_bytes())["id"]}
    write(tmp_path / "src" / "f", b"0123456789")
    (tmp_path / "src" / "d").mkdir()
    os.symlink("f", tmp_path / "src" / "l")
    version = json.loads(env.ok("backup", tmp_path / "src", "--json").out)["version"]
    doc = json.loads(env.ok("restore", "latest", "--target", tmp_path / "t", "--json").out)
    assert isinstance(doc.pop("duration"), float)
    assert doc == {"files": 1, "dirs": 2 + len(tmp_path.parts), "others": 1, "bytes_written": 10,
                   "damaged": [], "warnings": [], "replaced": 0, "unchanged": 0, "kept": 0, "deleted": 0,
                   "dry_run": False}
    assert json.loads(env.ok("unlock", "--json").out) == []
    with open_repo(env) as repo:
        stale = plant_lock(repo, time_ns=1, created_ns=1, command="prune")
    [doc] = json.loads(env.ok("unlock", "--json").out)
    assert doc == {"id": stale.name, "host": socket.gethostname(), "pid": os.getpid(), "command": "prune",
                   "exclusive": True, "mode": "exclusive", "created_ns": 1, "time_ns": 1, "started": None,
                   "damage": None, "stale": True}
    assert json.loads(env.ok("forget", version[:8], "--dry-run", "--json").out) == \
        {"dry_run": True, "removed": [version]}
    assert json.loads(env.ok("forget", version[:8], "--json").out) == {"dry_run": False, "removed": [version]}
    assert json.loads(env.ok("versions", "--json").out) == []


def test_json_of_key_actions(env, tmp_path):
    [first] = json.loads(env.ok("key", "list", "--json").out)
    assert set(first) == {"id", "created_ns", "host", "kdf", "in_use", "version", "damaged"}
    assert (first["in_use"], first["version"], first["damaged"], first["host"]) == (True, 2, None, socket.gethostname())
    assert "salt" not in first["kdf"] and first["kdf"]["name"] == "argon2id"
    added = json.loads(env.ok("key", "add", "--json", FSBACKUP_NEW_PASSWORD="second").out)
    assert added["action"] == "add" and set(added) == {"key", "action"}
    ids = {key["id"] for key in json.loads(env.ok("key", "list", "--json").out)}
    assert ids == {first["id"], added["key"]}
    changed = json.loads(env.ok("key", "passwd", "--json", FSBACKUP_NEW_PASSWORD="third").out)
    assert changed["action"] == "passwd" and changed["key"] not in ids
    removed = json.loads(env.ok("key", "remove", added["key"][:8], "--json", FSBACKUP_PASSWORD="third").out)
    assert removed == {"key": added["key"], "action": "remove"}


def test_json_of_repair(env, tmp_path):
    write(tmp_path / "src" / "f", b"data")
    env.ok("backup", tmp_path / "src")
    doc = json.loads(env.ok("repair", "--json").out)
    report = doc.pop("report")
    assert doc == {"versions": 1, "volumes": 1, "skipped": [], "damaged": [], "recreated_index_objects": [],
                   "removed": {}, "leftovers": []}
    assert report == {"ok": True, "versions": 1, "volumes": 1, "volumes_read": 0, "bytes_read": 0, "problems": []}
    [index_object] = (env.repo / "index").iterdir()
    index_object.unlink()
    doc = json.loads(env.ok("repair", "--json").out)
    assert doc["recreated_index_objects"] == [f"index/{index_object.name}"] and doc["report"]["ok"]


def test_password_files_are_read_alike(env, tmp_path):
    missing = tmp_path / "missing"
    for args in (["--password-file", missing, "versions"], ["key", "add", "--new-password-file", missing]):
        assert_one_line_error(env.run(*args), errors.EXIT_USAGE, f"cannot read password file {missing}",
                              "No such file")
    write(tmp_path / "new", b"new passphrase\r\n")
    env.ok("key", "passwd", "--new-password-file", tmp_path / "new")
    write(tmp_path / "pw", b"new passphrase\n")
    env.ok("--password-file", tmp_path / "pw", "versions", FSBACKUP_PASSWORD="")


def test_backup_records_the_host_it_is_given_and_refuses_names_no_folder_can_have(env, tmp_path):
    write(tmp_path / "src" / "f", b"x")
    env.ok("backup", tmp_path / "src", "--host", "laptop")
    env.ok("backup", tmp_path / "src")
    hosts = [v["host"] for v in json.loads(env.ok("versions", "--json").out)]
    assert hosts == ["laptop", socket.gethostname()]
    for bad in ("", "a/b", "..", "tab\there"):
        r = env.run("backup", tmp_path / "src", "--host", bad)
        assert r.rc == 2 and "is not a host name" in r.err and "Traceback" not in r.err, r.err
