"""Choosing versions in a repository several machines back up into (docs/machines.md): --host,
--tag and --path on every command that picks versions, 'latest' as the newest version of this
host, versions in groups, tag changes (tag records, seen by every machine, safe at every crash),
backup --description, and find and diff answered from the local index."""
from __future__ import annotations

import json
import os
import socket
import time

import pytest
from conftest import write
from doubles.faults import FaultyBackend
from test_errors import assert_one_line_error

from fsbackup import errors

THIS_HOST = socket.gethostname()


def versions(env, *args) -> list[dict]:
    return json.loads(env.ok("versions", "--json", *args).out)


def ids(env, *args) -> list[str]:
    return [v["id"] for v in versions(env, *args)]


def listed(env, *args) -> list[str]:
    return env.ok("ls", *args).out.splitlines()


@pytest.fixture
def hosts(env, tmp_path):
    """Versions of three hosts, oldest first: alpha and beta back up /src (alpha twice, the second
    tagged), this machine /mine; beta's is the newest of all."""
    src, mine = tmp_path / "src", tmp_path / "mine"
    write(src / "alpha.txt", b"a")
    write(mine / "mine.txt", b"m")
    env.ok("backup", src, "--host", "alpha", "--tag", "daily")
    env.ok("backup", mine)
    write(src / "alpha2.txt", b"aa")
    env.ok("backup", src, "--host", "alpha", "--tag", "daily", "--tag", "monthly")
    write(src / "beta.txt", b"b")
    env.ok("backup", src, "--host", "beta")
    return {"alpha": ids(env)[0:3:2], "mine": [ids(env)[1]], "beta": [ids(env)[3]], "src": src, "mine_src": mine}


# ---- the filter on every command -------------------------------------------------------------------

def test_versions_are_chosen_by_host_tag_and_path(env, hosts):
    assert ids(env, "--host", "alpha") == hosts["alpha"]
    assert ids(env, "--host", "alpha", "--host", "beta") == hosts["alpha"] + hosts["beta"]
    assert ids(env, "--tag", "daily") == hosts["alpha"]
    assert ids(env, "--tag", "daily,monthly") == hosts["alpha"][1:]                # both tags
    assert ids(env, "--tag", "monthly", "--tag", "nonesuch") == hosts["alpha"][1:]   # either list
    assert ids(env, "--path", str(hosts["src"])) == hosts["alpha"] + hosts["beta"]
    assert ids(env, "--path", str(hosts["mine_src"])) == hosts["mine"]
    assert ids(env, "--path", str(hosts["src"]), "--path", str(hosts["mine_src"])) == []   # paths must equal
    assert ids(env, "--host", "beta", "--tag", "daily") == []
    r = env.ok("versions", "--host", "nobody")
    assert "no version matches host nobody" in r.out


def test_latest_is_the_newest_version_of_this_host_in_ls_and_restore(env, hosts, tmp_path):
    assert any(line.endswith("/mine.txt") for line in listed(env, "latest"))     # though beta's is newer
    assert any(line.endswith("/beta.txt") for line in listed(env, "latest", "--host", "beta"))
    alpha_latest = listed(env, "latest", "--host", "alpha")
    assert any(line.endswith("/alpha2.txt") for line in alpha_latest)
    assert not any(line.endswith("/beta.txt") for line in alpha_latest)
    assert any(line.endswith("/alpha2.txt") for line in listed(env, "latest", "--host", "alpha", "--tag", "monthly"))
    first_alpha = listed(env, "latest", "--host", "alpha", "--tag", "daily", "--tag", "nothing")
    assert first_alpha == alpha_latest
    env.ok("restore", "latest", "--target", tmp_path / "t1")
    assert (tmp_path / "t1" / str(hosts["mine_src"]).lstrip("/") / "mine.txt").read_bytes() == b"m"
    assert not (tmp_path / "t1" / str(hosts["src"]).lstrip("/")).exists()
    env.ok("restore", "latest", "--host", "beta", "--target", tmp_path / "t2")
    assert (tmp_path / "t2" / str(hosts["src"]).lstrip("/") / "beta.txt").read_bytes() == b"b"
    # latest with --path: the newest version of those paths, of this host unless --host says otherwise
    env.ok("restore", "latest", "--path", hosts["src"], "--host", "alpha", "--host", "beta",
           "--target", tmp_path / "t3")
    assert (tmp_path / "t3" / str(hosts["src"]).lstrip("/") / "beta.txt").exists()


