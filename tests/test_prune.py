"""forget and prune (docs/maintenance.md): retention from the command line, space actually freed,
live data kept through repacking, dry runs that change nothing, and crash safety: a prune killed
with SIGKILL at every object upload and deletion, or at random times, leaves every remaining
version restorable, and the next prune finishes the work, with the local index as the
crash left it or rebuilt from the remote."""
from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import pseudo_random, write
from test_b2_cli import b2_env  # noqa: F401  (fixture)
from test_crash import (
    CHECKOUT,
    assert_index_matches_remote,
    assert_restores_exactly,
    child_env,
    index_path,
    remote_versions,
    tree_state,
)
from test_faults import FaultyStorage
from test_leftovers import aged, partial_uploads

from fsbackup import errors
from fsbackup.repository import locks

# These tests prune right after the backups and forgets they set up.
pytestmark = pytest.mark.usefixtures("no_leftover_age")


# Runs `fsbackup.cli.main(argv[4:])` with LocalBackend.put and .delete wrapped: each call's kind
# and object name is appended to the log file argv[3]; the k-th call (argv[1], 0 = never)
# SIGKILLs the process `before` it starts or `after` it returned (argv[2]).
KILL_AT_CALL = r"""
import os, signal, sys, threading, time
from fsbackup.backends import local

k, mode, log_path, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
lock, calls = threading.Lock(), [0]

def wrap(method):
    real = getattr(local.LocalBackend, method)
    def call(self, name, *args):
        with lock:
            calls[0] += 1
            n = calls[0]
            with open(log_path, "a") as log:
                log.write(f"{method} {name}\n")
        if n == k and mode == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = real(self, name, *args)
        if n == k and mode == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    setattr(local.LocalBackend, method, call)

wrap("put")
wrap("delete")
from fsbackup.cli import main
sys.exit(main(argv))
"""

# New volumes of at most two of build_history's blocks: a repacked volume's three live blocks are
# split over two new volumes, and it is deleted only once both are stored.
PRUNE_ARGS = ["prune", "--max-unused", "0", "--volume-size", "128K"]


def remote_listing(env) -> dict[str, int]:
    return {str(p.relative_to(env.repo)): p.stat().st_size for p in env.repo.rglob("*") if p.is_file()}


def repo_bytes(env) -> int:
    return sum(remote_listing(env).values())


def backup(env, src: Path, *extra) -> str:
    before = remote_versions(env)
    env.ok("backup", src, "--volume-size", "1M", *extra)
    (name,) = remote_versions(env) - before
    return name


def build_history(env, src: Path, rng: random.Random) -> dict[str, dict]:
    """Four versions (each file one block below the chunker's minimum, several blocks a volume):
    v0's files are gone from v1 on, v2 replaces half of v1's files, v3 all of them. Forgetting
    v0 and v1 leaves one volume wholly unused (v0's) and one half used (v1's)."""
    versions = {}
    for i in range(3):
        write(src / f"old{i}", pseudo_random(120_000, rng.getrandbits(32)))
    versions[backup(env, src)] = tree_state(src)
    for i in range(3):
        (src / f"old{i}").unlink()
    for gen, files in ((1, range(6)), (2, range(3)), (3, range(6))):
        for i in files:
            write(src / f"f{i}", pseudo_random(100_000 + rng.randrange(20_000), rng.getrandbits(32)))
        versions[backup(env, src)] = tree_state(src)
    return versions


def forget_all_but_last(env, versions: dict, n: int) -> dict:
    env.ok("forget", "--keep-last", n)
    return {name: state for name, state in versions.items() if name in remote_versions(env)}


def verify(env, tmp_path: Path, src: Path, versions: dict) -> None:
    assert set(versions) == remote_versions(env)
    env.ok("versions")
    assert_index_matches_remote(env)
    assert_restores_exactly(env, tmp_path, src, versions)


def nothing_left_to_prune(env) -> None:
    plan = json.loads(env.ok("--json", "prune", "--max-unused", "0", "--dry-run").out)
    assert (plan["volumes_to_delete"], plan["volumes_to_repack"], plan["orphans"]) == (0, 0, []), plan


# ---- forget ---------------------------------------------------------------------------------

