"""Deduplication: unchanged data is neither read nor stored again; edits add only nearby blocks."""
from __future__ import annotations

import json
import os

from conftest import pseudo_random, write


def data_objects(env) -> set[str]:
    return {str(p.relative_to(env.repo)) for p in (env.repo / "data").rglob("*") if p.is_file()}


def test_unchanged_rebackup_reads_nothing_and_uploads_no_volume(env, tmp_path):
    src = tmp_path / "src"
    for i in range(20):
        write(src / f"d{i % 3}" / f"f{i}", pseudo_random(50_000 + i, i))
    first = json.loads(env.ok("backup", src, "--json").out)
    assert first["files_new"] == 20 and first["volumes"] >= 1
    before = data_objects(env)
    second = json.loads(env.ok("backup", src, "--json").out)
    assert second["bytes_read"] == 0 and second["files_unchanged"] == 20
    assert second["volumes"] == 0 and second["bytes_added"] == 0
    assert data_objects(env) == before


def test_insert_in_the_middle_of_a_large_file_adds_only_a_few_blocks(env, tmp_path):
    src = tmp_path / "src"
    original = pseudo_random(64 << 20, 7)
    big = write(src / "big.bin", original)
    first = json.loads(env.ok("backup", src, "--json").out)
    assert first["blocks_new"] >= 40                      # ~1 MiB blocks
    mid = len(original) // 2
    big.write_bytes(original[:mid] + b"x" * 100 + original[mid:])
    second = json.loads(env.ok("backup", src, "--json").out)
    assert second["files_changed"] == 1
    assert 1 <= second["blocks_new"] <= 3, second
    assert second["bytes_new"] < 10 << 20


def test_two_identical_files_are_stored_once(env, tmp_path):
    src = tmp_path / "src"
    data = pseudo_random(5 << 20, 9)
    write(src / "a", data)
    write(src / "b" / "copy", data)
    r = json.loads(env.ok("backup", src, "--json").out)
    assert r["bytes_new"] == len(data)
    assert r["bytes_added"] < len(data) * 1.01 + 4096


def test_compressible_data_is_stored_compressed(env, tmp_path):
    src = tmp_path / "src"
    write(src / "log.txt", b"".join(b"2026-11-24 line %d: all is well\n" % i for i in range(200_000)))
    r = json.loads(env.ok("backup", src, "--json").out)
    assert r["bytes_added"] < r["bytes_new"] / 5


def test_compression_level_zero_stores_blocks_uncompressed_and_they_restore(env, tmp_path):
    src = tmp_path / "src"
    text = b"".join(b"2026-11-24 line %d: all is well\n" % i for i in range(200_000))
    write(src / "log.txt", text)
    r = json.loads(env.ok("backup", src, "--compression", "0", "--json").out)
    assert r["bytes_added"] > r["bytes_new"]
    env.ok("restore", "latest", "--target", tmp_path / "out")
    assert (tmp_path / "out" / src.relative_to("/") / "log.txt").read_bytes() == text
    bad = env.run("backup", src, "--compression", "20")
    assert bad.rc == 2 and "not a compression level" in bad.err


def test_backup_of_changed_metadata_only_reuses_blocks(env, tmp_path):
    src = tmp_path / "src"
    f = write(src / "a", pseudo_random(2 << 20, 4))
    env.ok("backup", src)
    os.utime(f, ns=(1, 2))
    r = json.loads(env.ok("backup", src, "--json").out)
    assert r["files_changed"] == 1 and r["blocks_new"] == 0 and r["volumes"] == 0


def test_volumes_stay_near_the_volume_size(env, tmp_path):
    src = tmp_path / "src"
    for i in range(12):
        write(src / f"f{i}", pseudo_random(1 << 20, 100 + i))
    env.ok("backup", src, "--volume-size", "4M")
    sizes = [p.stat().st_size for p in (env.repo / "data").rglob("*") if p.is_file()]
    assert len(sizes) >= 3
    assert max(sizes) <= (4 << 20) + (4 << 20) + 65536     # at most one block past the limit


def test_xattrs_of_unchanged_files_carry_over_and_a_changed_xattr_is_seen(env, tmp_path):
    src = tmp_path / "src"
    kept, edited = write(src / "kept", b"same"), write(src / "edited", b"same too")
    os.setxattr(kept, "user.k", b"1")
    os.setxattr(edited, "user.e", b"1")
    env.ok("backup", src)
    os.setxattr(edited, "user.e", b"2")                  # changes the ctime only
    second = json.loads(env.ok("backup", src, "--json").out)
    assert second["files_unchanged"] == 1 and second["files_changed"] == 1
    env.ok("restore", "latest", "--target", tmp_path / "out")
    out = tmp_path / "out" / src.relative_to("/")
    assert os.getxattr(out / "kept", "user.k") == b"1" and os.getxattr(out / "edited", "user.e") == b"2"
