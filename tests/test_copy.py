"""fsbackup copy: versions copied from a repository with its own passphrase restore as they were,
only what the destination lacks is uploaded, a stopped copy leaves the destination whole and the
next one finishes it, and bad input is one line with its exit code."""
from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TEST_PASSWORD, Env, make_full_tree, pseudo_random, restored_root, snapshot, write
from doubles import b2sim
from doubles.faults import FaultyBackend

from fsbackup import errors
from fsbackup.errors import BackendError
from fsbackup.repository import Kind, Repository, open_storage

DEST_PASSWORD = "another passphrase entirely"


class Pair:
    """A source repository and a destination with another passphrase and its own local index.
    `dest.run("copy", ...)` copies from the source (FSBACKUP_FROM_PASSWORD is set)."""

    def __init__(self, tmp: Path, dest_url: str | None = None, dest_vars: dict | None = None):
        self.source = Env(tmp / "source")
        self.source.ok("init")
        self.dest = Env(tmp / "dest")
        self.dest.vars["FSBACKUP_PASSWORD"] = DEST_PASSWORD
        self.dest.vars["FSBACKUP_FROM_PASSWORD"] = TEST_PASSWORD
        if dest_url is not None:
            self.dest.vars["FSBACKUP_REPOSITORY"] = dest_url
        self.dest.vars.update(dest_vars or {})
        self.dest.ok("init")

    def copy(self, *args) -> dict:
        """Run copy with --json; its document."""
        return json.loads(self.dest.ok("copy", "--from-repo", self.source.repo, "--json", *args).out)

    def versions(self, env: Env) -> list[dict]:
        return json.loads(env.ok("versions", "--json").out)


@pytest.fixture
def pair(tmp_path) -> Pair:
    return Pair(tmp_path)


def stored(env: Env, kind: str = "") -> int:
    """Bytes of the repository's objects (of the folder `kind`), locks left out."""
    root = env.repo / kind
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and "locks" not in p.parts)


def head_of(env: Env, name: str, password: str) -> dict:
    repo = Repository.open(open_storage(str(env.repo)), password.encode(), str(env.tmp / "probe-index"))
    try:
        return repo.load_version(name)[0]
    finally:
        repo.close()


def small_tree(root: Path, files: int, seed: int, size: int = 20_000) -> Path:
    for i in range(files):
        write(root / f"d{i % 5}" / f"f{i:03d}", pseudo_random(size + i, seed * 1000 + i))
    return root


def test_copied_versions_restore_identically_with_their_metadata(pair, tmp_path):
    src = make_full_tree(tmp_path / "data")
    pair.source.ok("backup", src, "--tag", "first", "--description", "the first one")
    before = snapshot(src)
    (src / "text.txt").write_bytes(b"changed\n" * 5000)
    write(src / "new" / "big", pseudo_random(5 << 20, 9))
    pair.source.ok("backup", src, "--host", "elsewhere", "--tag", "second")
    after = snapshot(src)

    doc = pair.copy()
    source_versions = pair.versions(pair.source)
    dest_versions = pair.versions(pair.dest)
    assert [c["source"] for c in doc["versions_copied"]] == [v["id"] for v in source_versions]
    same = ("time_ns", "host", "paths", "tags", "file_count", "total_size", "description")
    assert [{k: v[k] for k in same} for v in dest_versions] == [{k: v[k] for k in same} for v in source_versions]
    assert [c["destination"] for c in doc["versions_copied"]] == [v["id"] for v in dest_versions]
    for copied, expected in zip(doc["versions_copied"], (before, after)):
        target = tmp_path / f"out-{copied['destination'][:8]}"
        pair.dest.ok("restore", copied["destination"], "--target", target)
        assert snapshot(restored_root(target, src)) == expected
        assert head_of(pair.dest, copied["destination"], DEST_PASSWORD)["copied_from"] == copied["source"]
    pair.dest.ok("check", "--read-data")


