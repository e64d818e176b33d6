"""A block another machine's prune copied into a new volume stays found after the old volume goes,
however the syncs of this machine's index fall between that prune's steps."""
from __future__ import annotations

import json

import pytest
from conftest import pseudo_random, restored_root, snapshot, write
from doubles.faults import FaultyBackend

from fsbackup.errors import BackendError
from fsbackup.repository import locks


@pytest.fixture(autouse=True)
def no_leftover_age(monkeypatch):
    """These tests prune right after the backups they set up: no volume is judged by its age here
    (tests/test_fleet.py tests the age)."""
    monkeypatch.setattr(locks, "LEFTOVER_AGE", 0)


@pytest.fixture
def two_machines(env, tmp_path):
    """env's index is machine A's; machine B has its own (another XDG_CACHE_HOME)."""
    other = tmp_path / "cache-b"
    return env, (lambda *args: env.ok(*args, XDG_CACHE_HOME=str(other))), \
        (lambda *args: env.run(*args, XDG_CACHE_HOME=str(other)))


def test_a_sync_between_a_prunes_copy_and_its_deletion_loses_no_block(two_machines, tmp_path, wrap_storage):
    env, b_ok, b_run = two_machines
    src = tmp_path / "src"
    for i in range(12):                       # in name order, kept and dropped files alternate: every
        write(src / f"f{i:02d}", pseudo_random(60_000, i))      # volume is half used after the forget
    env.ok("backup", src, "--volume-size", "128K")
    for i in range(1, 12, 2):
        (src / f"f{i:02d}").unlink()
    env.ok("backup", src, "--volume-size", "128K")
    expected = snapshot(src)
    first = json.loads(env.ok("versions", "--json").out)[0]["id"]
    b_ok("versions")                                          # B knows every volume
    env.ok("forget", first)

    # A's prune copies the live blocks into new volumes, then fails to delete the old ones.

    class NoDeletesOnceANewVolumeIsStored(FaultyBackend):
        stored = False

        def put(self, name, data):
            super().put(name, data)
            self.stored = self.stored or name.startswith("index/")

        def delete(self, name):
            if self.stored:
                raise BackendError(f"refused to delete {name}")
            super().delete(name)
    unwrap = wrap_storage(NoDeletesOnceANewVolumeIsStored)
    assert env.run("prune", "--max-unused", "0", "--volume-size", "128K").rc != 0
    unwrap()
    b_ok("versions")                  # B records the new volumes while the old ones still hold the blocks
    env.ok("prune", "--max-unused", "0", "--volume-size", "128K")      # now the old volumes go
    r = b_run("restore", "latest", "--target", tmp_path / "out", "--accept-missing")
    assert r.rc == 0, r.err
    assert snapshot(restored_root(tmp_path / "out", src)) == expected
    b_ok("prune", "--accept-missing")                        # B's prune keeps the new volumes
    env.ok("check", "--read-data")
    r = b_run("restore", "latest", "--target", tmp_path / "out2")
    assert r.rc == 0, r.err
    assert snapshot(restored_root(tmp_path / "out2", src)) == expected
