"""check, verify-after-backup and repair: each kind of damage is found and named with the versions
and files it affects (exit 12), a clean repository checks clean (exit 0), and repair brings a damaged
repository back to one that checks clean and restores exactly (less the files it says it removed)."""
from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import apsw
from conftest import restored_root, snapshot, write
from test_b2_cli import b2_env  # noqa: F401  (fixture)
from test_corruption import backed, flip, forget_local_index, volume_path  # noqa: F401  (backed: fixture)
from test_crash import index_path

from fsbackup.backends import WrappingBackend, open_backend
from fsbackup.codec import wire
from fsbackup.engine.check import select_volumes
from fsbackup.errors import EXIT_CORRUPT
from fsbackup.repository import index_object, version_object, volume_object


def versions_of(env) -> list[str]:
    return sorted(os.listdir(env.repo / "versions"))


def assert_damage_reported(r, obj: str, affected: dict[str, list[bytes]] | None = None) -> None:
    """Exit 12; the report names `obj`, and under it each affected version with its files."""
    assert "Traceback" not in r.err, r.err
    assert r.rc == EXIT_CORRUPT, f"exit {r.rc}: {r.out}{r.err}"
    assert f"damaged: {obj}" in r.err, r.err
    section = r.err.split(f"damaged: {obj}", 1)[1].split("\ndamaged: ", 1)[0]
    for version, paths in (affected or {}).items():
        assert f"version {version[:8]}" in section, section
        for rel in paths:
            assert os.fsdecode(rel) in section, section
    assert r.err.rstrip().splitlines()[-1].startswith("fsbackup: error: ")


def block_position(b, rel: bytes) -> tuple[str, int]:
    """(volume, a byte in the middle of the first block of file `rel`)."""
    block_id = b.layout.files[rel][0]
    volume, offset, stored = b.layout.blocks[block_id]
    return volume, offset + stored // 2


# ---- a clean repository --------------------------------------------------------------------

def test_clean_repository_checks_clean(env, backed):
    assert "no damage found" in env.ok("check").out
    r = env.ok("check", "--read-data", "--json")
    doc = json.loads(r.out)
    assert doc["ok"] and doc["problems"] == [] and doc["volumes_read"] == doc["volumes"] > 1


# ---- each kind of damage ---------------------------------------------------------------------

def test_damaged_block_is_found_by_read_data_with_its_files(env, backed):
    volume, pos = block_position(backed, b"small0")
    flip(volume_path(env, volume), pos)
    env.ok("check")                                   # structure alone cannot see inside volumes
    r = env.run("check", "--read-data")
    assert_damage_reported(r, volume_object(volume), {backed.version: [b"small0"]})
    assert "block(s) are damaged" in r.err


def test_damaged_volume_table_is_found_and_affects_no_file(env, backed):
    volume = backed.layout.volumes_of(b"small1")[0]
    path = volume_path(env, volume)
    flip(path, path.stat().st_size - wire.FOOTER.size - 3)
    r = env.run("check", "--read-data")
    assert_damage_reported(r, volume_object(volume))
    assert "table is damaged" in r.err and "version " not in r.err


def test_damaged_index_object_is_found_with_its_files(env, backed):
    volume = backed.layout.volumes_of(b"small2")[0]
    flip(env.repo / index_object(volume), wire.HEADER_LEN + 2)
    assert_damage_reported(env.run("check"), index_object(volume), {backed.version: [b"small2"]})


