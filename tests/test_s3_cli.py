"""The command line against an s3:// repository on a real S3 server process (tests/s3server.py):
every command a user runs, the S3 options, the errors a user meets, and a real FUSE mount."""
from __future__ import annotations

import json
import subprocess

import pytest
from conftest import Env, make_full_tree, pseudo_random, restored_root, snapshot, uploads_in_flight_seen, write
from s3server import s3_bucket, s3_server  # noqa: F401 - fixtures
from test_mount import FUSE_MISSING, Mount

from fsbackup import errors
from fsbackup.backends import retry


@pytest.fixture
def s3_env(s3_bucket, tmp_path):
    """An Env on a fresh bucket, where the store is named by the S3 options, not variables: `opts`."""
    env = Env(tmp_path)      # (whose in-process runs see only its variables)
    env.vars.update(s3_bucket.server.client_environ())
    env.vars.update(FSBACKUP_REPOSITORY=s3_bucket.url(), FSBACKUP_S3_ENDPOINT="", FSBACKUP_S3_PATH_STYLE="")
    env.opts = ["--s3-endpoint", s3_bucket.server.endpoint, "--s3-path-style"]
    env.bucket = s3_bucket
    return env


def test_backup_restore_check_and_prune_through_s3(s3_env, tmp_path, monkeypatch):
    seen = uploads_in_flight_seen(monkeypatch)
    env, opts = s3_env, s3_env.opts
    source = make_full_tree(tmp_path / "src")
    env.ok(*opts, "init")
    assert "repo/config" in env.bucket.keys()
    env.ok(*opts, "backup", source, "--volume-size", "1M")
    write(source / "gone.bin", pseudo_random(3 << 20, 8))    # in volumes of its own, unused once forgotten
    env.ok(*opts, "backup", source, "--volume-size", "1M")
    (source / "gone.bin").unlink()
    write(source / "new.bin", pseudo_random(2 << 20, 9))
    (source / "random.bin").unlink()
    (source / "hardlink-to-random").unlink()
    env.ok("backup", source, "--volume-size", "1M", *opts, "--connections", "3")  # options after the command too
    assert seen == [8, 8, 3]                 # S3's default, then --connections
    env.ok(*opts, "restore", "latest", "--target", tmp_path / "out")
    assert snapshot(restored_root(tmp_path / "out", source)) == snapshot(source)
    env.ok(*opts, "check", "--read-data")
    env.ok(*opts, "forget", "--keep-last", "1")
    # Prune leaves unused volumes younger than the leftover age (half an hour), by their S3
    # LastModified, and deletes them once they are older (here: at once).
    assert json.loads(env.ok(*opts, "--json", "prune", "--max-unused", "0").out)["too_young"] > 0
    before = env.bucket.keys()
    r = env.ok(*opts, "--json", "prune", "--max-unused", "0", FSBACKUP_LEFTOVER_AGE_FOR_TESTS="0")
    assert json.loads(r.out)["too_young"] == 0
    assert len(env.bucket.keys()) < len(before)   # the forgotten versions' data is gone from the bucket
    env.ok(*opts, "check", "--read-data")
    env.ok(*opts, "restore", "latest", "--target", tmp_path / "again")
    assert snapshot(restored_root(tmp_path / "again", source)) == snapshot(source)


def test_s3_variables_stand_for_the_options(s3_env, tmp_path):
    env = s3_env
    endpoint = env.bucket.server.endpoint
    env.ok("init", FSBACKUP_S3_ENDPOINT=endpoint, FSBACKUP_S3_PATH_STYLE="1")
    write(tmp_path / "src" / "a", b"data")
    env.ok("backup", tmp_path / "src", FSBACKUP_S3_ENDPOINT=endpoint, FSBACKUP_S3_PATH_STYLE="1")
    # An option overrides its variable.
    env.ok("--s3-endpoint", endpoint, "versions", FSBACKUP_S3_ENDPOINT="http://127.0.0.1:9", FSBACKUP_S3_PATH_STYLE="1")


