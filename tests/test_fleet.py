"""Several machines back up into one repository at once (docs/machines.md): backups share their
lock, each machine keeps its own local index and learns the others' volumes and versions from
the repository, a file every machine has is stored once when they run one after another and a
bounded few times when they run together (prune then removes most extra copies), a prune started
while backups run waits for them, and a backup killed midway leaves the others' versions whole and
its own leftovers to a prune once they are older than the leftover age.

The machines are processes with their own local index folders (XDG_CACHE_HOME) and --host names.
b2sdk's simulated B2 lives in one process: there the machines are threads of this process, each
with its own local index and its own B2 connection.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import TEST_PASSWORD, Env, pseudo_random, restored_root, snapshot, write
from test_b2_cli import b2_env  # noqa: F401  (a fixture)
from test_crash import CHECKOUT, KILL_AT_PUT
from test_locks import GATED_BACKUP

from fsbackup.backends import open_backend
from fsbackup.engine.backup import Backup, BackupOptions
from fsbackup.repository import Repository, locks

MACHINES = 4
COMMON = 4 << 20            # a file every machine holds (incompressible)
UNIQUE = 512 << 10          # each machine's own data
OVERHEAD = 256 << 10        # index objects, volume tables, version objects and locks, at most
VOLUME_SIZE = "1M"
NO_AGE = {locks.LEFTOVER_AGE_FOR_TESTS: "0"}


def machine_tree(tmp: Path, k: int) -> Path:
    root = tmp / f"machine{k}"
    write(root / "common.bin", pseudo_random(COMMON, 1000))
    write(root / "own" / "data.bin", pseudo_random(UNIQUE, k))
    write(root / "own" / "notes.txt", f"machine {k}\n".encode())
    return root


def machine_env(env: Env, k: int, **extra) -> dict:
    return env.environ(XDG_CACHE_HOME=str(env.tmp / f"cache-{k}"), **extra)


def start_backup(env: Env, tree: Path, k: int, launcher: tuple[str, ...] = ("-m", "fsbackup"),
                 volume_size: str = VOLUME_SIZE, **extra) -> subprocess.Popen:
    """`fsbackup backup` of machine k as its own process (with its own local index)."""
    return subprocess.Popen([sys.executable, *launcher, "--json", "backup", str(tree), "--host", f"host{k}",
                             "--volume-size", volume_size, "--no-verify"],
                            env=machine_env(env, k, **extra), cwd=CHECKOUT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finished(p: subprocess.Popen) -> dict:
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0 and "Traceback" not in err, err
    return json.loads(out)


def start_held_backups(env: Env, tmp: Path, trees: list[Path], **options) -> tuple[list[subprocess.Popen], list[Path]]:
    """Every machine's backup, each holding its lock and waiting before its first volume upload
    until its gate (in the second list) opens (`open_gates`); returns once all of them wait."""
    gates = [tmp / f"gate-{k}" for k in range(len(trees))]
    running = [start_backup(env, tree, k, ("-c", GATED_BACKUP, str(gate)), **options)
               for k, (tree, gate) in enumerate(zip(trees, gates))]
    try:
        deadline = time.monotonic() + 60
        while not all(Path(f"{gate}.waiting").exists() for gate in gates):
            assert time.monotonic() < deadline and all(p.poll() is None for p in running)
            time.sleep(0.05)
    except BaseException:
        open_gates(gates)
        raise
    return running, gates


def open_gates(gates: list[Path]) -> None:
    for gate in gates:
        gate.touch()


def restores_exactly(env: Env, tmp: Path, versions: dict[str, Path], label: str = "restored") -> None:
    """Every version (id -> the tree it was made of) restores exactly, through one machine's index."""
    for name, tree in versions.items():
        target = tmp / f"{label}-{name[:8]}"
        env.ok("restore", name, "--target", target)
        assert snapshot(restored_root(target, tree)) == snapshot(tree)


def repo_bytes(url: str) -> int:
    backend = open_backend(url)
    try:
        return sum(size for _, size in backend.list(""))
    finally:
        backend.close()


def nothing_left_to_prune(env: Env) -> dict:
    plan = json.loads(env.ok("--json", "prune", "--max-unused", "0", "--dry-run", **NO_AGE).out)
    assert (plan["volumes_to_delete"], plan["orphans"], plan["volumes_without_index"], plan["too_young"]) == \
        (0, [], [], 0), plan
    return plan


# ---- one after another, and all at once, on a local repository ----------------------------------

def test_machines_one_after_another_store_a_shared_file_once(env, tmp_path):
    trees = [machine_tree(tmp_path, k) for k in range(MACHINES)]
    added = [finished(start_backup(env, tree, k))["bytes_added"] for k, tree in enumerate(trees)]
    # Each machine's backup first learns what the others stored: only its own data is new.
    assert COMMON + UNIQUE <= added[0] < COMMON + UNIQUE + OVERHEAD
    assert all(UNIQUE <= a < UNIQUE + OVERHEAD for a in added[1:]), added
    assert repo_bytes(str(env.repo)) < COMMON + MACHINES * UNIQUE + MACHINES * OVERHEAD