def test_damaged_version_object_is_found(env, backed):
    path = env.repo / version_object(backed.version)
    flip(path, path.stat().st_size // 2)
    r = env.run("check")
    assert_damage_reported(r, version_object(backed.version), {backed.version: []})
    assert "whole version" in r.err


def test_missing_volume_is_found_with_its_files(env, backed):
    volume = backed.layout.volumes_of(b"sub/nested")[0]
    volume_path(env, volume).unlink()
    r = env.run("check")
    assert_damage_reported(r, volume_object(volume), {backed.version: [b"sub/nested"]})
    assert "missing" in r.err


def test_missing_index_object_is_found(env, backed):
    volume = backed.layout.volumes_of(b"small3")[0]
    (env.repo / index_object(volume)).unlink()
    r = env.run("check")
    assert_damage_reported(r, index_object(volume), {backed.version: [b"small3"]})
    assert "repair re-creates it" in r.err


def test_truncated_volume_is_found_with_its_files(env, backed):
    volume = backed.layout.volumes_of(b"big.bin")[1]
    path = volume_path(env, volume)
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    assert_damage_reported(env.run("check"), volume_object(volume), {backed.version: [b"big.bin"]})
    assert_damage_reported(env.run("check", "--read-data"), volume_object(volume), {backed.version: [b"big.bin"]})


def test_damage_report_as_json_names_object_versions_and_paths(env, backed):
    volume, pos = block_position(backed, b"small0")
    flip(volume_path(env, volume), pos)
    r = env.run("check", "--read-data", "--json")
    assert r.rc == EXIT_CORRUPT
    (problem,) = json.loads(r.out)["problems"]
    assert problem["object"] == volume_object(volume)
    paths = problem["affected"][backed.version]["paths"]
    assert problem["affected"][backed.version]["count"] == 1 and paths[0].endswith("/small0")


def test_check_without_a_local_index_rebuilds_it_and_reports_every_damaged_object(env, backed):
    small2 = backed.layout.volumes_of(b"small2")[0]
    nested = backed.layout.volumes_of(b"sub/nested")[0]
    flip(env.repo / index_object(small2), wire.HEADER_LEN + 2)
    volume_path(env, nested).unlink()
    forget_local_index(env)
    r = env.run("check")
    assert_damage_reported(r, index_object(small2))
    assert_damage_reported(r, volume_object(nested), {backed.version: [b"sub/nested"]})


# ---- choosing volumes to read ----------------------------------------------------------------

def test_read_data_subset_parts_are_deterministic_and_cover_every_volume_once(env, backed):
    rng = random.Random(5)         # fixed names: the spread of random ones could leave the bounds by chance
    names = [rng.randbytes(32).hex() for _ in range(200)]
    parts = [select_volumes(names, f"{n}/5") for n in range(1, 6)]
    assert sorted(sum(parts, [])) == sorted(names) and all(20 <= len(p) <= 60 for p in parts)
    assert parts[0] == select_volumes(list(reversed(names)), "1/5")
    assert len(select_volumes(names, "10%")) == 20 and len(select_volumes(names[:3], "1%")) == 1
    read = [json.loads(env.ok("check", "--read-data-subset", f"{n}/3", "--json").out)["volumes_read"]
            for n in (1, 2, 3)]
    assert sum(read) == json.loads(env.ok("check", "--json").out)["volumes"]
    assert read[0] == json.loads(env.ok("check", "--read-data-subset", "1/3", "--json").out)["volumes_read"]
    assert env.run("check", "--read-data-subset", "6/5").rc == 2
    assert env.run("check", "--read-data-subset", "0%").rc == 2


# ---- verify after backup ---------------------------------------------------------------------

class FlipOnPut(WrappingBackend):
    """Stores every volume with one byte flipped: damage on its way, after the writer's own check."""

    def put(self, name, data):
        if name.startswith("data/"):
            data = bytearray(data)
            data[len(data) // 2] ^= 0x01
        self.inner.put(name, bytes(data))

    def get(self, name, offset=0, length=None):
        return self.inner.get(name, offset, length)

    def size(self, name):
        return self.inner.size(name)

    def list(self, prefix=""):
        return self.inner.list(prefix)

    def delete(self, name):
        self.inner.delete(name)


def test_backup_verifies_and_reports_a_volume_damaged_on_upload(env, tmp_path, wrap_storage):
    src = tmp_path / "src"
    write(src / "a", os.urandom(300_000))
    r = env.ok("backup", src)
    assert "1 volume(s) downloaded and verified" in r.out
    write(src / "b", os.urandom(300_000))
    wrap_storage(FlipOnPut)
    r = env.run("backup", src)
    assert r.rc == EXIT_CORRUPT, r.err
    damaged = [line for line in r.err.splitlines() if line.startswith("damaged: data/")]
    assert len(damaged) == 1 and "block(s) are damaged" in damaged[0], r.err
    assert "is saved" in r.err and "Traceback" not in r.err
    assert len(versions_of(env)) == 2


def test_verify_percent_reads_at_least_that_part_of_all_volumes(env, backed, tmp_path):
    write(backed.src / "later", os.urandom(50_000))
    volumes = len(os.listdir(env.repo / "index"))
    r = env.ok("backup", backed.src, "--volume-size", "32K", "--verify-percent", "100")
    assert f"{volumes + 1} volume(s) downloaded and verified" in r.out, r.out


def test_retention_is_skipped_when_the_new_version_does_not_verify(env, tmp_path, wrap_storage):
    src = tmp_path / "src"
    for i in range(3):
        write(src / f"f{i}", os.urandom(100_000))
        env.ok("backup", src)
    wrap_storage(FlipOnPut)
    write(src / "new", os.urandom(100_000))
    r = env.run("backup", src, "--keep-last", "1")
    assert r.rc == EXIT_CORRUPT and "retention skipped" in r.err, r.err
    assert len(versions_of(env)) == 4


def test_no_verify_skips_the_verification(env, tmp_path, wrap_storage):
    src = tmp_path / "src"
    write(src / "a", os.urandom(300_000))
    wrap_storage(FlipOnPut)
    r = env.ok("backup", src, "--no-verify")
    assert "verified" not in r.out


# ---- repair ----------------------------------------------------------------------------------

def restore_every_version(env, tmp_path: Path, src: Path) -> list[dict]:
    out = []
    for i, version in enumerate(versions_of(env)):
        target = tmp_path / f"restored-{i}"
        env.ok("restore", version[:12], "--target", target)
        out.append(snapshot(restored_root(target, src)))
    return out


def test_repair_recreates_a_missing_index_object(env, backed):
    volume = backed.layout.volumes_of(b"small3")[0]
    original = (env.repo / index_object(volume)).read_bytes()
    (env.repo / index_object(volume)).unlink()
    r = env.ok("repair")
    assert f"re-created {index_object(volume)}" in r.out
    assert (env.repo / index_object(volume)).stat().st_size == len(original)
    env.ok("check", "--read-data")


def test_repair_recreates_a_damaged_index_object(env, backed):
    volume = backed.layout.volumes_of(b"small2")[0]
    flip(env.repo / index_object(volume), wire.HEADER_LEN + 2)
    assert f"re-created {index_object(volume)}" in env.ok("repair").out
    env.ok("check", "--read-data")


def test_repair_cannot_recreate_an_index_object_whose_volume_table_is_damaged(env, backed):
    volume = backed.layout.volumes_of(b"small2")[0]
    (env.repo / index_object(volume)).unlink()
    path = volume_path(env, volume)
    flip(path, path.stat().st_size - wire.FOOTER.size - 3)
    r = env.run("repair")
    assert r.rc == EXIT_CORRUPT and f"cannot re-create {index_object(volume)}" in r.err, r.err
    assert_damage_reported(r, index_object(volume))
    assert f"version {backed.version[:8]}" in r.err and "/small2" in r.err   # its blocks are in no index object


def test_repair_remove_damaged_leaves_versions_that_restore_exactly(env, backed, tmp_path):
    src = backed.src
    write(src / "later", os.urandom(100_000))
    env.ok("backup", src, "--volume-size", "32K")
    before = restore_every_version(env, tmp_path / "before", src)
    volume, pos = block_position(backed, b"small0")
    flip(volume_path(env, volume), pos)
    r = env.run("repair", "--read-data")
    assert r.rc == EXIT_CORRUPT and "small0" in r.err and len(versions_of(env)) == 2
    r = env.ok("repair", "--read-data", "--remove-damaged")
    removed = [line for line in r.out.splitlines() if line.startswith("removed from version")]
    assert len(removed) == 2 and all(line.endswith("/small0") for line in removed), r.out
    env.ok("check", "--read-data")
    after = restore_every_version(env, tmp_path / "after", src)
    for old, new in zip(sorted(before, key=len), sorted(after, key=len)):
        del old[b"small0"]
        old.pop(b"<hardlinks>"), new.pop(b"<hardlinks>")
        assert {k: v for k, v in old.items() if k != b""} == {k: v for k, v in new.items() if k != b""}
    env.ok("backup", src, "--volume-size", "32K")        # small0 is stored again, not deduplicated
    target = tmp_path / "again"
    env.ok("restore", "latest", "--target", target)
    assert (restored_root(target, src) / "small0").read_bytes() == (src / "small0").read_bytes()
    env.ok("check", "--read-data")


def test_repair_remove_damaged_drops_a_missing_volume(env, backed):
    volume = backed.layout.volumes_of(b"sub/nested")[0]
    volume_path(env, volume).unlink()
    r = env.ok("repair", "--remove-damaged")
    assert r.out.count("removed from version") == 1 and "sub/nested" in r.out
    assert not (env.repo / index_object(volume)).exists()
    env.ok("check", "--read-data")


def test_repair_rebuilds_a_missing_local_index_and_every_version_restores(env, backed, tmp_path):
    src = backed.src
    write(src / "later", os.urandom(100_000))
    env.ok("backup", src)
    before = restore_every_version(env, tmp_path / "before", src)
    forget_local_index(env)
    assert "2 versions" in env.ok("repair").out
    assert restore_every_version(env, tmp_path / "after", src) == before


def test_repair_while_another_connection_has_the_index_open_keeps_the_wal_and_does_not_wait(env, backed, tmp_path):
    """The rebuild leaves the WAL for a rollback journal only when it is the index's one user
    (a mount, say, may have it open): otherwise it rebuilds in the WAL, at once."""
    before = restore_every_version(env, tmp_path / "before", backed.src)
    other = apsw.Connection(str(index_path(env)))
    try:
        other.execute("SELECT count(*) FROM versions").fetchall()
        started = time.monotonic()
        env.ok("repair")
        assert time.monotonic() - started < 30
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        other.close()
    env.ok("repair")                                   # alone: through the rollback journal, back to the WAL
    db = apsw.Connection(str(index_path(env)))
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    assert restore_every_version(env, tmp_path / "after", backed.src) == before


# ---- on (simulated) B2 -----------------------------------------------------------------------

def test_check_and_repair_on_b2(b2_env, tmp_path, monkeypatch):  # noqa: F811
    src = tmp_path / "src"
    write(src / "a", os.urandom(300_000))
    write(src / "b", os.urandom(300_000))
    b2_env.ok("init")
    assert "verified" in b2_env.ok("backup", src, "--volume-size", "32K").out
    b2_env.ok("check", "--read-data")
    for var, value in b2_env.vars.items():
        monkeypatch.setenv(var, value)
    backend = open_backend(b2_env.vars["FSBACKUP_REPOSITORY"])
    (index_name, _), *_ = sorted(backend.list("index/"))
    backend.delete(index_name)
    assert_damage_reported(b2_env.run("check"), index_name)
    assert f"re-created {index_name}" in b2_env.ok("repair").out
    b2_env.ok("check", "--read-data")
    (volume, _), *_ = sorted(backend.list("data/"))
    backend.delete(volume)
    assert_damage_reported(b2_env.run("check", "--read-data"), volume)
    r = b2_env.ok("repair", "--remove-damaged")
    assert r.out.count("removed from version") == 1
    b2_env.ok("check", "--read-data")