def test_forget_without_keep_rules_is_a_usage_error_and_removes_nothing(env, tmp_path):
    src = tmp_path / "src"
    build_history(env, src, random.Random(1))
    before = remote_listing(env)
    r = env.run("forget")
    assert r.rc == errors.EXIT_USAGE and r.err.count("\n") == 1 and "never removes every version" in r.err
    r = env.run("backup", src, "--prune")
    assert r.rc == errors.EXIT_USAGE
    assert env.run("forget", "--keep-within", "3x").rc == errors.EXIT_USAGE
    assert env.run("forget", "--retention-policy", "1W").rc == errors.EXIT_USAGE
    assert env.run("forget", "--keep-last", "1", "abc123").rc == errors.EXIT_USAGE
    assert remote_listing(env) == before


def test_forget_dry_run_and_prune_dry_run_change_nothing(env, tmp_path):
    src = tmp_path / "src"
    versions = build_history(env, src, random.Random(2))
    before = remote_listing(env)
    r = env.ok("forget", "--keep-last", "2", "--dry-run")
    assert "would remove 2" in r.out and "(newest, last 2)" in r.out
    doc = json.loads(env.ok("--json", "forget", "--keep-last", "2", "--dry-run", "--prune").out)
    assert len(doc["removed"]) == 2 and doc["dry_run"]
    assert remote_listing(env) == before and remote_versions(env) == set(versions)
    plan = json.loads(env.ok("--json", "prune", "--dry-run").out)
    assert plan["volumes_to_delete"] == 0       # every volume is still used by some version
    forget_all_but_last(env, versions, 2)
    after_forget = remote_listing(env)
    plan = json.loads(env.ok("--json", "prune", "--dry-run", "--max-unused", "0").out)
    assert plan["volumes_to_delete"] == 1 and plan["volumes_to_repack"] == 1 and plan["bytes_freed"] > 0
    assert remote_listing(env) == after_forget


def test_forget_named_versions_and_the_policy_never_removes_the_newest(env, tmp_path):
    src = tmp_path / "src"
    versions = build_history(env, src, random.Random(3))
    oldest = [n for n in versions][0]
    env.ok("forget", oldest[:10])
    assert oldest not in remote_versions(env)
    assert env.run("forget", oldest[:10]).rc == errors.EXIT_NOT_FOUND
    doc = json.loads(env.ok("--json", "forget", "--keep-last", "1", "--dry-run").out)
    (group,) = doc["groups"]
    assert group["keep"] == [{"id": list(versions)[-1], "reasons": ["newest", "last 1"]}]
    assert set(group["remove"]) == set(versions) - {oldest, list(versions)[-1]}
    # a tag nothing has: only the newest stays
    newest = list(versions)[-1]
    env.ok("forget", "--keep-tag", "nothing-has-it")
    assert remote_versions(env) == {newest}
    env.ok("forget", newest)                            # named explicitly, even the newest may go
    assert remote_versions(env) == set()
    assert "no versions yet" in env.ok("versions").out


def test_backup_with_keep_rules_forgets_and_prunes_after_saving(env, tmp_path):
    src = tmp_path / "src"
    versions = build_history(env, src, random.Random(4))
    size_before = repo_bytes(env)
    write(src / "f0", pseudo_random(50_000, 99))
    r = env.run("--json", "backup", src, "--keep-last", "1", "--prune", "--max-unused", "0")
    assert r.rc == 0, r.err
    doc = json.loads(r.out)
    assert len(doc["forget"]["removed"]) == len(versions)
    assert doc["prune"]["volumes_deleted"] >= 2 and doc["prune"]["bytes_freed"] > 0
    assert remote_versions(env) == {doc["version"]}
    assert repo_bytes(env) < size_before
    verify(env, tmp_path, src, {doc["version"]: tree_state(src)})
    nothing_left_to_prune(env)


# ---- prune ----------------------------------------------------------------------------------

