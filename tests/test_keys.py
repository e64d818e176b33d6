"""Passphrases: `key passwd` replaces the key in use and rewrites nothing else; `key add`, `key list`
and `key remove` manage the others; the key in use cannot be removed. Key objects are read before
anything is authenticated: their KDF cost is bounded, and they bind the config stored in clear."""
from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TEST_PASSWORD, restored_root, snapshot, write
from doubles.memory import MemoryBackend
from test_b2_cli import b2_env  # noqa: F401  (a fixture)

from fsbackup import errors
from fsbackup.repository import Repository


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


# ---- what the storage can do to keys and config -----------------------------------------------

def key_object(env) -> Path:
    [path] = (env.repo / "keys").iterdir()
    return path


def limited_memory():
    """(for subprocesses) 3 GiB of address space: a KDF that asks for more fails instead of swapping."""
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


@pytest.mark.parametrize("cost", [{"memory_kib": 4 << 20}, {"memory_kib": 1 << 40},
                                  {"memory_kib": 65536, "iterations": 1000}, {"lanes": 1 << 20}])
def test_a_key_object_with_a_huge_kdf_cost_is_refused_without_deriving(env, cost):
    """The KDF parameters are read before anything is authenticated: a hostile storage must not
    make clients allocate gigabytes or run for minutes."""
    path = key_object(env)
    doc = json.loads(path.read_bytes())
    doc["kdf"].update(cost)
    path.write_text(json.dumps(doc))
    started = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "fsbackup", "versions"], env=env.environ(), capture_output=True,
                       text=True, timeout=60, preexec_fn=limited_memory)
    assert time.monotonic() - started < 20
    assert p.returncode == errors.EXIT_CORRUPT, p.stderr
    [line] = p.stderr.splitlines()
    assert path.name in line and "KDF cost" in line and "outside what fsbackup accepts" in line


@pytest.mark.parametrize("change", ["older format", "another field", "whitespace"])
def test_a_changed_config_is_detected(env, change):
    """The config is stored in clear; the key wraps its digest with the master secret."""
    config = env.repo / "config"
    doc = json.loads(config.read_bytes())
    if change == "older format":          # would make this client cut with format 1's weak gear table
        config.write_text(json.dumps(dict(doc, format=1), indent=1))
    elif change == "another field":
        config.write_text(json.dumps(dict(doc, chunker="public"), indent=1))
    else:
        config.write_bytes(config.read_bytes() + b"\n")
    r = env.run("versions")
    assert r.rc == errors.EXIT_CORRUPT, r.err
    assert "remote object config is corrupt" in r.err and "changed" in r.err


def test_a_changed_config_is_not_taken_for_a_wrong_passphrase(env):
    """With a second key under another passphrase, the key that opens still says the config changed."""
    env.ok("key", "add", FSBACKUP_NEW_PASSWORD="another passphrase")
    config = env.repo / "config"
    config.write_text(json.dumps(dict(json.loads(config.read_bytes()), format=1), indent=1))
    for passphrase in (TEST_PASSWORD, "another passphrase"):
        r = env.run("versions", FSBACKUP_PASSWORD=passphrase)
        assert r.rc == errors.EXIT_CORRUPT and "config" in r.err, r.err
    assert env.run("versions", FSBACKUP_PASSWORD="wrong").rc == errors.EXIT_WRONG_PASSPHRASE


def test_key_objects_show_no_host_or_time_in_clear(env):
    env.ok("key", "add", FSBACKUP_NEW_PASSWORD="another passphrase")
    for path in (env.repo / "keys").iterdir():
        doc = json.loads(path.read_bytes())
        assert set(doc) == {"version", "repository", "kdf", "nonce", "wrapped", "about"}
        assert b"host" not in base64.b64decode(doc["about"])          # sealed
        assert doc["version"] == 2
    rows = key_ids(env)
    assert all(row["host"] == socket.gethostname() and row["created_ns"] > 0 and row["version"] == 2 for row in rows)


def test_a_weak_kdf_is_refused_outside_tests(blank_env):
    """FSBACKUP_KDF_MEMORY_KIB lowers the cost only with FSBACKUP_WEAK_KDF_FOR_TESTS=1: a value
    left in an environment must not make a weak key."""
    env = blank_env
    for memory in ("1024", "65535", "0", "-5", "lots", str((1 << 20) + 1)):
        r = env.run("init", FSBACKUP_KDF_MEMORY_KIB=memory, FSBACKUP_WEAK_KDF_FOR_TESTS="")
        assert r.rc == errors.EXIT_USAGE, r.err
        [line] = r.err.splitlines()
        assert "FSBACKUP_KDF_MEMORY_KIB" in line and "FSBACKUP_WEAK_KDF_FOR_TESTS=1" in line
        assert not env.repo.exists() or not any(env.repo.iterdir())
    env.ok("init", FSBACKUP_KDF_MEMORY_KIB="131072", FSBACKUP_WEAK_KDF_FOR_TESTS="")   # raising it is fine
    [key] = key_ids(env)
    assert key["kdf"] == {"name": "argon2id", "memory_kib": 131072, "iterations": 3, "lanes": 4}
    r = env.run("key", "add", FSBACKUP_NEW_PASSWORD="x", FSBACKUP_WEAK_KDF_FOR_TESTS="0")
    assert r.rc == errors.EXIT_USAGE and len(key_ids(env)) == 1
    env.ok("key", "add", FSBACKUP_NEW_PASSWORD="x")           # the test flag is set (conftest.Env)
    assert sorted(k["kdf"]["memory_kib"] for k in key_ids(env)) == [1024, 131072]


class KeyDamagedOnItsWay(MemoryBackend):
    """Comes back with one character of the first key object's `wrapped` changed, once: the JSON
    still parses and the AEAD fails, as for a wrong passphrase."""

    def __init__(self):
        super().__init__()
        self.damage_next_key = False

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        data = super().get(name, offset, length)
        if name.startswith("keys/") and self.damage_next_key:
            self.damage_next_key = False
            at = data.index(b'"wrapped": "') + 20
            data = data[:at] + (b"B" if data[at:at + 1] == b"A" else b"A") + data[at + 1:]
        return data


def test_a_key_object_damaged_on_its_way_is_not_a_wrong_passphrase(monkeypatch, tmp_path):
    monkeypatch.setenv("FSBACKUP_KDF_MEMORY_KIB", "1024")
    monkeypatch.setenv("FSBACKUP_WEAK_KDF_FOR_TESTS", "1")
    backend = KeyDamagedOnItsWay()
    Repository.create(backend, b"secret", str(tmp_path / "a.sqlite")).close_catalog()
    backend.damage_next_key = True
    repo = Repository.open(backend, b"secret", str(tmp_path / "b.sqlite"))
    assert repo.key_name and not backend.damage_next_key
    with pytest.raises(errors.WrongPassphrase):
        Repository.open(backend, b"not the secret", str(tmp_path / "c.sqlite"))