def test_a_second_copy_uploads_nothing_and_a_later_version_alone_is_copied(pair, tmp_path):
    src = small_tree(tmp_path / "data", 30, seed=1)
    pair.source.ok("backup", src)
    first = pair.copy()
    assert len(first["versions_copied"]) == 1 and first["bytes_uploaded"] > 0
    size = stored(pair.dest)
    again = pair.copy()
    assert again["versions_copied"] == [] and again["bytes_uploaded"] == 0 and again["versions_present"] == 1
    assert stored(pair.dest) == size

    write(src / "later", pseudo_random(50_000, 77))
    pair.source.ok("backup", src)
    newest = pair.versions(pair.source)[-1]["id"]
    later = pair.copy()
    assert [c["source"] for c in later["versions_copied"]] == [newest]
    assert later["blocks_uploaded"] == 1         # the one new file; the others are there already
    assert later["bytes_read"] == 50_000         # and the others' blocks are not even read again
    assert len(pair.versions(pair.dest)) == 2


def test_blocks_the_destination_holds_are_not_uploaded(pair, tmp_path):
    src = small_tree(tmp_path / "data", 40, seed=2)
    pair.source.ok("backup", src)
    pair.dest.ok("backup", src)          # the destination backed up the same files itself
    before = stored(pair.dest, "data")
    doc = pair.copy()
    data = sum(20_000 + i for i in range(40))
    assert doc["blocks_uploaded"] == 0 and doc["bytes_skipped"] == data
    assert doc["bytes_uploaded"] == 0 and stored(pair.dest, "data") == before
    target = tmp_path / "out"
    pair.dest.ok("restore", doc["versions_copied"][0]["destination"], "--target", target)
    assert snapshot(restored_root(target, src)) == snapshot(src)


def test_a_dry_run_counts_and_stores_nothing(pair, tmp_path):
    src = small_tree(tmp_path / "data", 10, seed=3)
    pair.source.ok("backup", src)
    size = stored(pair.dest)
    doc = pair.copy("--dry-run")
    assert doc["dry_run"] and len(doc["versions_copied"]) == 1 and doc["versions_copied"][0]["destination"] is None
    assert doc["blocks_uploaded"] == 10 and doc["bytes_new"] == sum(20_000 + i for i in range(10))
    assert stored(pair.dest) == size and pair.versions(pair.dest) == []


def test_filters_and_named_versions_choose_what_is_copied(pair, tmp_path):
    src = small_tree(tmp_path / "data", 3, seed=4)
    for host, tag in (("alpha", "daily"), ("beta", "daily"), ("alpha", "weekly")):
        pair.source.ok("backup", src, "--host", host, "--tag", tag)
    ids = [v["id"] for v in pair.versions(pair.source)]
    assert [c["source"] for c in pair.copy("--host", "beta")["versions_copied"]] == [ids[1]]
    assert [c["source"] for c in pair.copy("--tag", "weekly")["versions_copied"]] == [ids[2]]
    assert [c["source"] for c in pair.copy(ids[0][:10])["versions_copied"]] == [ids[0]]
    assert pair.copy()["versions_copied"] == []
    assert sorted((v["host"], v["tags"][0]) for v in pair.versions(pair.dest)) == \
        [("alpha", "daily"), ("alpha", "weekly"), ("beta", "daily")]


class FailingPut(FaultyBackend):
    """Fails the `nth` put of an object whose name starts with `prefix`, as a permanent error: the
    copy stops there, as if killed before that upload."""

    def __init__(self, inner, prefix: str, nth: int):
        super().__init__(inner)
        self.prefix, self.left = prefix, nth

    def put(self, name: str, data: bytes) -> None:
        if name.startswith(self.prefix):
            with self._lock:
                self.left -= 1
                fail = self.left == 0
            if fail:
                raise BackendError(f"simulated failure on put {name}")
        super().put(name, data)