def test_machines_backing_up_at_once_all_succeed_and_restore_exactly(env, tmp_path):
    trees = [machine_tree(tmp_path, k) for k in range(MACHINES)]
    running = [start_backup(env, tree, k) for k, tree in enumerate(trees)]
    docs = [finished(p) for p in running]
    versions = {doc["version"]: tree for doc, tree in zip(docs, trees)}
    listed = json.loads(env.ok("versions", "--json").out)
    assert sorted(v["host"] for v in listed) == [f"host{k}" for k in range(MACHINES)]
    restores_exactly(env, tmp_path, versions)
    # Backups that start together each store the shared file before seeing the others': between
    # one copy and one per machine (measured on a quiet 2-core machine: usually 4).
    copies = (sum(doc["bytes_added"] for doc in docs) - MACHINES * UNIQUE) / COMMON
    print(f"the shared file was stored {copies:.2f} times by {MACHINES} backups running together")
    assert 0.9 < copies < MACHINES + 0.5
    env.ok("check", "--read-data")
    # A block stored twice is recorded once, its other copies as spare places, which prune counts
    # as unused: it deletes the volumes that hold nothing but such copies and repacks those that
    # share them with a machine's own data, until one copy of everything is left.
    before = repo_bytes(str(env.repo))
    env.ok("prune", "--max-unused", "0", **NO_AGE)
    after = repo_bytes(str(env.repo))
    print(f"prune: {before} bytes before, {after} after; one copy of everything is "
          f"{COMMON + MACHINES * UNIQUE} bytes")
    assert after <= before and after < COMMON + MACHINES * UNIQUE + MACHINES * OVERHEAD
    nothing_left_to_prune(env)
    env.ok("check", "--read-data")
    restores_exactly(env, tmp_path, versions, "after-prune")
    # The next backup of each machine adds only what changed, through its own local index.
    for k, tree in enumerate(trees):
        write(tree / "own" / "notes.txt", f"machine {k}, later\n".encode())
        assert finished(start_backup(env, tree, k))["bytes_added"] < OVERHEAD


def test_copies_stored_by_backups_at_once_are_pruned_to_one_and_every_machine_follows(env, tmp_path):
    """Four backups held at their first upload until all have begun each store the shared file
    (none can know of the others' copies). Prune counts the spare copies as unused and leaves one
    copy of everything; each machine's own local index, which recorded its own copy first, then
    follows the prune: check finds no damage and every machine restores its version. (Volumes
    large enough for each machine's own data and its copy of the shared file to share one: prune
    must repack them, not merely delete volumes of copies alone.)"""
    trees = [machine_tree(tmp_path, k) for k in range(MACHINES)]
    running, gates = start_held_backups(env, tmp_path, trees, volume_size="32M")
    open_gates(gates)
    docs = [finished(p) for p in running]
    copies = (sum(doc["bytes_added"] for doc in docs) - MACHINES * UNIQUE) / COMMON
    assert MACHINES - 0.1 < copies < MACHINES + 0.5, copies
    before = repo_bytes(str(env.repo))
    pruned = json.loads(env.ok("--json", "prune", "--max-unused", "0",
                               XDG_CACHE_HOME=str(env.tmp / "cache-0"), **NO_AGE).out)
    after = repo_bytes(str(env.repo))
    print(f"{copies:.2f} copies of the shared file; prune: {before} bytes before, {after} after "
          f"({pruned['volumes_repacked']} volumes repacked); one copy of everything is {COMMON + MACHINES * UNIQUE}")
    assert after < COMMON + MACHINES * UNIQUE + MACHINES * OVERHEAD
    for k, (doc, tree) in enumerate(zip(docs, trees)):
        cache = str(env.tmp / f"cache-{k}")
        r = env.ok("check", "--read-data", XDG_CACHE_HOME=cache)
        assert "removed by a prune" in r.err or k == 0, r.err
        target = tmp_path / f"restored-{k}"
        env.ok("restore", doc["version"], "--target", target, XDG_CACHE_HOME=cache)
        assert snapshot(restored_root(target, tree)) == snapshot(tree)


# ---- prune beside backups ----------------------------------------------------------------------

def test_a_prune_started_while_backups_run_waits_for_them_then_runs_safely(env, tmp_path):
    trees = [machine_tree(tmp_path, k) for k in range(MACHINES)]
    running, gates = start_held_backups(env, tmp_path, trees)
    try:
        deadline = time.monotonic() + 60
        prune_log = tmp_path / "prune.err"
        with open(prune_log, "w") as err:
            prune = subprocess.Popen([sys.executable, "-m", "fsbackup", "prune", "--max-unused", "0"],
                                     env=machine_env(env, 0, **NO_AGE), cwd=CHECKOUT, stderr=err,
                                     stdout=subprocess.PIPE, text=True)
        while "note: waiting for the lock of backup (append)" not in prune_log.read_text():
            assert time.monotonic() < deadline and prune.poll() is None, prune_log.read_text()
            time.sleep(0.05)
    finally:
        open_gates(gates)
    docs = [finished(p) for p in running]
    out, _ = prune.communicate(timeout=180)
    assert prune.returncode == 0, prune_log.read_text()
    assert "pruned:" in out
    versions = {doc["version"]: tree for doc, tree in zip(docs, trees)}
    assert {v["id"] for v in json.loads(env.ok("versions", "--json").out)} == set(versions)
    env.ok("check", "--read-data")
    restores_exactly(env, tmp_path, versions)