def test_latest_without_a_version_of_this_host_names_the_hosts_that_have_some(env, tmp_path):
    write(tmp_path / "src" / "f", b"x")
    env.ok("backup", tmp_path / "src", "--host", "desktop")
    env.ok("backup", tmp_path / "src", "--host", "server")
    for args in (("ls", "latest"), ("restore", "latest", "--target", tmp_path / "t"), ("diff", "latest", "latest")):
        assert_one_line_error(env.run(*args), errors.EXIT_NOT_FOUND, f"this host, {THIS_HOST}, which has none",
                              "desktop, server", "--host")
    assert_one_line_error(env.run("ls", "latest", "--host", "desktop", "--tag", "x"), errors.EXIT_NOT_FOUND,
                          "no version matches host desktop, tag x")
    env.ok("ls", "latest", "--host", "server")
    # ids are taken as they are, whatever host made them
    env.ok("ls", ids(env)[0][:8])


def test_forget_applies_keep_rules_to_the_chosen_versions_in_groups(env, hosts):
    doc = json.loads(env.ok("forget", "--host", "alpha", "--keep-last", "1", "--json").out)
    assert doc["removed"] == hosts["alpha"][:1]
    assert [{k: g[k] for k in ("host", "paths")} for g in doc["groups"]] == [
        {"host": "alpha", "paths": [str(hosts["src"])]}]
    assert ids(env) == hosts["mine"] + hosts["alpha"][1:] + hosts["beta"]
    # default groups: host and paths, each on its own (one version each: all kept)
    doc = json.loads(env.ok("forget", "--keep-last", "1", "--dry-run", "--json").out)
    assert doc["removed"] == [] and len(doc["groups"]) == 3
    # grouped by paths alone, alpha's and beta's versions of /src are one group: beta's is newer
    doc = json.loads(env.ok("forget", "--keep-last", "1", "--group-by", "paths", "--json").out)
    assert doc["removed"] == hosts["alpha"][1:]
    assert ids(env) == hosts["mine"] + hosts["beta"]
    env.ok("forget", "latest", "--host", "beta")
    assert ids(env) == hosts["mine"]


def test_tag_changes_only_the_chosen_versions(env, hosts):
    env.ok("tag", "--host", "alpha", "--add", "kept")
    assert ids(env, "--tag", "kept") == hosts["alpha"]
    env.ok("tag", "--tag", "monthly", "--remove", "daily")
    tags = {v["id"]: v["tags"] for v in versions(env)}
    assert tags[hosts["alpha"][0]] == ["daily", "kept"] and tags[hosts["alpha"][1]] == ["monthly", "kept"]
    env.ok("tag", "--set", "x", "--set", "y", "latest", "--host", "beta")
    env.ok("tag", "--set", "", hosts["alpha"][1][:10])
    tags = {v["id"]: v["tags"] for v in versions(env)}
    assert tags[hosts["beta"][0]] == ["x", "y"] and tags[hosts["alpha"][1]] == [] and tags[hosts["mine"][0]] == []
    doc = json.loads(env.ok("tag", "--add", "z", "latest", "--dry-run", "--json").out)
    assert doc["versions"] == [{"id": hosts["mine"][0], "before": [], "after": ["z"], "changed": True}]
    assert versions(env, "--host", THIS_HOST)[0]["tags"] == []


def test_find_and_diff_take_the_filter(env, hosts):
    found = json.loads(env.ok("find", "*.txt", "--host", "beta", "--json").out)
    assert {(f["version"], os.path.basename(f["path"])) for f in found} == {
        (hosts["beta"][0], n) for n in ("alpha.txt", "alpha2.txt", "beta.txt")}
    found = json.loads(env.ok("find", "alpha2.txt", "--tag", "daily", "--json").out)
    assert [f["version"] for f in found] == hosts["alpha"][1:]
    doc = json.loads(env.ok("diff", hosts["alpha"][0][:8], "latest", "--host", "beta", "--json").out)
    assert doc["after"] == hosts["beta"][0]
    assert [os.path.basename(c["path"]) for c in doc["added"]] == ["alpha2.txt", "beta.txt"]


