"""Storage failures: temporary errors are retried with capped, jittered backoff for a bounded time;
permanent errors pass at once and stop a backup with one line, leaving a repository the next backup
and every restore can use; a download damaged on its way is fetched again once (damage that stays
is reported as corruption); the mount model fails reads with EIO while the storage is down and
serves them again when it comes back.

Faults come from `FaultyBackend` (seeded) placed under the real retry layer; the CLI runs in this
process with the `file` scheme registered to open a FaultyBackend around the local one.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path

import pytest
from conftest import TEST_PASSWORD, pseudo_random, restored_root, snapshot, write
from doubles.faults import FaultyBackend
from doubles.memory import MemoryBackend

from fsbackup.backends import Backend, open_backend, retry
from fsbackup.backends.local import LocalBackend
from fsbackup.backends.retry import RetryingBackend
from fsbackup.catalog import BlockLocation
from fsbackup.codec import wire
from fsbackup.errors import (
    EXIT_BACKEND,
    EXIT_CORRUPT,
    BackendError,
    CorruptObject,
    NoSpace,
    NoSuchObject,
    PermissionDenied,
)
from fsbackup.mount.fuse import _errno_of
from fsbackup.mount.namespace import ROOT_INODE
from fsbackup.mount.view import RepositoryView
from fsbackup.repository import Repository, volume_object

# ---- RetryingBackend, on a clock of its own -------------------------------------------------------

class FakeTime:
    """A clock that moves only when the code under test sleeps."""

    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def stored(*names: str) -> MemoryBackend:
    store = MemoryBackend()
    for name in names:
        store.put(name, name.encode())
    return store


def retrying(inner, t: FakeTime, **options) -> RetryingBackend:
    return RetryingBackend(inner, sleep=t.sleep, clock=t.clock, rng=random.Random(1), **options)


def test_temporary_failures_are_retried_until_the_call_succeeds_and_each_retry_is_logged(caplog):
    t = FakeTime()
    faulty = FaultyBackend(stored("x"))
    for k in (1, 2, 3):
        faulty.fail_call(k, "get")
    with caplog.at_level(logging.WARNING, logger="fsbackup.backends"):
        assert retrying(faulty, t).get("x") == b"x"
    assert faulty.calls["get"] == 4 and len(t.sleeps) == 3
    warnings = [r for r in caplog.records if r.name == "fsbackup.backends" and r.levelno == logging.WARNING]
    assert len(warnings) == 3 and all("on get x" in r.getMessage() for r in warnings)


def test_every_method_is_retried_and_a_listing_is_retried_whole():
    t = FakeTime()
    faulty = FaultyBackend(stored("a/1", "a/2"))
    store = retrying(faulty, t)
    for method in ("put", "get", "size", "list", "delete"):
        faulty.fail_call(1, method)
    store.put("a/3", b"three")
    assert store.get("a/3") == b"three" and store.size("a/3") == 5
    assert sorted(store.list("a/")) == [("a/1", 3), ("a/2", 3), ("a/3", 5)]
    store.delete("a/1")
    assert not store.exists("a/1")
    assert faulty.injected == 5 and len(t.sleeps) == 5


def test_backoff_grows_exponentially_is_jittered_and_capped():
    t = FakeTime()
    faulty = FaultyBackend(stored("x"))
    faulty.go_down(permanent=False)                 # a long outage of temporary errors
    with pytest.raises(BackendError):
        retrying(faulty, t, max_seconds=600, base_delay=0.5, max_delay=20).get("x")
    sleeps = t.sleeps
    assert len(sleeps) > 20
    for n, wait in enumerate(sleeps):
        assert 0 <= wait <= min(20, 0.5 * 2 ** n)   # full jitter below the exponential bound, capped
    assert len(set(sleeps)) == len(sleeps)          # random, not lock-step
    assert max(sleeps[8:]) > 10                     # the bound reached the cap


def test_the_wait_the_storage_asks_for_is_honoured():
    t = FakeTime()
    faulty = FaultyBackend(stored("x"))
    faulty.fail_call(1, "get", retry_after=7.5)     # e.g. HTTP 429 or 503 with Retry-After: 7.5
    assert retrying(faulty, t, base_delay=0.5).get("x") == b"x"
    assert t.sleeps == [7.5]
    faulty.fail_call(1, "get", retry_after=90)      # beyond the bound: no use waiting
    with pytest.raises(BackendError, match="gave up after 1 attempt in"):
        retrying(faulty, t, max_seconds=60).get("x")
    assert t.sleeps == [7.5]


def test_gives_up_after_the_time_bound_with_the_last_error_attempts_and_seconds():
    t = FakeTime()
    faulty = FaultyBackend(stored("x"))
    faulty.go_down(permanent=False)
    with pytest.raises(BackendError) as e:
        retrying(faulty, t, max_seconds=60).get("x")
    attempts = faulty.calls["get"]
    assert attempts > 3 and t.now <= 60
    message = str(e.value)
    assert "simulated temporary failure on get x" in message
    assert f"gave up after {attempts} attempts in " in message
    assert not e.value.temporary                    # no layer above retries it again


@pytest.mark.parametrize("error", [NoSuchObject("x"), PermissionDenied("denied"), NoSpace("full"),
                                   BackendError("bad request", temporary=False), ValueError("a bug")],
                         ids=lambda e: type(e).__name__)
def test_permanent_errors_pass_at_once(error):
    t = FakeTime()
    faulty = FaultyBackend(stored("x"))
    faulty.fail_call(1, "get", error=error)
    with pytest.raises(type(error)):
        retrying(faulty, t).get("x")
    assert faulty.calls["get"] == 1 and t.sleeps == []


def test_the_wrapper_shows_the_wrapped_backend_and_rewrapping_rebounds_instead_of_nesting(tmp_path):
    store = open_backend(str(tmp_path))             # every backend comes wrapped
    assert isinstance(store, RetryingBackend) and isinstance(store.inner, LocalBackend)
    assert store.url == store.inner.url and store.connections == 2
    store.connections = 5
    assert store.inner.connections == 5
    mount_bound = RetryingBackend(store, max_seconds=30)
    assert mount_bound.inner is store.inner and mount_bound.max_seconds == 30


# ---- the CLI over faulty storage ------------------------------------------------------------------

class FaultyStorage:
    """Makes the CLI open its repository as FaultyBackend(the real backend) under quick retries.
    `setup` scripts the faults of each FaultyBackend as it is made; `opened` keeps them."""

    def __init__(self, wrap_storage, monkeypatch):
        self.opened: list[FaultyBackend] = []
        self.setup = lambda faulty: None
        for scheme in ("file", "b2"):
            wrap_storage(self._wrap, scheme)
        for bound, quick in (("BACKUP_RETRY_SECONDS", 20), ("BASE_DELAY", 0.001), ("MAX_DELAY", 0.02)):
            monkeypatch.setattr(retry, bound, quick)

    def _wrap(self, plain: Backend) -> FaultyBackend:
        faulty = FaultyBackend(plain, seed=len(self.opened) + 1)
        self.setup(faulty)
        self.opened.append(faulty)
        return faulty

    @property
    def last(self) -> FaultyBackend:
        return self.opened[-1]


@pytest.fixture
def storage(env, wrap_storage, monkeypatch) -> FaultyStorage:
    return FaultyStorage(wrap_storage, monkeypatch)


def make_tree(src: Path, files: int = 300, seed: int = 0) -> None:
    """`files` files of varied sizes (empty to ~200 KiB), three of several MiB, in a few folders."""
    rng = random.Random(seed)
    for i in range(files):
        size = rng.choice([0, 10, 1000, 5000, 40_000, 200_000])
        write(src / f"d{i % 7}" / f"f{i:03d}", pseudo_random(size, seed * 1000 + i))
    for i, mib in enumerate((2, 3, 5)):
        write(src / "big" / f"b{i}", pseudo_random((mib << 20) + i, seed * 1000 + 900 + i))


def restore_matches(env, version: str, target: Path, expected: dict, src: Path) -> None:
    env.ok("restore", version, "--target", target)
    assert snapshot(restored_root(target, src), with_atime=False) == expected


def version_ids(env) -> list[str]:
    return [v["id"] for v in json.loads(env.ok("versions", "--json").out)]     # oldest first


def test_backup_and_restore_succeed_while_a_tenth_of_all_storage_calls_fail(env, tmp_path, storage):
    src = tmp_path / "src"
    make_tree(src)
    storage.setup = lambda faulty: setattr(faulty, "fail_rate", 0.1)
    env.ok("backup", src, "--volume-size", "512K")
    backup = storage.last
    restore_matches(env, "latest", tmp_path / "out", snapshot(src, with_atime=False), src)
    assert backup.injected >= 3 and storage.last.injected >= 3     # both really met failures


def test_a_backup_whose_uploads_fail_for_good_stops_with_one_line_and_the_next_backup_succeeds(
        env, tmp_path, storage):
    src = tmp_path / "src"
    make_tree(src, files=40, seed=1)
    env.ok("backup", src, "--volume-size", "1M")
    first = snapshot(src, with_atime=False)

    write(src / "new" / "data", pseudo_random(4 << 20, 77))        # several volumes of new data
    storage.setup = lambda faulty: faulty.go_down(after=2, method="put")
    r = env.run("backup", src, "--volume-size", "1M")
    assert r.rc == EXIT_BACKEND, r.err
    *warnings, error = r.err.splitlines()             # (the lock could not be removed either: a warning)
    assert error.startswith("fsbackup: error: ") and all(w.startswith("warning: ") for w in warnings), r.err
    assert "simulated outage on put" in error and "Traceback" not in r.err
    assert storage.last.calls["put"] > 2

    storage.setup = lambda faulty: None                            # the storage is back
    env.ok("backup", src, "--volume-size", "1M")
    second = snapshot(src, with_atime=False)
    versions = version_ids(env)
    assert len(versions) == 2
    restore_matches(env, versions[0], tmp_path / "out1", first, src)
    restore_matches(env, versions[1], tmp_path / "out2", second, src)


@pytest.mark.parametrize("how, prefix", [("truncate", "data/"), ("flip", "data/"), ("flip", "versions/"),
                                         ("truncate", "index/"), ("truncate", "keys/"), ("flip", "config")])
def test_a_download_damaged_once_is_fetched_again_and_the_restore_is_exact(env, tmp_path, storage, caplog,
                                                                           how, prefix):
    src = tmp_path / "src"
    make_tree(src, files=20, seed=2)
    env.ok("backup", src, "--volume-size", "1M")
    shutil.rmtree(env.cache)            # the restore rebuilds the local index: index and version objects are read
    storage.setup = lambda faulty: faulty.damage_downloads(how, times=1, prefix=prefix)
    target = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="fsbackup.repository"):
        env.ok("restore", "latest", "--target", target)
    assert storage.last.damaged == 1
    assert any("a second download was intact" in r.getMessage() for r in caplog.records)
    assert snapshot(restored_root(target, src), with_atime=False) == snapshot(src, with_atime=False)


def test_a_download_damaged_every_time_is_reported_corrupt_naming_the_object(env, tmp_path, storage):
    src = tmp_path / "src"
    write(src / "a", pseudo_random(300_000, 1))
    write(src / "b", pseudo_random(300_000, 2))
    env.ok("backup", src, "--volume-size", "100K")                 # several volumes
    victim = sorted(name for name, _ in LocalBackend(str(env.repo)).list("data/"))[0]
    storage.setup = lambda faulty: faulty.damage_downloads("flip", times=None, prefix=victim)
    target = tmp_path / "out"
    r = env.run("restore", "latest", "--target", target)
    assert r.rc == EXIT_CORRUPT, r.err
    assert f"remote object {victim} is corrupt" in r.err and "Traceback" not in r.err
    assert storage.last.damaged >= 2                                # fetched again before it was reported
    restored = restored_root(target, src)
    for name in ("a", "b"):                 # (where blocks lie depends on the repository's chunker key)
        if (restored / name).exists():
            assert (restored / name).read_bytes() == (src / name).read_bytes()
        else:
            assert f"{src / name} not restored: remote object {victim} is corrupt" in r.err
    assert not all((restored / name).exists() for name in ("a", "b"))


# ---- the mount model during an outage ---------------------------------------------------------------

def test_mount_reads_fail_with_eio_after_bounded_retries_and_work_again_when_storage_returns(env, tmp_path):
    src = tmp_path / "src"
    data = pseudo_random(6 << 20, 9)                               # several blocks
    write(src / "a", data)
    env.ok("backup", src)
    faulty = FaultyBackend(LocalBackend(str(env.repo)))
    backend = RetryingBackend(faulty, max_seconds=0.5, base_delay=0.05, max_delay=0.2)
    repo = Repository.open(backend, TEST_PASSWORD.encode(), str(tmp_path / "mount-index.sqlite"))
    repo.sync_catalog()
    view = RepositoryView(repo, memory_cache=1)                    # nothing cached: every read fetches
    try:
        attr = view.getattr(ROOT_INODE)
        for part in ["versions", os.fsdecode(view.latest), *str(src / "a").strip("/").split("/")]:
            attr = view.lookup(attr.ino, os.fsencode(part))
        f = view.open(attr.ino)
        assert view.read(f, 0, 4096) == data[:4096]

        faulty.go_down(permanent=False)                            # the network is gone
        before = faulty.injected
        started = time.monotonic()
        with pytest.raises(BackendError) as e:
            view.read(f, 0, len(data))
        assert _errno_of(e.value) == errno.EIO
        assert 0.3 < time.monotonic() - started < 5
        assert faulty.injected - before >= 3                       # retried with backoff, then gave up
        assert view.getattr(attr.ino).size == len(data)            # metadata needs no storage

        faulty.come_back()                                         # same view: no remount
        assert view.read(f, 0, len(data)) == data
    finally:
        view.close()
        repo.close()


# ---- a run of adjacent blocks fetched with one range read -------------------------------------------

def volume_of_blocks(repo: Repository, n: int) -> tuple[str, list]:
    """A volume object of `n` blocks stored on `repo`'s backend; [(block id, location)] by offset."""
    name = os.urandom(32).hex()
    cipher = repo.block_cipher(name)
    body, run = bytearray(wire.header(wire.VOLUME_MAGIC)), []
    for i in range(n):
        data = pseudo_random(3000, i)
        block_id = repo.keys.block_id(data)
        stored, plain_length = wire.encode_block(cipher, block_id, data)
        run.append((block_id, BlockLocation(name, len(body), len(stored), plain_length)))
        body += stored
    repo.backend.put(volume_object(name), bytes(body))
    return name, run