# ---- a backup killed midway ----------------------------------------------------------------------

def test_a_backup_killed_midway_leaves_the_others_whole_and_its_leftovers_to_a_later_prune(env, tmp_path):
    trees = [machine_tree(tmp_path, k) for k in range(MACHINES)]
    write(trees[0] / "own" / "more.bin", pseudo_random(3 << 20, 77))     # the victim has more to store
    log = tmp_path / "puts.log"
    # Machine 0 is killed with SIGKILL during its 4th put (its lock, then volumes and index
    # objects): written under its temporary name, not yet published.
    victim = start_backup(env, trees[0], 0, ("-c", KILL_AT_PUT, "4", "mid", str(log)))
    others = [start_backup(env, tree, k) for k, tree in enumerate(trees) if k]
    docs = [finished(p) for p in others]
    victim.communicate(timeout=180)
    assert victim.returncode == -9
    partial = set(env.repo.rglob(".tmp-*"))
    assert partial
    versions = {doc["version"]: tree for doc, tree in zip(docs, trees[1:])}
    assert {v["id"] for v in json.loads(env.ok("versions", "--json").out)} == set(versions)
    restores_exactly(env, tmp_path, versions)

    # Before the leftover age, a prune leaves what the killed backup stored: to the eye of a
    # prune, it might be a backup that still runs on a machine whose lock went stale.
    before = json.loads(env.ok("--json", "prune", "--max-unused", "0").out)
    assert before["too_young"] >= 1 and before["partial_uploads_deleted"] == 0, before
    assert set(env.repo.rglob(".tmp-*")) == partial
    # Past the age (shortened for the test), the next prune removes them.
    after = json.loads(env.ok("--json", "prune", "--max-unused", "0", **NO_AGE).out)
    assert after["partial_uploads_deleted"] == len(partial), after
    assert after["volumes_deleted"] + after["orphans_deleted"] >= 1, after
    assert not set(env.repo.rglob(".tmp-*"))
    nothing_left_to_prune(env)
    env.ok("check", "--read-data")
    restores_exactly(env, tmp_path, versions, "after-prune")


# ---- on B2 ------------------------------------------------------------------------------------

def test_machines_backing_up_at_once_into_b2(b2_env, tmp_path, monkeypatch):  # noqa: F811
    env = b2_env
    env.ok("init")
    url = env.vars["FSBACKUP_REPOSITORY"]
    for k in ("B2_APPLICATION_KEY_ID", "B2_APPLICATION_KEY"):
        monkeypatch.setenv(k, env.vars[k])
    trees = [machine_tree(tmp_path, k) for k in range(MACHINES)]
    # Each machine: its own B2 connection and local index (opened one after another: the key
    # derivation of several threads at once runs out of memory), then all back up at once, each
    # under its own append lock, as `fsbackup backup` does.
    machines = [Repository.open(open_backend(url), TEST_PASSWORD.encode(), str(tmp_path / f"index-{k}.sqlite"))
                for k in range(MACHINES)]
    names: dict[int, str | None] = {}

    def machine(k: int) -> None:
        job = Backup(machines[k], BackupOptions(host=f"host{k}", volume_size=1 << 20))
        names[k] = job.run_locked([str(trees[k])])
    threads = [threading.Thread(target=machine, args=(k,)) for k in range(MACHINES)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
    finally:
        for repo in machines:
            repo.close()
    assert sorted(names) == list(range(MACHINES)) and all(names.values())
    versions = {names[k]: trees[k] for k in range(MACHINES)}
    listed = json.loads(env.ok("versions", "--json").out)
    assert {v["id"]: v["host"] for v in listed} == {names[k]: f"host{k}" for k in range(MACHINES)}
    copies = (sum(v["bytes_added"] for v in listed) - MACHINES * UNIQUE) / COMMON
    print(f"on B2, the shared file was stored {copies:.2f} times by {MACHINES} backups running together")
    assert 0.9 < copies < MACHINES + 0.5
    restores_exactly(env, tmp_path, versions)
    before = repo_bytes(url)
    env.ok("prune", "--max-unused", "0", **NO_AGE)
    after = repo_bytes(url)
    print(f"prune on B2: {before} bytes before, {after} after")
    assert after <= before and after < 2 * COMMON + MACHINES * UNIQUE + MACHINES * OVERHEAD
    env.ok("check", "--read-data")
    restores_exactly(env, tmp_path, versions, "after-prune")