def test_versions_groups_latest_n_json_and_descriptions(env, hosts, tmp_path):
    env.ok("backup", hosts["src"], "--host", "beta", "--description", "after the upgrade")
    out = env.ok("versions").out.splitlines()
    assert f"host alpha, paths {hosts['src']}:" in out and f"host beta, paths {hosts['src']}:" in out
    assert any(line.startswith("  ") and line.endswith("after the upgrade") for line in out)
    newest = versions(env, "--latest", "1")
    assert [v["id"] for v in newest] == [hosts["mine"][0], hosts["alpha"][1], ids(env)[-1]]
    assert newest[-1]["description"] == "after the upgrade" and newest[0]["description"] is None
    assert newest[-1]["group"] == {"host": "beta", "paths": [str(hosts["src"])]}
    by_tags = versions(env, "--group-by", "tags", "--latest", "1")
    assert [v["group"] for v in by_tags] == [{"tags": []}, {"tags": ["daily"]}, {"tags": ["daily", "monthly"]}] \
        or sorted(json.dumps(v["group"]) for v in by_tags) == sorted(
            json.dumps(g) for g in ({"tags": []}, {"tags": ["daily"]}, {"tags": ["daily", "monthly"]}))
    assert len(versions(env, "--group-by", "none", "--latest", "2")) == 2
    one_group = env.ok("versions", "--host", "alpha").out.splitlines()
    assert all(not line.startswith("host ") for line in one_group)     # one group: no group lines


# ---- tag records: every machine sees them, no crash loses a version -----------------------------------

def tag_objects(env) -> list[str]:
    folder = env.repo / "tags"
    return sorted(os.listdir(folder)) if folder.exists() else []


def test_a_second_machine_sees_tag_changes_at_its_next_command(env, tmp_path):
    write(tmp_path / "src" / "f", b"x")
    env.ok("backup", tmp_path / "src", "--tag", "first")
    other = {"XDG_CACHE_HOME": str(tmp_path / "other-cache")}
    [version] = [v["id"] for v in json.loads(env.ok("versions", "--json", **other).out)]
    env.ok("tag", "--add", "second", "latest")
    env.ok("tag", "--remove", "first", "latest")
    assert len(tag_objects(env)) == 1                            # the superseded record is deleted
    assert json.loads(env.ok("versions", "--json", **other).out)[0]["tags"] == ["second"]
    # and the other way, through another --index on this machine
    index = tmp_path / "third.sqlite"
    env.ok("tag", "--add", "third", version[:8], "--index", index)
    assert versions(env)[0]["tags"] == ["second", "third"]
    assert json.loads(env.ok("versions", "--json", **other).out)[0]["tags"] == ["second", "third"]
    # a fresh index (rebuilt from the repository) applies them too
    env.ok("repair", "--index", index)
    assert json.loads(env.ok("versions", "--json", "--index", index).out)[0]["tags"] == ["second", "third"]
    # forgetting the version deletes its records
    write(tmp_path / "src" / "g", b"y")
    env.ok("backup", tmp_path / "src")
    env.ok("forget", version[:8])
    assert tag_objects(env) == []
    assert json.loads(env.ok("versions", "--json", **other).out)[0]["tags"] == []


class KilledAt(FaultyBackend):
    """Storage whose `method` call on an object under `prefix` stops the command as a kill would
    (KeyboardInterrupt: nothing after it runs)."""

    def __init__(self, inner, method: str, prefix: str):
        super().__init__(inner)
        self.method, self.prefix = method, prefix

    def put(self, name, data):
        if self.method == "put" and name.startswith(self.prefix):
            raise KeyboardInterrupt
        return super().put(name, data)

    def delete(self, name):
        if self.method == "delete" and name.startswith(self.prefix):
            raise KeyboardInterrupt
        return super().delete(name)


