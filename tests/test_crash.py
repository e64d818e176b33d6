"""Crash consistency: a backup killed with SIGKILL at any point never damages what was committed.

Two ways to kill a backup, both followed by more backups and then by full verification:

- deterministically, at every object upload: the backup runs in a child process whose
  `LocalBackend.put` is wrapped to SIGKILL the process just before the k-th put, while the k-th
  object is half published (written and synced under its temporary name, not yet renamed), or just
  after it, for every k from 1 to the number of puts a backup makes (volumes, index objects and the
  version object);
- at random times (seeded), on a tree big enough that a backup takes a while, so kills also land
  in scanning, chunking, encryption, local index transactions and the version upload.

After the kills: every committed version (a versions/ object exists) restores exactly as the tree
was when it was made; every block of every file of every version is in the local index and lies
inside a volume object that exists; the same holds after `fsbackup repair` rebuilds the index
from the remote alone, and the versions still restore.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import pseudo_random, restored_root, snapshot, write

from fsbackup.codec import wire

CHECKOUT = Path(__file__).resolve().parent.parent   # the child processes import this checkout's fsbackup

# Runs `fsbackup.cli.main(argv[4:])` with LocalBackend.put wrapped: every put's object name is
# appended to the log file argv[3]; the k-th put (argv[1], 0 = never) SIGKILLs the process
# `before` it starts, `mid`-way (data written and synced under the temporary name, not renamed),
# or `after` it returned.
KILL_AT_PUT = r"""
import os, signal, sys, threading, time
from fsbackup.backends import local

k, mode, log_path, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
real_put, real_rename = local.LocalBackend.put, os.rename
lock, calls, dying = threading.Lock(), [0], threading.local()

def die():
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)

def put(self, name, data):
    with lock:
        calls[0] += 1
        n = calls[0]
        with open(log_path, "a") as log:
            log.write(name + "\n")
    if n == k and mode == "before":
        die()
    dying.on_rename = n == k and mode == "mid"
    try:
        real_put(self, name, data)
    finally:
        dying.on_rename = False
    if n == k and mode == "after":
        die()

def rename(src, dst, *args, **kwargs):
    if getattr(dying, "on_rename", False):
        die()
    return real_rename(src, dst, *args, **kwargs)

local.LocalBackend.put = put
local.os.rename = rename
from fsbackup.cli import main
sys.exit(main(argv))
"""


# ---- helpers --------------------------------------------------------------------------------

def tree_state(root: Path) -> dict:
    """`snapshot` of the tree with file data replaced by its digest (versions of big trees are kept)."""
    snap = snapshot(root)
    for rec in snap.values():
        if isinstance(rec, dict) and "data" in rec:
            rec["data"] = hashlib.blake2b(rec["data"]).hexdigest()
    return snap


def remote_versions(env) -> set[str]:
    folder = env.repo / "versions"
    return {n for n in os.listdir(folder) if not n.startswith(".")} if folder.is_dir() else set()


def child_env(env) -> dict:
    e = env.environ()
    e.pop("FSBACKUP_DEBUG", None)
    return e


def backup_killed_at_put(env, src: Path, k: int, mode: str, log: Path) -> subprocess.CompletedProcess:
    log.write_text("")
    return subprocess.run([sys.executable, "-c", KILL_AT_PUT, str(k), mode, str(log),
                           "backup", str(src), "--volume-size", VOLUME_SIZE_SMALL],
                          env=child_env(env), cwd=CHECKOUT, capture_output=True, text=True, timeout=120)


def backup_killed_after(env, src: Path, delay: float, volume_size: str) -> tuple[int, float]:
    """Start a backup and SIGKILL it after `delay` seconds (unless it ended first). Returns (rc, runtime)."""
    started = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "fsbackup", "backup", str(src), "--volume-size", volume_size],
                         env=child_env(env), cwd=CHECKOUT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        p.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
    err = p.communicate(timeout=120)[1].decode(errors="replace")
    assert p.returncode in (0, -signal.SIGKILL), f"backup failed on its own (rc {p.returncode}):\n{err}"
    return p.returncode, time.monotonic() - started


def committed_backup(env, src: Path, volume_size: str) -> str:
    """An uninterrupted backup (a separate process, as after a crash). Returns the new version's name."""
    before = remote_versions(env)
    r = env.run_process("backup", src, "--volume-size", volume_size)
    assert r.rc == 0, f"backup after a crash failed (rc {r.rc}):\n{r.out}\n{r.err}"
    new = remote_versions(env) - before
    assert len(new) == 1, f"a completed backup stored {len(new)} version objects"
    return new.pop()


