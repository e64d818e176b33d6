"""Versions gone without a forget are noticed and reported; forgotten ones put back are versions again;
forgets made on another machine are followed without a word (each leaves a forgotten/ record)."""
from __future__ import annotations

import json
import shutil

import pytest
from conftest import pseudo_random, write

from fsbackup.errors import EXIT_CORRUPT


@pytest.fixture
def three_versions(env, tmp_path):
    src = tmp_path / "src"
    for i in range(3):
        write(src / "f", pseudo_random(20_000, i))
        env.ok("backup", src)
    return [v["id"] for v in json.loads(env.ok("versions", "--json").out)]


def other_machine(env, tmp_path):
    cache = str(tmp_path / "other-machine")
    return (lambda *a: env.ok(*a, XDG_CACHE_HOME=cache)), (lambda *a: env.run(*a, XDG_CACHE_HOME=cache))


def test_a_version_deleted_behind_fsbackups_back_is_reported_until_accepted(env, three_versions):
    newest = three_versions[-1]
    (env.repo / "versions" / newest).unlink()                       # not through forget
    r = env.ok("versions", "--json")
    assert [v["id"] for v in json.loads(r.out)] == three_versions[:-1]
    assert f"version {newest[:8]} is gone from the repository without having been forgotten" in r.err
    r = env.run("check")
    assert r.rc == EXIT_CORRUPT and f"versions/{newest}" in r.err and "without having been forgotten" in r.err
    r = env.run("repair")                                           # remembered across a rebuild
    assert r.rc == EXIT_CORRUPT and f"versions/{newest}" in r.err, r.err
    env.ok("check", "--accept-missing")                             # the user says it was meant
    env.ok("check")


def test_prune_keeps_the_data_of_a_version_gone_without_a_forget_until_accepted(env, tmp_path, three_versions):
    """A version hidden or deleted by someone who should not have (a B2 key without deleteFiles may
    hide files) must not lose its data to the trusted machine's next prune: put back, it restores."""
    oldest = three_versions[0]
    hidden = tmp_path / "hidden"
    (env.repo / "versions" / oldest).rename(hidden)
    volumes = {p.name for p in (env.repo / "data").rglob("*") if p.is_file()}
    r = env.run("prune", "--max-unused", "0", FSBACKUP_LEFTOVER_AGE_FOR_TESTS="0")
    assert r.rc == EXIT_CORRUPT and f"version {oldest[:8]} is gone from the repository" in r.err, r.err
    assert {p.name for p in (env.repo / "data").rglob("*") if p.is_file()} == volumes
    hidden.rename(env.repo / "versions" / oldest)                   # unhidden
    env.ok("restore", oldest, "--target", tmp_path / "out")
    assert (tmp_path / "out" / str(tmp_path / "src" / "f").lstrip("/")).read_bytes() == pseudo_random(20_000, 0)
    (env.repo / "versions" / oldest).unlink()                       # gone for good: the user accepts it
    env.ok("prune", "--max-unused", "0", "--accept-missing", FSBACKUP_LEFTOVER_AGE_FOR_TESTS="0")
    assert {p.name for p in (env.repo / "data").rglob("*") if p.is_file()} != volumes
    env.ok("check")


def test_forgets_on_another_machine_are_followed_silently_even_most_versions(env, tmp_path, three_versions):
    b_ok, b_run = other_machine(env, tmp_path)
    b_ok("versions")                                                # B knows all three
    env.ok("forget", "--keep-last", "1")                            # A forgets two of three
    r = b_ok("versions", "--json")
    assert [v["id"] for v in json.loads(r.out)] == three_versions[-1:] and "warning" not in r.err
    b_ok("check")
    b_ok("prune")