@pytest.mark.parametrize("prefix, nth", [("data/", 4), ("versions/", 1), ("versions/", 2)])
def test_a_copy_stopped_midway_leaves_the_destination_whole_and_the_next_one_finishes(pair, tmp_path, wrap_storage,
                                                                                      prefix, nth):
    src = small_tree(tmp_path / "data", 60, seed=5, size=60_000)    # about 3.6 MB
    pair.source.ok("backup", src)
    write(src / "more", pseudo_random(300_000, 55))
    pair.source.ok("backup", src, "--tag", "again")
    reference = Pair(tmp_path / "reference")
    reference.source = pair.source
    full = reference.copy("--volume-size", "256K")["bytes_uploaded"]

    dest_root = str(pair.dest.repo)
    undo = wrap_storage(lambda plain: FailingPut(plain, prefix, nth) if plain.url.rstrip("/") == dest_root else plain)
    r = pair.dest.run("copy", "--from-repo", pair.source.repo, "--volume-size", "256K")
    undo()
    assert r.rc == errors.EXIT_BACKEND and r.err.count("\n") == 1 and "simulated failure" in r.err
    assert len(pair.versions(pair.dest)) == nth - 1 if prefix == "versions/" else not pair.versions(pair.dest)
    pair.dest.ok("check", "--read-data")
    partial = stored(pair.dest, "data") + stored(pair.dest, "index")
    assert partial > 0

    doc = pair.copy("--volume-size", "256K")
    assert len(doc["versions_copied"]) == (3 - nth if prefix == "versions/" else 2)
    assert doc["bytes_uploaded"] <= full - partial + (256 << 10)     # (volumes are packed anew)
    if (prefix, nth) == ("versions/", 2):
        assert doc["bytes_uploaded"] == 0         # every block was stored before the version
    pair.dest.ok("check", "--read-data")
    target = tmp_path / "out"
    pair.dest.ok("restore", "latest", "--target", target)
    assert snapshot(restored_root(target, src)) == snapshot(src)


def test_bad_input_is_one_line_with_its_exit_code(pair, tmp_path):
    src = small_tree(tmp_path / "data", 2, seed=6)
    pair.source.ok("backup", src)
    dest, source_repo = pair.dest, pair.source.repo

    def fails(code: int, words: str, *args, **env) -> None:
        r = dest.run("copy", *args, **env)
        assert r.rc == code and r.err.count("\n") == 1 and words in r.err, (r.rc, r.err)

    fails(errors.EXIT_WRONG_PASSPHRASE, "wrong passphrase for the source repository", "--from-repo", source_repo,
          FSBACKUP_FROM_PASSWORD="not it")
    fails(errors.EXIT_USAGE, "is the destination repository itself", "--from-repo", dest.repo,
          FSBACKUP_FROM_PASSWORD=DEST_PASSWORD)
    fails(errors.EXIT_NOT_FOUND, "no version with id", "--from-repo", source_repo, "abcdef12")
    fails(errors.EXIT_NO_REPOSITORY, "no repository at", "--from-repo", tmp_path / "nothing")
    fails(errors.EXIT_USAGE, "the following arguments are required: --from-repo")
    password_file = write(tmp_path / "pw", TEST_PASSWORD.encode() + b"\n")
    r = dest.run("copy", "--from-repo", source_repo, "--from-password-file", password_file, "--json",
                 FSBACKUP_FROM_PASSWORD="ignored: the file comes first")
    assert r.rc == 0 and len(json.loads(r.out)["versions_copied"]) == 1
    r = dest.run_process("copy", "--from-repo", source_repo, FSBACKUP_FROM_PASSWORD="")
    assert r.rc == errors.EXIT_WRONG_PASSPHRASE


def test_the_source_passphrase_from_a_command_or_nowhere(pair, tmp_path):
    src = small_tree(tmp_path / "data", 2, seed=7)
    pair.source.ok("backup", src)
    environ = {k: v for k, v in pair.dest.vars.items() if k != "FSBACKUP_FROM_PASSWORD"}
    pair.dest.vars = environ
    r = pair.dest.run_process("copy", "--from-repo", pair.source.repo)
    assert r.rc == errors.EXIT_USAGE and "no passphrase for the source repository" in r.err
    r = pair.dest.run_process("copy", "--from-repo", pair.source.repo, "--from-password-command", "exit 3")
    assert r.rc == errors.EXIT_USAGE and "--from-password-command failed with exit code 3" in r.err
    r = pair.dest.run_process("copy", "--from-repo", pair.source.repo, "--from-password-command",
                              f"printf '%s\\n' '{TEST_PASSWORD}'")
    assert r.rc == 0, r.err
    assert len(pair.versions(pair.dest)) == 1