def test_forget_and_prune_free_space_and_repack_keeps_every_live_block(env, tmp_path):
    src = tmp_path / "src"
    versions = build_history(env, src, random.Random(5))
    versions = forget_all_but_last(env, versions, 2)
    size_before = repo_bytes(env)
    doc = json.loads(env.ok("--json", *PRUNE_ARGS).out)
    assert doc["volumes_deleted"] == 1 and doc["volumes_repacked"] == 1 and doc["blocks_moved"] == 3
    assert doc["volumes_written"] == 2
    assert repo_bytes(env) < size_before - 6 * 100_000      # v0's three files and v1's three replaced ones
    verify(env, tmp_path, src, versions)
    nothing_left_to_prune(env)
    env.ok("repair")
    verify(env, tmp_path, src, versions)
    versions[backup(env, src)] = tree_state(src)            # and backups go on
    verify(env, tmp_path, src, versions)


def test_an_index_built_before_another_machines_prune_follows_it(env, tmp_path):
    src = tmp_path / "src"
    versions = forget_all_but_last(env, build_history(env, src, random.Random(9)), 2)
    other = tmp_path / "other-machine.sqlite"
    env.ok("--index", other, "versions")                # another machine's index, built before the prune
    env.ok(*PRUNE_ARGS)
    for name, state in versions.items():                # it forgets the deleted volumes, learns the new one
        target = tmp_path / f"other-{name[:8]}"
        env.ok("--index", other, "restore", name, "--target", target)
        assert tree_state(Path(str(target) + str(src))) == state


def test_prune_removes_the_partial_uploads_of_stopped_runs(env, tmp_path, monkeypatch):
    src = tmp_path / "src"
    versions = forget_all_but_last(env, build_history(env, src, random.Random(12)), 2)
    monkeypatch.setattr(locks, "LEFTOVER_AGE", locks.PARTIAL_UPLOAD_AGE)     # the age at work
    old = locks.PARTIAL_UPLOAD_AGE + 60
    killed = {aged(write(env.repo / "data" / "ab" / ".tmp-killed", pseudo_random(70_000, 1)), old),
              aged(write(env.repo / "locks" / ".tmp-killed", b"a lock"), old)}
    young = aged(write(env.repo / "locks" / ".tmp-young", b"a lock being taken"), 5 * 60)
    doc = json.loads(env.ok("--json", "prune", "--max-unused", "100%").out)
    assert doc["partial_uploads_deleted"] == 2 and doc["bytes_deleted"] >= 70_000 + len(b"a lock")
    assert partial_uploads(env.repo) == {young}
    assert not any(path.exists() for path in killed)
    aged(write(env.repo / "index" / ".tmp-killed", pseudo_random(1000, 2)), old)
    r = env.ok("forget", "--keep-last", "1", "--prune")
    assert "removed 1 partial upload(s) of runs that stopped midway (1000 B)" in r.out
    assert partial_uploads(env.repo) == {young}
    verify(env, tmp_path, src, {name: versions[name] for name in remote_versions(env)})


def test_prune_keeps_volumes_below_max_unused(env, tmp_path):
    src = tmp_path / "src"
    versions = forget_all_but_last(env, build_history(env, src, random.Random(6)), 2)
    doc = json.loads(env.ok("--json", "prune", "--max-unused", "60%").out)
    assert doc["volumes_deleted"] == 1 and doc["volumes_repacked"] == 0
    verify(env, tmp_path, src, versions)


def test_prune_through_b2(b2_env, tmp_path):  # noqa: F811
    src = tmp_path / "src"
    b2_env.ok("init")
    rng = random.Random(7)
    for gen in range(3):
        for i in range(4):
            write(src / f"f{i}", pseudo_random(100_000, rng.getrandbits(32)))
        b2_env.ok("backup", src, "--volume-size", "1M")
    write(src / "f0", pseudo_random(100_000, 1))
    b2_env.ok("backup", src, "--volume-size", "1M")
    b2_env.ok("forget", "--keep-last", "1")
    doc = json.loads(b2_env.ok("--json", *PRUNE_ARGS).out)
    assert doc["volumes_deleted"] == 2 and doc["volumes_repacked"] == 1 and doc["bytes_freed"] > 0
    b2_env.ok("restore", "latest", "--target", tmp_path / "out")
    assert tree_state(Path(str(tmp_path / "out") + str(src))) == tree_state(src)
    b2_env.ok("repair")
    b2_env.ok("restore", "latest", "--target", tmp_path / "out2")
    plan = json.loads(b2_env.ok("--json", "prune", "--max-unused", "0", "--dry-run").out)
    assert (plan["volumes_to_delete"], plan["volumes_to_repack"], plan["orphans"]) == (0, 0, [])