def test_s3_errors_are_one_line_with_their_exit_codes(s3_env, monkeypatch):
    env, opts = s3_env, s3_env.opts
    env.ok(*opts, "init")
    r = env.run(*opts, "versions", AWS_SECRET_ACCESS_KEY="")
    assert r.rc == errors.EXIT_USAGE and r.err.count("\n") == 1
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in r.err
    r = env.run(*opts, "versions", FSBACKUP_REPOSITORY="s3://fsbackup-nothing-here/x")
    assert r.rc == errors.EXIT_NO_REPOSITORY and r.err.count("\n") == 1 and "no S3 bucket named" in r.err
    r = env.run("--s3-endpoint", "127.0.0.1:9000", "versions")
    assert r.rc == errors.EXIT_USAGE and r.err.count("\n") == 1 and "--s3-endpoint" in r.err
    r = env.run(*opts, "versions", FSBACKUP_REPOSITORY="s3://x")
    assert r.rc == errors.EXIT_USAGE and r.err.count("\n") == 1 and "s3://BUCKET/PREFIX" in r.err
    # A store that does not answer: retried (here for a second), then one line and exit 17.
    monkeypatch.setattr(retry, "BACKUP_RETRY_SECONDS", 1.0)
    r = env.run("--s3-endpoint", "http://127.0.0.1:9", "--s3-path-style", "versions")
    *retried, last = r.err.splitlines()
    assert r.rc == errors.EXIT_BACKEND and last.startswith("fsbackup: error: S3 ") and "gave up after" in last
    assert retried and all(line.startswith("warning: storage error during") for line in retried)


@pytest.mark.skipif(bool(FUSE_MISSING), reason=f"FUSE unavailable: {FUSE_MISSING}")
def test_mount_of_an_s3_repository_serves_every_byte(s3_env, tmp_path):
    env, opts = s3_env, s3_env.opts
    src = make_full_tree(tmp_path / "src")
    big = write(src / "big.bin", pseudo_random(9 * 1024 * 1024 + 5, 3))   # several blocks and volumes
    env.ok(*opts, "init")
    env.ok(*opts, "backup", "--volume-size", "2M", src)
    m = Mount(env, tmp_path / "mnt", *opts)
    try:
        inside = m.version_dir() / str(src).lstrip("/")
        assert subprocess.run(["cat", str(inside / "big.bin")], capture_output=True, check=True).stdout == \
            big.read_bytes()
        with open(inside / "big.bin", "rb") as f:        # range reads of single blocks
            for offset in (0, 4 * 1024 * 1024 - 3, 9 * 1024 * 1024):
                f.seek(offset)
                assert f.read(4096) == big.read_bytes()[offset:offset + 4096]
        out = tmp_path / "copy"
        subprocess.run(["cp", "-a", "--preserve=all", str(inside), str(out)], check=True)
        assert snapshot(out, with_atime=False) == snapshot(src, with_atime=False)
    finally:
        assert m.stop() == 0, m.output()


@pytest.mark.skipif(bool(FUSE_MISSING), reason=f"FUSE unavailable: {FUSE_MISSING}")
def test_daemon_mount_of_an_s3_repository(s3_env, tmp_path):
    """--daemon forks once the repository is open: the child reads S3 with a client of its own,
    from the store the options named."""
    env, opts = s3_env, s3_env.opts
    write(tmp_path / "src" / "a", pseudo_random(300_000, 5))
    env.ok(*opts, "init")
    env.ok(*opts, "backup", tmp_path / "src")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = env.run_process(*opts, "mount", mnt, "--daemon")
    try:
        assert r.rc == 0, r.err
        assert (mnt / "latest" / str(tmp_path / "src" / "a").lstrip("/")).read_bytes() == pseudo_random(300_000, 5)
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)])


def test_the_s3_options_set_the_variables_the_backend_reads():
    from fsbackup.backends import s3
    from fsbackup.cli.repo import BACKEND_OPTION_VARIABLES
    assert {k: v for k, v in BACKEND_OPTION_VARIABLES.items() if k.startswith("s3_")} == \
        {"s3_endpoint": s3.ENV_ENDPOINT, "s3_region": s3.ENV_REGION, "s3_path_style": s3.ENV_PATH_STYLE}