def assert_publishing_order(puts: list[str], complete: bool = True) -> None:
    """Each volume before its index object; the version object last, after every volume (docs/format.md).
    The backup's lock object comes first, before any of them."""
    seen = set()
    for i, name in enumerate(puts):
        kind, _, rest = name.partition("/")
        if kind == "locks":
            assert not seen, f"the lock {name} was stored after {sorted(seen)}"
        elif kind == "index":
            assert f"data/{rest[:2]}/{rest}" in seen, f"{name} was stored before its volume"
        elif kind == "versions":
            assert i == len(puts) - 1, f"{name} was not the last object stored: {puts[i + 1:]}"
            volumes = {n.rsplit("/", 1)[1] for n in puts if n.startswith("data/")}
            assert volumes <= {n.split("/", 1)[1] for n in seen if n.startswith("index/")}, \
                "the version object was stored before every volume of the backup had its index object"
        else:
            assert kind == "data", f"a backup stored an unexpected object {name}"
        seen.add(name)
    if complete:
        assert puts and puts[-1].startswith("versions/"), f"no version object was stored last: {puts}"


def index_path(env) -> Path:
    repo_id = json.loads((env.repo / "config").read_bytes())["id"]
    return env.cache / "fsbackup" / repo_id / "index.sqlite"


def assert_index_matches_remote(env) -> None:
    """Every version object is in the local index, and every block of every file of every version
    is in the index and lies inside a volume object that exists (with its index object)."""
    db = sqlite3.connect(index_path(env))
    try:
        local = {name for (name,) in db.execute("SELECT name FROM versions")}
        assert local == remote_versions(env), "the local index and the remote disagree on the versions"
        missing = []
        rows = db.execute("SELECT DISTINCT v.name, c.extents FROM nodes n JOIN versions v ON v.id = n.version "
                          "JOIN contents c ON c.id = n.content")
        checked_volumes: dict[str, int] = {}
        for version, extents in rows:
            for block_id, length in wire.unpack_extents(extents):
                if block_id == wire.HOLE_ID:
                    continue
                row = db.execute("SELECT v.name, v.size, b.offset, b.stored_length, b.plain_length FROM blocks b "
                                 "JOIN volumes v ON v.id = b.volume WHERE b.hash = ?", (block_id,)).fetchone()
                if row is None:
                    missing.append(f"version {version[:8]}: block {block_id.hex()[:16]} is in no recorded volume")
                    continue
                volume, size, offset, stored_length, plain_length = row
                if plain_length != length:
                    missing.append(f"version {version[:8]}: block {block_id.hex()[:16]} has the wrong length")
                if volume not in checked_volumes:
                    obj = env.repo / "data" / volume[:2] / volume
                    checked_volumes[volume] = obj.stat().st_size if obj.is_file() else -1
                    if not (env.repo / "index" / volume).is_file():
                        missing.append(f"volume {volume[:16]} is recorded but index/{volume} does not exist")
                actual = checked_volumes[volume]
                if actual < 0:
                    missing.append(f"version {version[:8]}: block {block_id.hex()[:16]} is in volume "
                                   f"{volume[:16]}, which does not exist")
                elif actual != size or offset + stored_length > actual:
                    missing.append(f"version {version[:8]}: block {block_id.hex()[:16]} lies outside volume "
                                   f"{volume[:16]} ({actual} bytes, recorded {size})")
        assert not missing, "\n".join(missing[:20])
    finally:
        db.close()


def assert_restores_exactly(env, tmp_path: Path, src: Path, versions: dict[str, dict]) -> None:
    for name, expected in versions.items():
        target = tmp_path / f"restore-{name[:8]}"
        r = env.run("restore", name, "--target", target)
        assert r.rc == 0, f"restore of version {name[:8]} failed (rc {r.rc}):\n{r.err}"
        got = tree_state(restored_root(target, src))
        assert got.keys() == expected.keys(), f"version {name[:8]} restores other paths than were backed up"
        for rel in expected:
            assert got[rel] == expected[rel], f"version {name[:8]}: {rel!r} differs from the tree it was made of"
        shutil.rmtree(target)


def verify_repository(env, tmp_path: Path, src: Path, versions: dict[str, dict]) -> None:
    """Every committed version restores exactly and references only stored data, with the local
    index as the crashed and resumed backups left it and after `repair` rebuilt it from the remote."""
    assert set(versions) == remote_versions(env), "a version object exists that no backup was seen to commit"
    env.ok("versions")                                  # brings the local index in step with the remote
    assert_index_matches_remote(env)
    assert_restores_exactly(env, tmp_path, src, versions)
    r = env.ok("repair")
    assert "warning" not in r.err, r.err
    assert_index_matches_remote(env)
    assert_restores_exactly(env, tmp_path, src, versions)


# ---- killed at every object upload ------------------------------------------------------------

VOLUME_SIZE_SMALL = "32K"       # below the smallest block: every new block gets its own volume
SMALL_FILES = 6                 # each below the chunker's minimum block size: one block per file


def write_generation(src: Path, rng: random.Random) -> None:
    """Give every file of the changing part new content (each file one new block)."""
    for i in range(SMALL_FILES):
        write(src / "changing" / f"file{i}", pseudo_random(rng.randrange(40_000, 200_000), rng.getrandbits(64)))


def touch_a_little(src: Path, rng: random.Random, step: int) -> None:
    write(src / "small-edits" / f"edit{step % 3}", pseudo_random(rng.randrange(1, 50_000), rng.getrandbits(64)))
    (src / "changing" / f"file{rng.randrange(SMALL_FILES)}").unlink()


