"""Deletion never trusts a listing that could not be read, nor one that lost most of what the
local index knows: prune, backup's settling of leftovers and check refuse, naming what to check."""
from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import Env, pseudo_random, restored_root, snapshot, write
from doubles.faults import FaultyBackend

from fsbackup.backends.local import LocalBackend
from fsbackup.errors import EXIT_BACKEND, EXIT_CORRUPT, EXIT_PERMISSION, BackendError

# These tests prune right after the backups and forgets they set up.
pytestmark = pytest.mark.usefixtures("no_leftover_age")


@contextmanager
def users_repository(user):
    """(folder, run): a repository in a new folder of the unprivileged `user`, and a runner of
    the command line as that user; the folder goes afterwards."""
    base = user.folder()
    try:
        env = Env(base)
        run = lambda *args: user.run(env, *args)                   # noqa: E731
        assert run("init").rc == 0
        yield base, run
    finally:
        shutil.rmtree(base, ignore_errors=True)


def users_files(user, src: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        write(src / name, data)
        user.own(src / name)
    user.own(src)
    return src


def objects(repo: Path) -> set[str]:
    return {str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()}


def two_versions(env: Env, tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for i in range(6):
        write(src / f"f{i}", pseudo_random(200_000, i))
    env.ok("backup", src, "--volume-size", "256K")
    write(src / "f0", pseudo_random(200_000, 99))
    env.ok("backup", src, "--volume-size", "256K")
    return src


def assert_every_version_restores(env: Env, tmp_path: Path, src: Path, expected: dict) -> None:
    for v in json.loads(env.ok("versions", "--json").out):
        target = tmp_path / f"out-{v['id'][:8]}"
        env.ok("restore", v["id"], "--target", target)
        assert snapshot(restored_root(target, src))[b"f1"]["data"] == expected[b"f1"]["data"]
    env.ok("check", "--read-data")


# ---- the backends: a listing that cannot be read whole raises ----------------------------------

def test_local_listing_of_a_file_in_place_of_a_folder_fails(tmp_path):
    store = LocalBackend(str(tmp_path / "store"))
    store.put("versions/a", b"x")
    store.put("data/ab/abc", b"y")
    shutil.rmtree(tmp_path / "store" / "versions")
    (tmp_path / "store" / "versions").write_bytes(b"a stray file")
    with pytest.raises(BackendError, match="cannot list repository folder versions/: it is not a folder"):
        list(store.list("versions/"))
    assert list(store.list("data/")) == [("data/ab/abc", 1)]       # the rest still lists
    assert list(LocalBackend(str(tmp_path / "none")).list("")) == []   # a missing store is empty


def test_local_listing_of_an_unreadable_folder_fails(unprivileged_user, tmp_path):
    """As a real unprivileged user: root reads every folder whatever its mode."""
    base = unprivileged_user.folder()
    try:
        code = ("import os, sys\n"
                "from fsbackup.backends.local import LocalBackend\n"
                "from fsbackup.errors import PermissionDenied\n"
                f"b = LocalBackend({str(base / 'store')!r})\n"
                "b.put('data/ab/abc', b'x'); b.put('data/cd/cde', b'y'); b.put('versions/v', b'z')\n"
                f"os.chmod({str(base / 'store' / 'data' / 'cd')!r}, 0)\n"
                "for prefix in ('data/', ''):\n"
                "    try:\n"
                "        print('listed', sorted(b.list(prefix)))\n"
                "    except PermissionDenied as e:\n"
                "        print('denied:', e)\n")
        import subprocess
        import sys
        p = subprocess.run(["setpriv", f"--reuid={unprivileged_user.uid}", f"--regid={unprivileged_user.gid}",
                            "--clear-groups", sys.executable, "-c", code], capture_output=True, text=True)
        lines = p.stdout.splitlines()
        assert p.returncode == 0 and len(lines) == 2, (p.stdout, p.stderr)
        assert all(line.startswith("denied: cannot list repository folder data/cd/") for line in lines), lines
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_listing_failure_of_any_backend_stops_prune_before_it_deletes(env, tmp_path, wrap_storage):
    """Through the fault-injecting backend, around whatever backend: the listing is what fails."""
    src = two_versions(env, tmp_path)
    env.ok("forget", "--keep-last", "1")
    before = objects(env.repo)

    def failing_listings(plain):
        store = FaultyBackend(plain)
        store.go_down(method="list", permanent=True)
        return store
    unwrap = wrap_storage(failing_listings)
    r = env.run("prune")
    assert r.rc == EXIT_BACKEND and "Traceback" not in r.err, r.err
    unwrap()
    assert objects(env.repo) == before
    env.ok("prune")
    assert_every_version_restores(env, tmp_path, src, snapshot(src))


# ---- the repository: surprising listings are refused -----------------------------------------

def test_a_file_in_place_of_versions_stops_prune_and_deletes_nothing(env, tmp_path):
    src = two_versions(env, tmp_path)
    expected = snapshot(src)
    before = objects(env.repo)
    (env.repo / "versions").rename(tmp_path / "moved")
    (env.repo / "versions").write_bytes(b"")                       # mv repo/versions x; touch repo/versions
    for command in (["prune"], ["versions"], ["backup", src]):
        r = env.run(*command)
        assert r.rc == EXIT_BACKEND and "versions" in r.err and "not a folder" in r.err, r.err
        assert "Traceback" not in r.err and len(r.err.splitlines()) == 1, r.err
    assert objects(env.repo) - {"versions"} == {o for o in before if not o.startswith("versions/")}
    (env.repo / "versions").unlink()
    (tmp_path / "moved").rename(env.repo / "versions")
    assert_every_version_restores(env, tmp_path, src, expected)


def test_a_versions_folder_moved_away_is_refused_until_the_user_accepts_it(env, tmp_path):
    src = two_versions(env, tmp_path)
    expected = snapshot(src)
    before = objects(env.repo)
    (env.repo / "versions").rename(tmp_path / "moved")
    for command in (["prune"], ["versions"], ["forget", "--keep-last", "1"], ["check"], ["backup", src]):
        r = env.run(*command)
        assert r.rc == EXIT_CORRUPT and "lists 0 of the 2 version objects" in r.err, (command, r.err)
        assert "--accept-missing" in r.err and len(r.err.splitlines()) == 1, r.err
    assert objects(env.repo) == {o for o in before if not o.startswith("versions/")}
    assert len(json.loads(env.run("versions", "--json").out or "[]")) == 0
    (tmp_path / "moved").rename(env.repo / "versions")             # put back: nothing was lost
    assert_every_version_restores(env, tmp_path, src, expected)


def test_accept_missing_lets_a_wholesale_removal_through(env, tmp_path):
    two_versions(env, tmp_path)
    shutil.rmtree(env.repo / "versions")                            # really removed, on purpose
    assert env.run("prune").rc == EXIT_CORRUPT
    env.ok("prune", "--accept-missing")
    assert not [p for p in (env.repo / "data").rglob("*") if p.is_file()]       # no version uses them
    assert json.loads(env.ok("versions", "--json").out) == []


def test_a_few_versions_removed_elsewhere_are_followed_without_asking(env, tmp_path):
    src = tmp_path / "src"
    for i in range(3):
        write(src / "f", pseudo_random(10_000, i))
        env.ok("backup", src)
    names = [v["id"] for v in json.loads(env.ok("versions", "--json").out)]
    env.ok("forget", names[0], XDG_CACHE_HOME=str(tmp_path / "another-machine"))
    r = env.ok("versions", "--json")
    assert [v["id"] for v in json.loads(r.out)] == names[1:] and "warning" not in r.err
    env.ok("prune")


def test_an_unreadable_data_folder_during_backup_deletes_nothing(unprivileged_user, tmp_path):
    """Issue: one unreadable data/XX folder made backup delete the index objects of its healthy
    volumes, and the next prune deleted the volumes. Run as a real unprivileged user."""
    with users_repository(unprivileged_user) as (base, run):
        src = users_files(unprivileged_user, base / "src", {f"f{i}": pseudo_random(100_000, i) for i in range(8)})
        r = run("backup", src, "--volume-size", "128K")
        assert r.rc == 0, r.err
        expected = snapshot(src)
        folders = sorted((base / "repo" / "data").iterdir())
        assert len(folders) >= 2
        before = objects(base / "repo")
        folders[0].chmod(0)
        users_files(unprivileged_user, src, {"new": b"a new file"})
        r = run("backup", src, "--volume-size", "128K")
        assert r.rc == EXIT_PERMISSION and "cannot list repository folder data/" in r.err, r.err
        r = run("prune")
        assert r.rc == EXIT_PERMISSION and "Traceback" not in r.err, r.err
        folders[0].chmod(0o700)
        assert objects(base / "repo") >= before - {o for o in before if o.startswith("locks/")}
        assert run("prune").rc == 0
        r = run("restore", "latest", "--target", base / "out")
        assert r.rc == 0, r.err
        restored = snapshot(restored_root(base / "out", src))
        assert {k: v["data"] for k, v in restored.items() if k != b"<hardlinks>"} == \
               {k: v["data"] for k, v in expected.items() if k != b"<hardlinks>"}
        assert run("check", "--read-data").rc == 0


def test_an_unreadable_versions_or_index_folder_stops_prune(unprivileged_user):
    """Issue: `chmod 000 repo/versions` (or index/) made prune delete every volume, exit 0."""
    with users_repository(unprivileged_user) as (base, run):
        src = users_files(unprivileged_user, base / "src", {"f": pseudo_random(300_000, 1)})
        assert run("backup", src, "--volume-size", "64K").rc == 0
        before = objects(base / "repo")
        for folder in ("versions", "index"):
            (base / "repo" / folder).chmod(0)
            r = run("prune")
            assert r.rc == EXIT_PERMISSION and f"cannot list repository folder {folder}/" in r.err, r.err
            r = run("versions")
            assert r.rc == EXIT_PERMISSION and "no versions yet" not in r.out, r.out + r.err
            (base / "repo" / folder).chmod(0o700)
            assert objects(base / "repo") == before
        assert run("check", "--read-data").rc == 0


def test_an_unreadable_keys_folder_is_permission_denied_not_corrupt(unprivileged_user):
    with users_repository(unprivileged_user) as (base, run):
        (base / "repo" / "keys").chmod(0)
        r = run("versions")
        assert r.rc == EXIT_PERMISSION and "cannot list repository folder keys/" in r.err, r.err
        assert len(r.err.splitlines()) == 1


def test_a_new_machine_never_prunes_a_repository_whose_versions_folder_is_missing(env, tmp_path):
    """A new local index has nothing to compare a listing with: no version beside stored data is
    what prune distrusts then."""
    src = two_versions(env, tmp_path)
    expected = snapshot(src)
    before = objects(env.repo)
    (env.repo / "versions").rename(tmp_path / "moved")
    r = env.run("prune", XDG_CACHE_HOME=str(tmp_path / "new-machine"))
    assert r.rc == EXIT_CORRUPT and "lists no version objects" in r.err and "--accept-missing" in r.err, r.err
    assert objects(env.repo) == {o for o in before if not o.startswith("versions/")}
    (tmp_path / "moved").rename(env.repo / "versions")
    assert_every_version_restores(env, tmp_path, src, expected)
