"""The command line against a b2:// repository, on b2sdk's in-memory B2 (docs/b2.md)."""
from __future__ import annotations

import secrets

import pytest
from conftest import Env, make_full_tree, pseudo_random, restored_root, snapshot, uploads_in_flight_seen, write
from doubles import b2sim

from fsbackup import errors
from fsbackup.repository import Repository

BUCKET = "fsbackup-cli"


@pytest.fixture
def b2_env(tmp_path):
    sim = b2sim.use_simulator()
    sim.create_bucket(BUCKET)
    env = Env(tmp_path)
    env.vars["FSBACKUP_REPOSITORY"] = f"b2://{BUCKET}/repo-{secrets.token_hex(6)}"
    env.vars.update(sim.environ())
    yield env
    b2sim.stop_simulator()


def test_backup_and_restore_through_b2(b2_env, tmp_path, monkeypatch):
    seen = uploads_in_flight_seen(monkeypatch)
    source = make_full_tree(tmp_path / "src")
    b2_env.ok("init")
    b2_env.ok("backup", source, "--volume-size", "1M")
    b2_env.ok("--connections", "3", "backup", source)
    assert seen == [4, 3]                    # B2's default, then --connections
    b2_env.ok("restore", "latest", "--target", tmp_path / "out")
    assert snapshot(restored_root(tmp_path / "out", source)) == snapshot(source)


def test_a_large_file_is_restored_from_remote_storage_in_range_reads_of_several_blocks(b2_env, tmp_path, monkeypatch):
    """A request to remote storage costs a round trip: the blocks of a large file lying back to
    back in a volume come in one range read each few MiB, not one request per block."""
    data = pseudo_random(12 << 20, 7)
    write(tmp_path / "src" / "big", data)
    b2_env.ok("init")
    b2_env.ok("backup", tmp_path / "src")
    calls = {"run": 0, "block": 0}
    real_run, real_block = Repository.fetch_run, Repository.fetch_block

    def counted_run(self, run):
        calls["run"] += 1
        return real_run(self, run)

    def counted_block(self, block_id, location):
        calls["block"] += 1
        return real_block(self, block_id, location)
    monkeypatch.setattr(Repository, "fetch_run", counted_run)
    monkeypatch.setattr(Repository, "fetch_block", counted_block)
    b2_env.ok("restore", "latest", "--target", tmp_path / "out")
    assert (restored_root(tmp_path / "out", tmp_path / "src") / "big").read_bytes() == data
    assert calls["block"] == 0 and 1 <= calls["run"] <= 6, calls      # 12 MiB: about 16 blocks, 3-4 runs


def test_a_large_file_whose_blocks_repeat_far_apart_is_restored_from_remote_storage(b2_env, tmp_path, monkeypatch):
    """The range reads of a large file's runs are let go once the writer is past them (memory stays
    bounded): a block met again further on, in a run let go, is fetched alone."""
    # 12 MiB repeated (three times the largest block): its copies share blocks wherever their cuts
    # fall, which the repository's key decides.
    repeated = pseudo_random(12 << 20, 8)
    data = repeated + pseudo_random(6 << 20, 9) + repeated
    write(tmp_path / "src" / "big", data)
    b2_env.ok("init")
    b2_env.ok("backup", tmp_path / "src")
    alone = []
    real_block = Repository.fetch_block
    monkeypatch.setattr(Repository, "fetch_block",
                        lambda self, block_id, location: alone.append(block_id) or real_block(self, block_id, location))
    b2_env.ok("restore", "latest", "--target", tmp_path / "out")
    assert (restored_root(tmp_path / "out", tmp_path / "src") / "big").read_bytes() == data
    assert alone and len(alone) == len(set(alone)), alone       # the repeats, each fetched once


def test_b2_errors_are_one_line_with_their_exit_codes(b2_env):
    r = b2_env.run("init", B2_APPLICATION_KEY="wrong")
    assert r.rc == errors.EXIT_PERMISSION and r.err.count("\n") == 1 and "rejected the application key" in r.err
    r = b2_env.run("versions", FSBACKUP_REPOSITORY="b2://fsbackup-nothing-here/x")
    assert r.rc == errors.EXIT_NO_REPOSITORY and r.err.count("\n") == 1 and "no B2 bucket named" in r.err
    r = b2_env.run("versions", B2_APPLICATION_KEY_ID="")
    assert r.rc == errors.EXIT_USAGE and "B2_APPLICATION_KEY_ID and B2_APPLICATION_KEY" in r.err
    r = b2_env.run("--connections", "0", "versions")
    assert r.rc == errors.EXIT_USAGE and "positive whole number" in r.err
