"""Passphrases: `key passwd` replaces the key in use and rewrites nothing else; `key add`, `key list`
and `key remove` manage the others; the key in use cannot be removed."""
from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import restored_root, snapshot, write
from fsbackup import errors
from test_b2_cli import b2_env  # noqa: F401  (a fixture)


def listing(repo: Path, folder: str) -> dict[str, bytes]:
    root = repo / folder
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def key_ids(env, **extra) -> list[dict]:
    return json.loads(env.ok("key", "list", "--json", **extra).out)


def test_passwd_changes_the_passphrase_and_rewrites_no_data(env, tmp_path):
    src = tmp_path / "src"
    trees = {}
    for generation in range(2):
        write(src / "common", b"shared " * 1000)
        write(src / f"gen{generation}", os.urandom(200_000))
        env.ok("backup", src)
        trees[json.loads(env.ok("versions", "--json").out)[-1]["id"]] = snapshot(src)
    before = {folder: listing(env.repo, folder) for folder in ("data", "index", "versions")}
    [old_key] = key_ids(env)

    r = env.ok("key", "passwd", FSBACKUP_NEW_PASSWORD="a new passphrase")
    assert "changed the passphrase" in r.out

    r = env.run("versions")
    assert r.rc == errors.EXIT_WRONG_PASSPHRASE == 11
    new = {"FSBACKUP_PASSWORD": "a new passphrase"}
    [new_key] = key_ids(env, **new)
    assert new_key["in_use"] and new_key["id"] != old_key["id"]
    assert before == {folder: listing(env.repo, folder) for folder in ("data", "index", "versions")}
    for i, (version, tree) in enumerate(trees.items()):
        target = tmp_path / f"out{i}"
        env.ok("restore", version, "--target", target, **new)
        assert snapshot(restored_root(target, src)) == tree


def test_add_list_and_remove_keys(env, tmp_path):
    [first] = key_ids(env)
    assert first["in_use"] and first["kdf"]["name"] == "argon2id" and "salt" not in first["kdf"]
    assert first["host"] and first["created_ns"] > 0
    password_file = write(tmp_path / "second-passphrase", b"for the second person\n")
    env.ok("key", "add", "--new-password-file", password_file)

    keys = key_ids(env)
    assert len(keys) == 2 and [k["in_use"] for k in keys].count(True) == 1
    second = next(k for k in keys if not k["in_use"])
    as_second = {"FSBACKUP_PASSWORD": "for the second person"}
    assert next(k for k in key_ids(env, **as_second) if k["in_use"])["id"] == second["id"]

    lines = env.ok("key", "list").out.splitlines()
    assert len(lines) == 2 and sum(line.startswith("*") for line in lines) == 1
    assert any(line.startswith(f"* {first['id'][:8]}") for line in lines)

    r = env.run("key", "remove", first["id"][:8])
    assert r.rc == errors.EXIT_USAGE and "the key in use" in r.err
    assert env.run("key", "remove", "ffffffffff" if not first["id"].startswith("ff") else "0000000000").rc == \
        errors.EXIT_NOT_FOUND
    env.ok("key", "remove", first["id"][:8], **as_second)       # opened with the second: the first can go
    assert env.run("versions").rc == errors.EXIT_WRONG_PASSPHRASE
    assert [k["id"] for k in key_ids(env, **as_second)] == [second["id"]]
    r = env.run("key", "remove", second["id"][:8], **as_second)
    assert r.rc == errors.EXIT_USAGE


def test_a_new_passphrase_needs_a_source(env):
    r = env.run("key", "add")                    # no file, no variable, and stdin is not a terminal
    assert r.rc == errors.EXIT_USAGE and "FSBACKUP_NEW_PASSWORD" in r.err
    r = env.run("key", "passwd", FSBACKUP_NEW_PASSWORD="")
    assert r.rc == errors.EXIT_USAGE and "empty passphrase" in r.err
    assert len(key_ids(env)) == 1


def test_passwd_on_b2(b2_env, tmp_path):
    env = b2_env
    env.ok("init")
    env.ok("backup", write(tmp_path / "src" / "f", b"on b2").parent)
    env.ok("key", "passwd", FSBACKUP_NEW_PASSWORD="b2 passphrase")
    assert env.run("versions").rc == errors.EXIT_WRONG_PASSPHRASE
    assert len(key_ids(env, FSBACKUP_PASSWORD="b2 passphrase")) == 1
    env.ok("restore", "latest", "--target", tmp_path / "out", FSBACKUP_PASSWORD="b2 passphrase")
    assert (restored_root(tmp_path / "out", tmp_path / "src") / "f").read_bytes() == b"on b2"