@pytest.mark.parametrize("killed_at", ["put", "delete"])
def test_a_tag_change_stopped_at_any_step_leaves_the_version_whole(env, tmp_path, wrap_storage, killed_at):
    write(tmp_path / "src" / "f", b"contents")
    env.ok("backup", tmp_path / "src", "--tag", "a")
    env.ok("tag", "--add", "b", "latest")
    [version] = ids(env)
    version_object = env.repo / "versions" / version
    before = version_object.read_bytes()
    undo = wrap_storage(lambda plain: KilledAt(plain, killed_at, "tags/"))
    r = env.run("tag", "--add", "c", "latest")
    undo()
    assert r.rc == errors.EXIT_INTERRUPTED and "Traceback" not in r.err and "either changed or as they were" in r.err
    assert version_object.read_bytes() == before                     # never rewritten
    expected = ["a", "b"] if killed_at == "put" else ["a", "b", "c"]  # stored: its record is the newest
    other = {"XDG_CACHE_HOME": str(tmp_path / "other-cache")}
    assert versions(env)[0]["tags"] == expected
    assert json.loads(env.ok("versions", "--json", **other).out)[0]["tags"] == expected
    assert len(tag_objects(env)) == (1 if killed_at == "put" else 2)
    env.ok("restore", "latest", "--target", tmp_path / "t")
    assert (tmp_path / "t" / str(tmp_path / "src").lstrip("/") / "f").read_bytes() == b"contents"
    env.ok("tag", "--add", "d", "latest")                            # the next change deletes what lingered
    assert len(tag_objects(env)) == 1
    assert json.loads(env.ok("versions", "--json", **other).out)[0]["tags"] == expected + ["d"]


def test_tag_records_are_sealed_under_their_own_name(env, tmp_path):
    write(tmp_path / "src" / "f", b"x")
    env.ok("backup", tmp_path / "src")
    env.ok("tag", "--add", "a", "latest")
    [name] = tag_objects(env)
    copy = "f" * 64
    (env.repo / "tags" / copy).write_bytes((env.repo / "tags" / name).read_bytes())
    (env.repo / "tags" / name).unlink()
    r = env.run("versions", "--json", XDG_CACHE_HOME=str(tmp_path / "other-cache"))
    assert r.rc == 0 and json.loads(r.out)[0]["tags"] == [] and f"tags/{copy} is corrupt" in r.err


def test_check_reports_a_tag_record_that_does_not_authenticate(env, tmp_path):
    write(tmp_path / "src" / "f", b"x")
    env.ok("backup", tmp_path / "src")
    env.ok("tag", "--add", "a", "latest")
    assert env.run("check").rc == 0
    [name] = tag_objects(env)
    raw = bytearray((env.repo / "tags" / name).read_bytes())
    raw[-1] ^= 1
    (env.repo / "tags" / name).write_bytes(bytes(raw))
    r = env.run("check")
    assert r.rc == 12 and f"tags/{name}" in r.out + r.err and "Traceback" not in r.err, (r.out, r.err)


def test_prune_and_repair_remove_tag_records_a_stopped_forget_left(env, tmp_path):
    write(tmp_path / "src" / "f", b"x")
    env.ok("backup", tmp_path / "src")
    write(tmp_path / "src" / "f", b"y")
    env.ok("backup", tmp_path / "src")
    first = json.loads(env.ok("versions", "--json").out)[0]["id"]
    for command in ("prune", "repair"):
        env.ok("tag", "--add", "old", first)
        [name] = tag_objects(env)
        record = (env.repo / "tags" / name).read_bytes()
        env.ok("forget", first)
        assert tag_objects(env) == []
        (env.repo / "tags" / name).write_bytes(record)     # as a forget stopped before deleting it
        env.ok(command)
        assert tag_objects(env) == [], command
        env.ok("backup", tmp_path / "src", "--host", "again")       # a version to forget next time round
        first = json.loads(env.ok("versions", "--json", "--host", "again").out)[0]["id"]


# ---- find and diff, against answers worked out by hand ---------------------------------------------

T2020, T2023, T2025 = (int(time.mktime((y, 1, 1, 12, 0, 0, 0, 0, -1))) * 10**9 for y in (2020, 2023, 2025))