@pytest.mark.soak(sample=4)
@pytest.mark.parametrize("after", [1, 5, 10, 15, 18, 19, 20, 21])   # before, between and after its puts and deletes
def test_prune_on_b2_cut_off_at_any_call_leaves_every_version_restorable(b2_env, tmp_path, wrap_storage, monkeypatch,
                                                                         after):
    """B2 lives in this process, so the storage is cut off instead of the process killed: at the
    `after`-th call every put, get, list and delete fails for good. What remains restores exactly,
    and once the storage is back (and the stopped prune's lock removed) the next prune finishes."""
    src = tmp_path / "src"
    b2_env.ok("init")
    rng = random.Random(after)
    states = {}
    for gen in range(4):
        for i in range(4 if gen < 3 else 2):
            write(src / f"f{i}", pseudo_random(100_000 + rng.randrange(20_000), rng.getrandbits(32)))
        b2_env.ok("backup", src, "--volume-size", "1M")
        states[json.loads(b2_env.ok("versions", "--json").out)[-1]["id"]] = tree_state(src)
    b2_env.ok("forget", "--keep-last", "1")     # the last backup's volume is half used: repacked
    kept = {name: state for name, state in states.items()
            if name in {v["id"] for v in json.loads(b2_env.ok("versions", "--json").out)}}
    storage = FaultyStorage(wrap_storage, monkeypatch)
    storage.setup = lambda faulty: faulty.go_down(after=after)
    r = b2_env.run(*PRUNE_ARGS)
    assert r.rc == errors.EXIT_BACKEND and "Traceback" not in r.err, r.err
    storage.setup = lambda faulty: None
    b2_env.ok("unlock", "--all")
    assert_restores_exactly(b2_env, tmp_path, src, kept)
    b2_env.ok(*PRUNE_ARGS)
    assert_restores_exactly(b2_env, tmp_path, src, kept)
    plan = json.loads(b2_env.ok("--json", "prune", "--max-unused", "0", "--dry-run").out)
    assert (plan["volumes_to_delete"], plan["volumes_to_repack"], plan["orphans"]) == (0, 0, []), plan


# ---- crash safety -----------------------------------------------------------------------------

def prune_killed_at_call(env, k: int, mode: str, log: Path) -> subprocess.CompletedProcess:
    log.write_text("")
    return subprocess.run([sys.executable, "-c", KILL_AT_CALL, str(k), mode, str(log), *PRUNE_ARGS],
                          env=child_env(env), cwd=CHECKOUT, capture_output=True, text=True, timeout=120)


def snapshot_state(env, src: Path, folder: Path) -> None:
    for path, name in ((env.repo, "repo"), (env.cache, "cache"), (src, "src")):
        shutil.copytree(path, folder / name, symlinks=True)


def restore_state(env, src: Path, folder: Path) -> None:
    for path, name in ((env.repo, "repo"), (env.cache, "cache"), (src, "src")):
        shutil.rmtree(path)
        shutil.copytree(folder / name, path, symlinks=True)


def recover(env, tmp_path: Path, src: Path, versions: dict, drop_index: bool, then_backup: bool) -> None:
    """After a crash: optionally lose the local index, then back up or prune again, and check."""
    if drop_index:
        index_path(env).unlink()
    verify(env, tmp_path, src, versions)                 # readable as the crash left it
    if then_backup:
        write(src / "after-crash", pseudo_random(30_000, len(versions)))
        versions[backup(env, src)] = tree_state(src)
    env.ok(*PRUNE_ARGS)
    nothing_left_to_prune(env)
    verify(env, tmp_path, src, versions)
    env.ok("repair")
    verify(env, tmp_path, src, versions)


