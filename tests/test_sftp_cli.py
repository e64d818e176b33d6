"""The command line against an sftp:// repository on a real OpenSSH server (tests/sftp_server.py):
init, backup, restore, check --read-data, forget and prune, a real FUSE mount, the --sftp-*
options, and the one-line errors of keys and host keys with their exit codes."""
from __future__ import annotations

import json
import os

import pytest
from conftest import Env, make_full_tree, pseudo_random, restored_root, snapshot, write
from sftp_server import environ, sftp_server, sshserver  # noqa: F401 - the fixture
from test_mount import FUSE_MISSING, Mount

from fsbackup import errors


@pytest.fixture
def sftp_env(tmp_path, sftp_server):
    env = Env(tmp_path)
    env.vars["FSBACKUP_REPOSITORY"] = sftp_server.url(sftp_server.storage() / "repo")
    env.vars.update(environ(sftp_server))
    return env


def test_backup_restore_check_prune_and_mount_through_sftp(sftp_env, tmp_path, no_leftover_age):
    source = make_full_tree(tmp_path / "src")
    big = pseudo_random(5 * 1024 * 1024 + 7, 5)
    write(source / "big.bin", big)
    sftp_env.ok("init")
    sftp_env.ok("backup", source, "--volume-size", "1M")
    (source / "big.bin").unlink()
    sftp_env.ok("backup", source, "--volume-size", "1M")
    sftp_env.ok("restore", "latest", "--target", tmp_path / "out")
    assert snapshot(restored_root(tmp_path / "out", source)) == snapshot(source)
    assert "big.bin" not in os.listdir(restored_root(tmp_path / "out", source))
    sftp_env.ok("check", "--read-data")
    sftp_env.ok("forget", "--keep-last", "1")
    pruned = json.loads(sftp_env.ok("--json", "prune", "--max-unused", "0").out)
    assert pruned["bytes_freed"] > 5 * 1024 * 1024 and pruned["volumes_deleted"] + pruned["volumes_repacked"] > 0
    sftp_env.ok("check", "--read-data")
    write(source / "big.bin", big)
    sftp_env.ok("backup", source)
    if FUSE_MISSING:
        pytest.skip(f"FUSE unavailable: {FUSE_MISSING}")
    mount = Mount(sftp_env, tmp_path / "mnt")
    try:
        inside = mount.version_dir() / str(source).lstrip("/")
        data = big
        with open(inside / "big.bin", "rb") as f:
            for offset in (0, 3 * 1024 * 1024 - 5, len(data) - 10):
                f.seek(offset)
                assert f.read(4096) == data[offset:offset + 4096]
        assert (inside / "big.bin").read_bytes() == data
    finally:
        assert mount.stop() == 0, mount.output()


def test_the_sftp_options_name_the_key_and_known_hosts(sftp_env, sftp_server, tmp_path):
    for var in environ(sftp_server):
        del sftp_env.vars[var]
    sftp_env.vars["HOME"] = str(tmp_path / "home")             # no ~/.ssh: only the options can help
    r = sftp_env.run("init")
    assert r.rc == errors.EXIT_PERMISSION and r.err.count("\n") == 1 and "is unknown" in r.err
    options = ["--sftp-identity", sftp_server.user_key, "--sftp-known-hosts", sftp_server.known_hosts]
    sftp_env.ok(*options, "init")
    sftp_env.ok("versions", *options)                          # after the command's name too
    assert "FSBACKUP_SFTP_IDENTITY" not in os.environ          # (handed over while opening only)


def test_sftp_errors_are_one_line_with_their_exit_codes(sftp_env, sftp_server, tmp_path):
    stranger = tmp_path / "stranger"
    sshserver.keygen(stranger, "a stranger")
    r = sftp_env.run("init", FSBACKUP_SFTP_IDENTITY=str(stranger))
    assert r.rc == errors.EXIT_PERMISSION and r.err.count("\n") == 1 and "refused user fsbackup-sftp" in r.err
    other = tmp_path / "other"
    sshserver.keygen(other, "another server")
    changed = tmp_path / "known_hosts"
    changed.write_text(f"[127.0.0.1]:{sftp_server.port} " + " ".join(other.with_suffix(".pub").read_text().split()[:2]))
    r = sftp_env.run("init", FSBACKUP_SFTP_KNOWN_HOSTS=str(changed))
    assert r.rc == errors.EXIT_PERMISSION and r.err.count("\n") == 1 and "HAS CHANGED" in r.err
    r = sftp_env.run("versions", FSBACKUP_REPOSITORY="sftp://nas")
    assert r.rc == errors.EXIT_USAGE and r.err.count("\n") == 1 and "ABSOLUTE/PATH" in r.err
    r = sftp_env.run("versions", FSBACKUP_REPOSITORY=sftp_server.url("/nonexistent-repository"))
    assert r.rc == errors.EXIT_NO_REPOSITORY and r.err.count("\n") == 1, r.err