@pytest.fixture
def two_trees(env, tmp_path):
    """Two versions of one tree, the second changed in every way diff tells apart."""
    src = tmp_path / "src"
    write(src / "a.txt", b"abc")
    write(src / "same.txt", b"unchanged")
    write(src / "d" / "b.txt", b"0123456789")
    write(src / "d" / "big.bin", b"x" * 5000)
    os.symlink("a.txt", src / "link")
    for p, t in (("a.txt", T2020), ("same.txt", T2023), ("d/b.txt", T2023), ("d/big.bin", T2025),
                 ("d", T2025), (".", T2025)):
        os.utime(src / p, ns=(t, t))
    env.ok("backup", src)
    write(src / "a.txt", b"abcd")                                       # content
    (src / "d" / "b.txt").unlink()                                     # removed
    write(src / "d" / "c.txt", b"new")                                 # added
    os.chmod(src / "d" / "big.bin", 0o600)                              # mode only
    write(src / "same.txt", b"unchanged")                               # same bytes, new mtime
    (src / "link").unlink()
    os.symlink("same.txt", src / "link")                               # another target
    for p, t in (("a.txt", T2025), ("same.txt", T2025), ("d/c.txt", T2025), ("d", T2025), (".", T2025)):
        os.utime(src / p, ns=(t, t))
    env.ok("backup", src)
    return src, ids(env)