@pytest.mark.parametrize("mode", ["before", "after"])
def test_prune_killed_at_every_upload_and_deletion_leaves_every_version_restorable(env, tmp_path, mode):
    src = tmp_path / "src"
    log = tmp_path / "calls.log"
    pristine = tmp_path / "pristine"
    versions = forget_all_but_last(env, build_history(env, src, random.Random(8)), 2)
    snapshot_state(env, src, pristine)

    counted = prune_killed_at_call(env, 0, mode, log)
    assert counted.returncode == 0, counted.stderr
    calls = log.read_text().splitlines()
    kinds = [c.split()[0] for c in calls if not c.split()[1].startswith("locks/")]   # the lock: taken, released
    assert kinds.count("put") == 4 and kinds.count("delete") == 4, calls   # two new volumes; two old ones deleted
    # the new volumes are stored (volume, index object) before the volume they replace is deleted
    assert kinds[-2:] == ["delete", "delete"] and "put" not in kinds[kinds.index("put") + 4:], calls
    for i, c in enumerate(calls):
        if c.startswith("delete data/"):
            name = c.rsplit("/", 1)[1]
            assert f"delete index/{name}" in calls[:i], "a volume was deleted before its index object"

    for k in range(1, len(calls) + 1):
        restore_state(env, src, pristine)
        p = prune_killed_at_call(env, k, mode, log)
        assert p.returncode == -signal.SIGKILL, f"kill at call {k} ({mode}) did not happen: {p.returncode}\n{p.stderr}"
        recover(env, tmp_path, src, dict(versions), drop_index=k % 2 == (mode == "after"), then_backup=k % 3 == 0)


@pytest.mark.soak(sample=1)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_prune_killed_at_random_times_leaves_every_version_restorable(env, tmp_path, seed):
    rng = random.Random(seed)
    src = tmp_path / "src"
    versions = {}
    for gen in range(4):
        for i in range(40):
            if gen == 0 or rng.random() < 0.5:
                write(src / f"d{i % 4}" / f"f{i}", rng.randbytes(100_000 + rng.randrange(50_000)))
        versions[backup(env, src)] = tree_state(src)
    versions = forget_all_but_last(env, versions, 2)
    pristine = tmp_path / "pristine"
    snapshot_state(env, src, pristine)

    # How long a whole prune takes; kills are drawn within that time, each on the same repository.
    started = time.monotonic()
    r = env.run_process(*PRUNE_ARGS)
    full = time.monotonic() - started
    assert r.rc == 0, r.err

    killed = 0
    for attempt in range(4):
        restore_state(env, src, pristine)
        p = subprocess.Popen([sys.executable, "-m", "fsbackup", *PRUNE_ARGS], env=child_env(env), cwd=CHECKOUT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            p.wait(timeout=rng.uniform(0.1 * full, full))
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
        err = p.communicate(timeout=120)[1].decode(errors="replace")
        assert p.returncode in (0, -signal.SIGKILL), err
        killed += p.returncode == -signal.SIGKILL
        recover(env, tmp_path, src, dict(versions), drop_index=attempt % 2 == 1, then_backup=attempt == 3)
    assert killed >= 2, "too few prunes were killed while running: the kill window is mis-measured"


def test_back_to_back_live_blocks_are_fetched_in_one_range_read():
    from fsbackup.catalog import BlockLocation
    from fsbackup.repository import block_runs
    rows = [(b"a", BlockLocation("v", 8, 10, 9)), (b"b", BlockLocation("v", 18, 5, 4)),
            (b"c", BlockLocation("v", 40, 10, 9)), (b"d", BlockLocation("v", 50, 10, 9)),
            (b"e", BlockLocation("v", 60, 10, 9))]
    assert [[r[0] for r in run] for run in block_runs(rows, 25)] == [[b"a", b"b"], [b"c", b"d"], [b"e"]]
    assert [len(run) for run in block_runs(rows[:1], 1)] == [1]


def test_forget_drops_the_file_contents_only_forgotten_versions_used(env, tmp_path):
    import sqlite3
    src = tmp_path / "src"
    build_history(env, src, random.Random(10))
    env.ok("forget", "--keep-last", "1")
    db = sqlite3.connect(index_path(env))
    try:
        (orphans,) = db.execute("SELECT count(*) FROM contents WHERE id NOT IN "
                                "(SELECT content FROM nodes WHERE content IS NOT NULL)").fetchone()
        (remaining,) = db.execute("SELECT count(*) FROM contents").fetchone()
    finally:
        db.close()
    assert orphans == 0 and remaining == 6