@pytest.fixture
def memory_repo(tmp_path, monkeypatch) -> Repository:
    monkeypatch.setenv("FSBACKUP_KDF_MEMORY_KIB", "1024")
    monkeypatch.setenv("FSBACKUP_WEAK_KDF_FOR_TESTS", "1")
    return Repository.create(MemoryBackend(), TEST_PASSWORD.encode(), str(tmp_path / "index.sqlite"))


def test_a_damaged_block_in_a_run_costs_only_that_block(memory_repo):
    name, run = volume_of_blocks(memory_repo, 5)
    victim_id, (_, offset, _, _) = run[2]
    stored = bytearray(memory_repo.backend.objects[volume_object(name)])
    stored[offset + 5] ^= 1
    memory_repo.backend.objects[volume_object(name)] = bytes(stored)
    got = memory_repo.fetch_run(run)
    assert isinstance(got[victim_id], CorruptObject)
    for i, (block_id, _) in enumerate(run):
        if block_id != victim_id:
            assert got[block_id] == pseudo_random(3000, i)


def test_a_run_damaged_on_its_way_is_fetched_again_block_by_block(memory_repo, caplog):
    name, run = volume_of_blocks(memory_repo, 5)
    faulty = FaultyBackend(memory_repo.backend)
    faulty.damage_downloads("truncate", times=1, prefix="data/")
    memory_repo.backend = faulty
    with caplog.at_level(logging.WARNING, logger="fsbackup.repository"):
        got = memory_repo.fetch_run(run)
    assert got == {block_id: pseudo_random(3000, i) for i, (block_id, _) in enumerate(run)}
    assert any("a second download was intact" in r.getMessage() for r in caplog.records)
