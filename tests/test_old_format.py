"""Repositories written in format 1 stay readable and writable: data/format1-repo was made by
fsbackup before format 2 (two backups of /home/user/documents on host example-host; passphrase
below). Format 1 objects are read as they are; what is written now is format 2, and the
repository keeps its seeded gear table, so that its cut points and deduplication do not change."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from conftest import Env, restored_root, snapshot, write

from fsbackup import errors
from fsbackup.backends import open_backend
from fsbackup.codec import wire
from fsbackup.repository import Repository

GOLDEN = Path(__file__).parent / "data" / "format1-repo"
PASSPHRASE = "format one passphrase"
SOURCE = "/home/user/documents"


def golden_files(second_version: bool) -> dict[str, bytes]:
    hello = b"hello from format 1\n" + (b"second version\n" if second_version else b"")
    data = b"".join(hashlib.sha256(i.to_bytes(4, "little")).digest() for i in range(640))
    return {"hello.txt": hello, "sub/data.bin": data}


@pytest.fixture
def old(tmp_path) -> Env:
    env = Env(tmp_path)
    shutil.copytree(GOLDEN, env.repo)
    env.vars["FSBACKUP_PASSWORD"] = PASSPHRASE
    return env


def headers(env: Env, folder: str) -> list[int]:
    return sorted(p.read_bytes()[4] for p in (env.repo / folder).rglob("*") if p.is_file())


def test_a_format_1_repository_reads_as_before(old, tmp_path):
    assert json.loads((old.repo / "config").read_bytes())["format"] == 1
    assert headers(old, "index") == headers(old, "versions") == headers(old, "data") == [1, 1]
    versions = json.loads(old.ok("versions", "--json").out)
    assert [v["paths"] for v in versions] == [[SOURCE], [SOURCE]]
    old.ok("check", "--read-data")
    for i, version in enumerate(versions):
        target = tmp_path / f"out{i}"
        old.ok("restore", version["id"], "--target", target)
        root = target / SOURCE.lstrip("/")
        assert {name: (root / name).read_bytes() for name in golden_files(i == 1)} == golden_files(i == 1)
        assert (root / "link").readlink() == Path("hello.txt")
    [key] = json.loads(old.ok("key", "list", "--json").out)
    assert key["version"] == 1 and key["host"] == "example-host"        # (in clear, as format 1 wrote it)
    assert "'fsbackup key passwd' replaces it" in old.ok("key", "list").out


def test_a_format_1_repository_keeps_its_seeded_gear_table(old):
    repo = Repository.open(open_backend(str(old.repo)), PASSPHRASE.encode(), str(old.tmp / "index.sqlite"))
    try:
        assert isinstance(repo.keys.chunker_seed, int)
    finally:
        repo.close()


def test_newer_objects_in_a_format_1_repository(old, tmp_path):
    """A backup, a repair and a passphrase change write format 2 objects beside format 1 ones; all read."""
    src = tmp_path / "src"
    write(src / "new", b"written in format 2 " * 5000)
    old.ok("backup", src)
    assert headers(old, "index") == [1, 1, 2] and headers(old, "versions") == [1, 1, 2]
    (old.repo / "index").joinpath(sorted(p.name for p in (old.repo / "index").iterdir())[0]).unlink()
    old.ok("repair")
    old.ok("key", "passwd", FSBACKUP_NEW_PASSWORD="format two passphrase")
    old.vars["FSBACKUP_PASSWORD"] = "format two passphrase"
    [key] = json.loads(old.ok("key", "list", "--json").out)
    assert key["version"] == 2 and key["host"]
    old.ok("check", "--read-data")
    versions = json.loads(old.ok("versions", "--json").out)
    assert len(versions) == 3
    old.ok("restore", versions[0]["id"], "--target", tmp_path / "first")
    assert (tmp_path / "first" / SOURCE.lstrip("/") / "hello.txt").read_bytes() == golden_files(False)["hello.txt"]
    old.ok("restore", "latest", "--target", tmp_path / "latest")
    assert snapshot(restored_root(tmp_path / "latest", src)) == snapshot(src)
    # The new key binds the format 1 config: changing it now is found too.
    config = old.repo / "config"
    config.write_text(json.dumps(dict(json.loads(config.read_bytes()), format=2), indent=1))
    r = old.run("versions")
    assert r.rc == errors.EXIT_CORRUPT and "config" in r.err


def test_an_unknown_format_is_refused(old):
    config = old.repo / "config"
    config.write_text(json.dumps(dict(json.loads(config.read_bytes()), format=wire.FORMAT_VERSION + 1)))
    r = old.run("versions")
    assert r.rc == errors.EXIT_NO_REPOSITORY and "upgrade fsbackup" in r.err