def make_static_part(root: Path) -> None:
    """A few small entries of every kind, unchanged between backups (a smaller `make_full_tree`)."""
    write(root / "text.txt", b"unchanged between backups\n" * 100)
    write(root / "empty", b"")
    (root / "empty dir").mkdir()
    os.symlink("text.txt", root / "link")
    os.link(root / "text.txt", root / "hardlink")
    os.mkfifo(root / "fifo")
    with open(root / "sparse", "wb") as f:
        f.seek(300_000)
        f.write(b"between holes")
        f.truncate(1 << 20)
    os.chmod(root / "text.txt", 0o640)
    os.setxattr(root / "text.txt", "user.comment", b"an xattr value")


@pytest.mark.parametrize("mode", ["before", "mid", "after"])
def test_backup_killed_at_every_object_upload_leaves_every_committed_version_restorable(env, tmp_path, mode):
    rng = random.Random(f"puts-{mode}")
    src = tmp_path / "src"
    make_static_part(src / "static")
    write_generation(src, rng)
    log = tmp_path / "puts.log"
    versions: dict[str, dict] = {}

    # How many puts a backup of a new generation makes: every volume, index object and the version.
    first = backup_killed_at_put(env, src, 0, mode, log)
    assert first.returncode == 0, first.stderr
    versions.update({n: tree_state(src) for n in remote_versions(env)})
    write_generation(src, rng)
    before = remote_versions(env)
    counted = backup_killed_at_put(env, src, 0, mode, log)
    assert counted.returncode == 0, counted.stderr
    (name,) = remote_versions(env) - before
    versions[name] = tree_state(src)
    puts = log.read_text().split()
    assert_publishing_order(puts)
    assert len(puts) >= 2 * SMALL_FILES + 1, puts    # a volume and an index object per new block, the version

    for k in range(1, len(puts) + 1):
        write_generation(src, rng)
        before = remote_versions(env)
        p = backup_killed_at_put(env, src, k, mode, log)
        assert p.returncode == -signal.SIGKILL, \
            f"kill at put {k} ({mode}) did not happen: rc {p.returncode}\n{p.stderr}"
        tried = log.read_text().split()
        assert_publishing_order(tried, complete=False)
        hit = tried[k - 1]
        new = remote_versions(env) - before
        version_published = hit.startswith("versions/") and mode == "after"
        assert len(new) == (1 if version_published else 0), f"killed {mode} put {k} ({hit}): versions {new}"
        state = tree_state(src)
        versions.update({n: state for n in new})
        touch_a_little(src, rng, k)
        name = committed_backup(env, src, VOLUME_SIZE_SMALL)
        versions[name] = tree_state(src)                # after the backup: as the backup saw it

    verify_repository(env, tmp_path, src, versions)


# ---- killed at random times -----------------------------------------------------------------

BIG_FILES = 48
BIG_FILE_SIZE = 640 * 1024       # 30 MiB of incompressible data per generation
VOLUME_SIZE_BIG = "1M"


def write_big_generation(src: Path, rng: random.Random) -> None:
    for i in range(BIG_FILES):
        write(src / "big" / f"d{i % 6}" / f"f{i:02}", rng.randbytes(BIG_FILE_SIZE + rng.randrange(4096)))


@pytest.mark.soak(sample=1)
@pytest.mark.parametrize("seed", [1, 2])
def test_backup_killed_at_random_times_leaves_every_committed_version_restorable(env, tmp_path, seed):
    rng = random.Random(seed)
    src = tmp_path / "src"
    make_static_part(src / "static")
    write_big_generation(src, rng)
    versions: dict[str, dict] = {}

    # Measure once how long a full backup takes; kills are drawn uniformly within that time.
    started = time.monotonic()
    name = committed_backup(env, src, VOLUME_SIZE_BIG)
    full = time.monotonic() - started
    versions[name] = tree_state(src)

    killed = 0
    for step in range(4):
        write_big_generation(src, rng)             # all new data: the killed backup has a full backup's work
        before = remote_versions(env)
        rc, _ = backup_killed_after(env, src, rng.uniform(0, full), VOLUME_SIZE_BIG)
        killed += rc == -signal.SIGKILL
        new = remote_versions(env) - before
        assert len(new) <= 1
        if new:
            versions[new.pop()] = tree_state(src)
        if rng.random() < 0.5:                     # sometimes a second crash before a backup completes
            write(src / "static" / f"edit{step}", rng.randbytes(rng.randrange(1, 100_000)))
            before = remote_versions(env)
            backup_killed_after(env, src, rng.uniform(0, full), VOLUME_SIZE_BIG)
            new = remote_versions(env) - before
            if new:
                versions[new.pop()] = tree_state(src)
        write(src / "big" / "d0" / "f00", rng.randbytes(rng.randrange(1, 200_000)))   # a little change
        name = committed_backup(env, src, VOLUME_SIZE_BIG)
        versions[name] = tree_state(src)

    assert killed >= 2, "too few backups were killed while running: the kill window is mis-measured"
    verify_repository(env, tmp_path, src, versions)