B2_BUCKET = "fsbackup-copy"


def test_copy_into_b2(tmp_path, monkeypatch):
    sim = b2sim.use_simulator()
    try:
        sim.create_bucket(B2_BUCKET)
        pair = Pair(tmp_path, dest_url=f"b2://{B2_BUCKET}/repo-{secrets.token_hex(6)}", dest_vars=sim.environ())
        src = make_full_tree(tmp_path / "data")
        pair.source.ok("backup", src)
        doc = pair.copy()
        assert len(doc["versions_copied"]) == 1 and doc["bytes_uploaded"] > 0
        assert pair.copy()["bytes_uploaded"] == 0
        target = tmp_path / "out"
        pair.dest.ok("restore", "latest", "--target", target)
        assert snapshot(restored_root(target, src)) == snapshot(src)
        pair.dest.ok("check", "--read-data")
        for key, value in sim.environ().items():
            monkeypatch.setenv(key, value)
        dest = Repository.open(open_storage(pair.dest.vars["FSBACKUP_REPOSITORY"]), DEST_PASSWORD.encode(),
                               str(tmp_path / "probe-index"))
        try:
            assert len(dest.list_objects(Kind.VERSION)) == 1
        finally:
            dest.close()
    finally:
        b2sim.stop_simulator()


def test_copy_leaves_the_source_untouched(pair, tmp_path):
    src = small_tree(tmp_path / "data", 5, seed=8)
    pair.source.ok("backup", src)
    listing = sorted((p.relative_to(pair.source.repo), p.stat().st_mtime_ns)
                     for p in pair.source.repo.rglob("*") if p.is_file())
    pair.copy()
    assert sorted((p.relative_to(pair.source.repo), p.stat().st_mtime_ns)
                  for p in pair.source.repo.rglob("*") if p.is_file()) == listing
    assert not list(pair.source.repo.glob("locks/*"))


def test_data_the_destination_lost_is_copied_again(pair, tmp_path):
    """A later copy takes unchanged files' contents from the earlier copy only while the
    destination has lost nothing: after a loss it reads them again and stores what is missing."""
    src = small_tree(tmp_path / "data", 20, seed=9)
    pair.source.ok("backup", src)
    pair.copy()
    for folder in ("data", "index"):
        for obj in (pair.dest.repo / folder).rglob("*"):
            if obj.is_file():
                obj.unlink()             # every volume lost
    write(src / "later", pseudo_random(10_000, 99))
    pair.source.ok("backup", src)
    doc = pair.copy("--accept-missing")
    assert len(doc["versions_copied"]) == 1 and doc["blocks_uploaded"] == 21
    target = tmp_path / "out"
    pair.dest.ok("restore", doc["versions_copied"][0]["destination"], "--target", target)
    assert snapshot(restored_root(target, src)) == snapshot(src)


# Runs `fsbackup.cli.main(argv[3:])` with LocalBackend.put wrapped to SIGKILL the process right
# after the k-th put (argv[1]) returned; every put's name is appended to the file argv[2].
KILL_AFTER_PUT = r"""
import os, signal, sys, threading
from fsbackup.backends import local

k, log_path, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
real_put, lock, calls = local.LocalBackend.put, threading.Lock(), [0]

def put(self, name, data):
    real_put(self, name, data)
    with lock:
        calls[0] += 1
        with open(log_path, "a") as log:
            log.write(name + "\n")
        if calls[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)

local.LocalBackend.put = put
from fsbackup.cli import main
sys.exit(main(argv))
"""


def only_leftover_volumes(r) -> bool:
    """Whether `check` found nothing but volumes whose index object a stopped run did not store."""
    problems = [ln for ln in r.err.splitlines() if ln.startswith("damaged:")]
    return r.rc == 0 or (r.rc == errors.EXIT_CORRUPT and problems
                         and all("index object is missing" in ln for ln in problems))