def test_a_forgotten_version_put_back_is_a_version_again_until_forgotten_again(env, tmp_path, three_versions):
    """A record that a version was forgotten explains its going; it never hides a version still
    stored (as one a forget stopped before deleting, or an older copy put back): a machine that
    may only add objects could otherwise store records that make prune delete versions' data."""
    oldest = three_versions[0]
    kept = tmp_path / "copy-of-oldest"
    shutil.copyfile(env.repo / "versions" / oldest, kept)
    env.ok("forget", oldest)
    shutil.copyfile(kept, env.repo / "versions" / oldest)           # an older copy of the repository put back
    assert [v["id"] for v in json.loads(env.ok("versions", "--json").out)] == three_versions
    b_ok, _ = other_machine(env, tmp_path)                           # a new index takes it too
    assert [v["id"] for v in json.loads(b_ok("versions", "--json").out)] == three_versions
    unfinished = f"version {oldest[:8]} is recorded as forgotten but still stored"
    r = env.ok("check")
    assert unfinished in r.err and "no damage found" in r.out
    for command in ("repair", "prune"):                             # named, never deleted
        r = env.ok(command, FSBACKUP_LEFTOVER_AGE_FOR_TESTS="0")
        assert unfinished in r.err and (env.repo / "versions" / oldest).exists(), r.err
    env.ok("restore", oldest, "--target", tmp_path / "out")
    assert (tmp_path / "out" / str(tmp_path / "src" / "f").lstrip("/")).read_bytes() == pseudo_random(20_000, 0)
    env.ok("forget", oldest)                                        # forgetting it again finishes the job
    assert not (env.repo / "versions" / oldest).exists()
    r = b_ok("versions", "--json")
    assert [v["id"] for v in json.loads(r.out)] == three_versions[1:] and "warning" not in r.err, r.err
    assert unfinished not in env.ok("check").err


def test_a_forged_forgotten_record_neither_hides_nor_deletes_a_version(env, tmp_path, three_versions):
    oldest = three_versions[0]
    (env.repo / "forgotten").mkdir(exist_ok=True)
    (env.repo / "forgotten" / oldest).write_bytes(b"FSBF\x02\x00\x00\x00" + bytes(40))   # not made with the key
    b_ok, _ = other_machine(env, tmp_path)                           # a new index reads every listed version
    r = b_ok("versions", "--json")
    assert [v["id"] for v in json.loads(r.out)] == three_versions
    assert f"forgotten/{oldest}" in env.ok("check").err                 # check reads it, and names it
    env.ok("backup", tmp_path / "src")
    assert (env.repo / "versions" / oldest).exists()


def test_a_version_deleted_with_a_forged_record_is_still_reported(env, three_versions):
    newest = three_versions[-1]
    (env.repo / "versions" / newest).unlink()
    (env.repo / "forgotten").mkdir(exist_ok=True)
    (env.repo / "forgotten" / newest).write_bytes(b"FSBF\x02\x00\x00\x00" + bytes(40))
    r = env.ok("versions")
    assert f"version {newest[:8]} is gone from the repository without having been forgotten" in r.err
    assert env.run("check").rc == EXIT_CORRUPT


def test_a_large_prune_on_another_machine_is_followed_without_asking(env, tmp_path):
    """Most volumes go at once, but none that a remaining version needs: a prune's work."""
    src = tmp_path / "src"
    for i in range(6):
        write(src / "f", pseudo_random(150_000, i))                # each version its own data
        env.ok("backup", src, "--volume-size", "64K")
    b_ok, _ = other_machine(env, tmp_path)
    b_ok("versions")                                                # B knows every volume
    env.ok("forget", "--keep-last", "1", "--prune")                 # A deletes most of them
    r = b_ok("versions", "--json")
    assert len(json.loads(r.out)) == 1 and "warning" not in r.err, r.err
    b_ok("restore", "latest", "--target", tmp_path / "out")
    shutil.rmtree(env.repo / "index")                               # but losing what remains is refused
    _, b_run = other_machine(env, tmp_path)
    r = b_run("versions")
    assert r.rc == EXIT_CORRUPT and "index objects (index/)" in r.err, r.err