def test_find_lists_what_matches_in_every_version(env, two_trees):
    src, (v1, v2) = two_trees

    def found(*args) -> list[tuple]:
        doc = json.loads(env.ok("find", *args, "--json").out)
        return [({v1: 1, v2: 2}[f["version"]], os.path.relpath(f["path"], src), f["size"], f["mtime_ns"], f["type"])
                for f in doc]

    assert found("*.txt") == [
        (1, "a.txt", 3, T2020, "f"), (1, "d/b.txt", 10, T2023, "f"), (1, "same.txt", 9, T2023, "f"),
        (2, "a.txt", 4, T2025, "f"), (2, "d/c.txt", 3, T2025, "f"), (2, "same.txt", 9, T2025, "f")]
    assert found("*.txt", "--path", str(src / "d")) == [(1, "d/b.txt", 10, T2023, "f"), (2, "d/c.txt", 3, T2025, "f")]
    assert found("?.*", "--older", "2024-01-01") == [(1, "a.txt", 3, T2020, "f"), (1, "d/b.txt", 10, T2023, "f")]
    assert found("*", "--larger", "9", "--smaller", "4K") == [(1, "d/b.txt", 10, T2023, "f")]
    assert [f[:2] for f in found("*", "--larger", "4K")] == [(1, "d/big.bin"), (2, "d/big.bin")]
    recent = found("[ab]*", "--newer", "2024-06-01", "--path", str(src))
    assert [f[:2] for f in recent] == [(1, "d/big.bin"), (2, "a.txt"), (2, "d/big.bin")]
    assert [f[:2] for f in found("d")] == [(1, "d"), (2, "d")]
    assert found("*.txt", "--newer", "1d") == []                        # every mtime here is long past
    assert found("nothing*") == [] and found("*", "--path", "/no/such/place") == []
    lines = env.ok("find", "c.txt").out.splitlines()
    assert lines == [f"{v2[:8]}  " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(T2025 // 10**9))
                     + f"  {3:>12}  {src}/d/c.txt"]


def test_diff_tells_added_removed_modified_and_metadata_changes(env, two_trees):
    src, (v1, v2) = two_trees
    doc = json.loads(env.ok("diff", v1[:8], v2[:8], str(src), "--json").out)

    def rel(kind):
        return [(os.path.relpath(c["path"], src), c.get("changed")) for c in doc[kind]]
    assert rel("added") == [("d/c.txt", None)]
    assert rel("removed") == [("d/b.txt", None)]
    assert rel("modified") == [("a.txt", None), ("link", None)]
    assert rel("metadata") == [("d/big.bin", ["mode"]), ("same.txt", ["mtime"])]
    out = env.ok("diff", v1[:8], v2[:8], str(src / "d")).out.splitlines()
    assert out == [f"- {src}/d/b.txt", f"U {src}/d/big.bin  (mode)", f"+ {src}/d/c.txt"]
    back = json.loads(env.ok("diff", v2[:8], v1[:8], str(src), "--json").out)
    assert [c["path"] for c in back["added"]] == [c["path"] for c in doc["removed"]]
    assert json.loads(env.ok("diff", v1[:8], v1[:8], "--json").out)["modified"] == []
    whole = json.loads(env.ok("diff", v1[:8], v2[:8], "--json").out)
    assert [c["path"] for c in whole["added"]] == [str(src / "d" / "c.txt")]


# ---- bad input: one line, the documented code ------------------------------------------------------

def test_bad_input_is_one_line_with_its_exit_code(env, hosts, tmp_path):
    v = hosts["alpha"][0]
    for args, code, words in [
        (("ls", "deadbeef"), errors.EXIT_NOT_FOUND, ("no version with id deadbeef",)),
        (("diff", v[:8], "nonsense"), errors.EXIT_NOT_FOUND, ("'nonsense' is not a version id",)),
        (("diff", v[:8], v[:8], "/no/such"), errors.EXIT_NOT_FOUND, ("/no/such is in neither version",)),
        (("diff", v[:8], v[:8], "relative"), errors.EXIT_USAGE, ("not an absolute path",)),
        (("find", ""), errors.EXIT_USAGE, ("the pattern is empty",)),
        (("find", "x", "--newer", "3q"), errors.EXIT_USAGE, ("'3q' is not a duration",)),
        (("find", "x", "--older", "yesterday"), errors.EXIT_USAGE, ("'yesterday' is not a duration",)),
        (("find", "x", "--larger", "lots"), errors.EXIT_USAGE, ("'lots' is not a size",)),
        (("find", "x", "--path", "rel"), errors.EXIT_USAGE, ("not an absolute path",)),
        (("versions", "--group-by", "hosts"), errors.EXIT_USAGE, ("not a list of host, paths and tags",)),
        (("versions", "--latest", "0"), errors.EXIT_USAGE, ("not a positive whole number",)),
        (("versions", "--host", "a/b"), errors.EXIT_USAGE, ("not a host name",)),
        (("tag", "latest"), errors.EXIT_USAGE, ("tag needs --add, --remove or --set",)),
        (("tag", "--add", "x"), errors.EXIT_USAGE, ("name the versions to tag",)),
        (("tag", "--set", "x", "--add", "y", "latest"), errors.EXIT_USAGE, ("either --set or --add",)),
        (("tag", "--add", "a,b", "latest"), errors.EXIT_USAGE, ("holds a comma",)),
        (("tag", "--add", "x", "feedface"), errors.EXIT_NOT_FOUND, ("no version with id feedface",)),
        (("forget", "--keep-last", "1", "--group-by", "x"), errors.EXIT_USAGE, ("not a list of host",)),
    ]:
        assert_one_line_error(env.run(*args), code, *words)


def test_help_teaches_with_examples():
    from fsbackup.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("versions", "ls", "restore", "forget", "tag", "find", "diff"):
        text = sub.choices[name].format_help()
        assert "examples:" in text and "fsbackup " + name in text, name
        assert "--host" in text and "--tag" in text, name


# ---- the catalog's queries: set-based and indexed ------------------------------------------------

def test_find_and_diff_are_indexed_queries(tmp_path):
    from fsbackup.catalog import Catalog
    from fsbackup.catalog.search import DIFF, FIND, FIND_BELOW
    catalog = Catalog(str(tmp_path / "index.sqlite"))
    try:
        for sql, args in ((FIND, ("[1, 2]", "*", 0, 1, 0, 1)), (FIND_BELOW, ("[[1, 5]]", "*", 0, 1, 0, 1, b"/x")),
                          (DIFF, (1, 1, b"", 2, 1))):
            plan = [row[3] for row in catalog.rows("EXPLAIN QUERY PLAN " + sql, args)]
            node_steps = [step for step in plan if " nodes " in f" {step} " or " n " in f" {step} "
                          or step.startswith(("SEARCH x ", "SEARCH y "))]
            assert node_steps and all(step.startswith("SEARCH") for step in node_steps), plan
            assert all("(version=? AND" in step for step in node_steps), plan   # never a whole version
    finally:
        catalog.close()


def test_find_over_a_hundred_versions_of_ten_thousand_files_is_one_pass(tmp_path):
    """100 versions of 10,000 files (recorded straight into a catalog): a find of a name in all of
    them, and of everything below a folder, take well under the time a walk per version would."""
    from fsbackup.catalog import Catalog
    from fsbackup.catalog.search import FindQuery, find
    from fsbackup.catalog.versions import list_versions, record_version
    from fsbackup.codec import wire
    catalog = Catalog(str(tmp_path / "index.sqlite"))

    def entries(v: int):
        yield [0, b"", "d", 0o40755, 0, 0, None, None, 1, 1, 1, 0, 1, 1, 2, 0, None, None, None]
        for d in range(100):
            yield [1, b"d%03d" % d, "d", 0o40755, 0, 0, None, None, 1, 1, 1, 0, 10 + d, 1, 2, 0, None, None, None]
        for i in range(10_000):
            block = (i + v * (i % 50 == 0)).to_bytes(32, "big")
            content = [block, 10, wire.pack_extents([(block, 10)])]
            yield [2 + i % 100, b"f%05d.%s" % (i, b"txt" if i % 100 == 0 else b"bin"), "f", 0o100644, 0, 0, None,
                   None, 1000 + i, 1, 1, 10, 1000 + i, 1, 1, 0, None, None, content]
    try:
        for v in range(100):
            record_version(catalog, f"{v:064x}", {"time_ns": v, "host": "h", "paths": ["/x"], "tags": [],
                                                  "parent": None, "file_count": 10_000, "total_size": 0,
                                                  "bytes_added": 0}, entries(v))
        every = list_versions(catalog)
        started = time.monotonic()
        found = find(catalog, every, FindQuery("*.txt"))
        below = find(catalog, every, FindQuery("*", b"/d007"))
        took = time.monotonic() - started
        assert len(found) == 100 * 100 and found[0].path == b"/d000/f00000.txt" and found[-1].version == every[-1]
        assert len(below) == 100 * 101 and all(f.path.startswith(b"/d007") for f in below)   # and /d007 itself
        assert took < 5, took       # about 0.2 s; a query per entry would take minutes
    finally:
        catalog.close()


# ---- the codecs ------------------------------------------------------------------------------------

def test_a_tag_record_round_trips_and_refuses_what_is_not_one():
    from fsbackup.codec import wire
    from fsbackup.codec.crypto import Keys
    from fsbackup.errors import CorruptObject
    keys = Keys.from_master_secret(bytes(range(64)))
    rid, version = bytes(32), "ab" * 32
    data = wire.encode_tag_record(keys, rid, version, ["x", "caf\udce9"], 3, 5)
    doc = wire.decode_tag_record(keys, rid, data, "tags/r")
    assert (doc["version"], doc["tags"], doc["generation"], doc["time_ns"]) == (version, ["x", "caf\udce9"], 3, 5)
    with pytest.raises(CorruptObject, match="tags/r"):
        wire.decode_tag_record(keys, b"\1" * 32, data, "tags/r")          # sealed under another name
    for bad in ({"version": "AB" * 32, "tags": [], "generation": 1, "time_ns": 0},
                {"version": version, "tags": "x", "generation": 1, "time_ns": 0},
                {"version": version, "tags": [], "generation": 0, "time_ns": 0},
                {"version": version, "tags": [1], "generation": 1, "time_ns": 0},
                {"version": version, "tags": []}):
        sealed = wire._seal_map(keys, wire.TAGS_MAGIC, b"tags", rid, bad)
        with pytest.raises(CorruptObject, match="is not a tag record"):
            wire.decode_tag_record(keys, rid, sealed, "tags/r")


def test_a_header_description_must_be_text():
    from fsbackup.codec import wire
    from fsbackup.errors import CorruptObject
    head = {"time_ns": 1, "host": "h", "paths": ["/"], "tags": [], "parent": None, "file_count": 0,
            "total_size": 0, "bytes_added": 0}
    assert wire.check_head({**head, "description": "fine"}, "versions/v")["description"] == "fine"
    assert wire.decode_head(wire.encode_head({**head, "description": "caf\udce9"}))["description"] == "caf\udce9"
    with pytest.raises(CorruptObject, match="description is not text"):
        wire.check_head({**head, "description": 7}, "versions/v")