def test_copies_killed_after_their_kth_upload_leave_whole_versions_and_the_next_one_finishes(pair, tmp_path):
    """Each copy is killed (SIGKILL) right after its k-th upload, for k = 1, 2, ... (each resuming
    the one before), until one finishes with fewer uploads."""
    src = small_tree(tmp_path / "data", 8, seed=10, size=40_000)
    pair.source.ok("backup", src)
    first = snapshot(src)
    write(src / "more", pseudo_random(90_000, 100))
    pair.source.ok("backup", src)
    script = tmp_path / "kill_after_put.py"
    script.write_text(KILL_AFTER_PUT)
    log = tmp_path / "puts"
    k = 0
    while True:
        k += 1
        log.write_text("")
        p = subprocess.run([sys.executable, script, str(k), log, "copy", "--from-repo", pair.source.repo,
                            "--volume-size", "64K"], env=pair.dest.environ(), capture_output=True, text=True,
                           cwd=Path(__file__).parent)
        if p.returncode == 0:
            break                             # fewer than k puts: the copy is done
        assert p.returncode == -9, p.stderr
        assert only_leftover_volumes(pair.dest.run("check", "--read-data"))
        for v in pair.versions(pair.dest):    # a version stored is whole
            target = tmp_path / f"out-{k}-{v['id'][:8]}"
            pair.dest.ok("restore", v["id"], "--target", target)
            assert snapshot(restored_root(target, src)) in (first, snapshot(src))
    assert k > 4                              # (each run resumes the one before: k puts more each time)
    assert len(pair.versions(pair.dest)) == 2 and pair.copy()["versions_copied"] == []
    pair.dest.ok("restore", "latest", "--target", tmp_path / "out")
    assert snapshot(restored_root(tmp_path / "out", src)) == snapshot(src)
    assert only_leftover_volumes(pair.dest.run("check", "--read-data"))


def test_a_copied_version_object_is_read_from_the_source_once_for_its_files_and_once_to_store_it(pair, tmp_path,
                                                                                                wrap_storage):
    src = small_tree(tmp_path / "data", 3, seed=11)
    pair.source.ok("backup", src)
    pair.copy()
    pair.source.ok("backup", src, "--tag", "new")
    newest = "versions/" + pair.versions(pair.source)[-1]["id"]
    reads: list[str] = []

    class Counting(FaultyBackend):
        def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
            reads.append(name)
            return super().get(name, offset, length)
    source_root = str(pair.source.repo)
    wrap_storage(lambda plain: Counting(plain) if plain.url.rstrip("/") == source_root else plain)
    assert len(pair.copy()["versions_copied"]) == 1
    assert reads.count(newest) == 3           # the sync of the source's index records it, then the copy


def test_a_copy_runs_beside_a_backup_waits_for_a_prune_and_takes_no_lock_on_its_source(pair, tmp_path):
    from fsbackup.repository.locks import repository_lock
    src = small_tree(tmp_path / "data", 3, seed=12)
    pair.source.ok("backup", src)
    pair.source.ok("backup", src, "--tag", "later")

    def opened(env: Env, password: str) -> Repository:
        return Repository.open(open_storage(str(env.repo)), password.encode(), str(env.tmp / "probe-index"))
    dest, source = opened(pair.dest, DEST_PASSWORD), opened(pair.source, TEST_PASSWORD)
    try:
        with repository_lock(dest, "exclusive", "prune"):
            r = pair.dest.run("copy", "--from-repo", pair.source.repo, "--no-wait")
            assert r.rc == errors.EXIT_LOCKED and r.err.count("\n") == 1 and "prune" in r.err
            assert pair.versions(pair.dest) == []
        with repository_lock(dest, "append", "backup"):
            assert len(pair.copy("--no-wait", "--tag", "later")["versions_copied"]) == 1
        with repository_lock(source, "exclusive", "prune"):
            assert len(pair.copy("--no-wait")["versions_copied"]) == 1
            assert len(source.list_objects(Kind.LOCK)) == 1         # the prune's alone
        assert not dest.list_objects(Kind.LOCK)
    finally:
        dest.close()
        source.close()
