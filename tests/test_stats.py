"""`fsbackup stats`: files, folders, logical size, unique and stored bytes and the ratios, checked
against numbers worked out by hand for a small repository with known duplicates and compressible
data (stored sizes read from the repository's own index objects)."""
from __future__ import annotations

import json
import os

from conftest import pseudo_random, write
from test_corruption import read_layout

from fsbackup.errors import EXIT_NOT_FOUND

# Each file is below the smallest block cut from a large file: one block each.
A = pseudo_random(100_000, 1)
TEXT = b"the same line of text, again and again\n" * 5_000        # 195,000 bytes, compressible
C = pseudo_random(50_000, 2)
D = pseudo_random(30_000, 3)


def stats(env, *args) -> dict:
    return json.loads(env.ok("stats", "--json", *args).out)


def test_numbers_match_the_ones_worked_out_by_hand(env, tmp_path):
    src = tmp_path / "src"
    write(src / "a.bin", A)
    write(src / "copy-of-a.bin", A)                   # the same block: deduplicated
    os.link(src / "a.bin", src / "hardlink-to-a")     # a second name: counted in the logical size
    write(src / "text.txt", TEXT)
    write(src / "sub" / "c.bin", C)
    (src / "empty dir").mkdir()
    env.ok("backup", src)
    (first,) = os.listdir(env.repo / "versions")
    write(src / "sub" / "d.bin", D)
    env.ok("backup", src)
    (second,) = set(os.listdir(env.repo / "versions")) - {first}
    layout = read_layout(env, src, second)
    stored = {rel: layout.blocks[ids[0]][2] for rel, ids in layout.files.items()}
    folders = len(src.parts) - 1 + 2                 # src and the folders above it, sub, empty dir

    doc = stats(env)
    v1, v2 = doc["versions"]
    assert (v1["id"], v2["id"]) == (first, second)
    logical1 = 3 * len(A) + len(TEXT) + len(C)
    unique1 = len(A) + len(TEXT) + len(C)
    stored1 = stored[b"a.bin"] + stored[b"text.txt"] + stored[b"sub/c.bin"]
    assert v1 == {**v1, "files": 5, "folders": folders, "logical_bytes": logical1, "blocks": 3,
                  "unique_bytes": unique1, "stored_bytes": stored1,
                  "dedup_ratio": round(logical1 / unique1, 3), "compression_ratio": round(unique1 / stored1, 3)}
    assert stored[b"text.txt"] < len(TEXT) // 20     # compressed
    assert stored[b"a.bin"] > len(A)                 # random data does not compress: stored as is, plus a tag
    logical2, unique2, stored2 = logical1 + len(D), unique1 + len(D), stored1 + stored[b"sub/d.bin"]
    assert (v2["files"], v2["logical_bytes"], v2["unique_bytes"], v2["stored_bytes"], v2["blocks"]) == \
        (6, logical2, unique2, stored2, 4)
    # Together, a block both versions use counts once.
    assert doc["chosen"] == {**doc["chosen"], "versions": 2, "files": 11, "logical_bytes": logical1 + logical2,
                             "unique_bytes": unique2, "stored_bytes": stored2, "blocks": 4}
    volumes = [p for p in (env.repo / "data").rglob("*") if p.is_file()]
    assert doc["repository"] == {
        "versions": 2, "blocks": 4, "plain_bytes": unique2, "stored_bytes": stored2,
        "volumes": len(volumes), "volume_bytes": sum(p.stat().st_size for p in volumes),
        "logical_bytes": logical1 + logical2, "dedup_ratio": round((logical1 + logical2) / unique2, 3),
        "compression_ratio": round(unique2 / stored2, 3)}

    # One version, by id prefix; the text form says the same numbers.
    assert stats(env, first[:8])["versions"] == [v1]
    text = env.ok("stats", first[:8]).out
    assert "5 files" in text and "repository: 2 versions, 4 blocks" in text, text


def test_filters_choose_the_versions(env, tmp_path):
    src = tmp_path / "src"
    write(src / "a.bin", A)
    env.ok("backup", src, "--tag", "daily")
    write(src / "c.bin", C)
    env.ok("backup", src)
    doc = stats(env, "--tag", "daily")
    assert [v["files"] for v in doc["versions"]] == [1] and doc["chosen"]["unique_bytes"] == len(A)
    assert doc["repository"]["versions"] == 2
    assert stats(env, "--host", "elsewhere")["versions"] == []
    r = env.run("stats", "--host", "elsewhere", "latest")
    assert r.rc == EXIT_NOT_FOUND and len(r.err.splitlines()) == 1, r.err


def test_an_empty_repository_has_no_ratios(env):
    doc = stats(env)
    assert doc["versions"] == [] and doc["repository"]["dedup_ratio"] is None
    assert doc["repository"]["blocks"] == 0


def test_versions_together_are_not_bounded_by_sqlite_s_count_of_parameters(env, tmp_path):
    """A repository of hourly backups kept for years holds more versions than one statement may
    take parameters (32766): the chosen versions are not passed as parameters. Shown here with
    the limit lowered to 2 for three versions."""
    import apsw

    from fsbackup.catalog import Catalog
    from fsbackup.catalog.stats import version_stats
    from fsbackup.catalog.versions import list_versions
    src = tmp_path / "src"
    for i, data in enumerate((A, C, D)):
        write(src / f"{i}.bin", data)
        env.ok("backup", src)
    expected = stats(env)["chosen"]
    (index,) = env.cache.rglob("index.sqlite")
    catalog = Catalog(str(index))
    try:
        catalog.db.limit(apsw.SQLITE_LIMIT_VARIABLE_NUMBER, 2)
        together = version_stats(catalog, [v.id for v in list_versions(catalog)])
    finally:
        catalog.close()
    assert (together.files, together.blocks, together.unique_bytes) == \
        (expected["files"], expected["blocks"], expected["unique_bytes"]) == (6, 3, len(A) + len(C) + len(D))
