"""Backup then restore reproduces contents and every metadata field fsbackup keeps."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import make_full_tree, pseudo_random, restored_root, snapshot, write


def test_round_trip_keeps_every_entry_type_and_metadata_field(env, tmp_path):
    src = make_full_tree(tmp_path / "src")
    before = snapshot(src)
    env.ok("backup", src)
    target = tmp_path / "out"
    env.ok("restore", "latest", "--target", target)
    after = snapshot(restored_root(target, src))
    assert after.keys() == before.keys()
    for rel in before:
        assert after[rel] == before[rel], rel


def test_sparse_file_keeps_its_holes_and_stores_no_hole_data(env, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    big = src / "vm.img"
    with open(big, "wb") as f:        # 3 GiB, nearly all hole
        f.write(b"head")
        f.seek(1 << 30)
        f.write(pseudo_random(4096, 2))
        f.truncate(3 << 30)
    r = env.ok("backup", src, "--json")
    summary = json.loads(r.out)
    assert summary["bytes_read"] < 1 << 20          # holes are not read as data
    assert summary["bytes_added"] < 1 << 20
    target = tmp_path / "out"
    env.ok("restore", "latest", "--target", target)
    out = restored_root(target, src) / "vm.img"
    st = os.stat(out)
    assert st.st_size == 3 << 30
    assert st.st_blocks * 512 < 1 << 20             # restored as holes, not zeros
    with open(out, "rb") as f:
        assert f.read(4) == b"head"
        f.seek(1 << 30)
        assert f.read(4096) == pseudo_random(4096, 2)
        f.seek(2 << 30)
        assert f.read(16) == bytes(16)


def test_restore_of_one_path_restores_only_it_below_its_absolute_place(env, tmp_path):
    src = make_full_tree(tmp_path / "src")
    env.ok("backup", src)
    target = tmp_path / "out"
    env.ok("restore", "latest", str(src / "deep" / "a"), "--target", target)
    root = restored_root(target, src)
    assert (root / "deep" / "a" / "b" / "c" / "d" / "leaf.txt").read_bytes() == b"leaf"
    assert not (root / "text.txt").exists()
    assert oct(os.stat(root / "deep" / "a").st_mode & 0o777) == oct(0o751)


def test_restore_never_touches_existing_files_without_overwrite(env, tmp_path):
    src = tmp_path / "src"
    write(src / "f.txt", b"original")
    env.ok("backup", src)
    target = tmp_path / "out"
    existing = write(restored_root(target, src) / "f.txt", b"precious local edit")
    r = env.run("restore", "latest", "--target", target)
    assert r.rc == 4 and "--overwrite" in r.err and "Traceback" not in r.err
    assert existing.read_bytes() == b"precious local edit"
    env.ok("restore", "latest", "--target", target, "--overwrite")
    assert existing.read_bytes() == b"original"


@pytest.mark.parametrize("what", ["file", "symlink"])
def test_restore_never_replaces_a_file_or_symlink_in_a_directorys_place_without_overwrite(env, tmp_path, what):
    src = tmp_path / "src"
    write(src / "sub" / "f.txt", b"in a directory")
    env.ok("backup", src)
    target = tmp_path / "out"
    in_the_way = restored_root(target, src) / "sub"
    write(tmp_path / "elsewhere" / "other.txt", b"precious")
    if what == "file":
        write(in_the_way, b"precious local file")
    else:
        in_the_way.parent.mkdir(parents=True)
        os.symlink(tmp_path / "elsewhere", in_the_way)
    r = env.run("restore", "latest", "--target", target)
    assert r.rc == 4 and str(in_the_way) in r.err and "Traceback" not in r.err, r.err
    if what == "file":
        assert in_the_way.read_bytes() == b"precious local file"
    else:
        assert os.readlink(in_the_way) == str(tmp_path / "elsewhere")
    env.ok("restore", "latest", "--target", target, "--overwrite")
    assert (in_the_way / "f.txt").read_bytes() == b"in a directory" and not in_the_way.is_symlink()
    assert os.listdir(tmp_path / "elsewhere") == ["other.txt"]     # the symlink was replaced, not followed


def test_overwrite_over_a_changed_tree_reproduces_the_version(env, tmp_path):
    """Every entry type replaced by a rename or made anew over what stands in its place."""
    src = make_full_tree(tmp_path / "src")
    before = snapshot(src)
    env.ok("backup", src)
    target = tmp_path / "out"
    env.ok("restore", "latest", "--target", target)
    root = restored_root(target, src)
    (root / "text.txt").write_bytes(b"edited")
    (root / "random.bin").write_bytes(b"edited through both hard links")
    os.unlink(root / "link-to-text")
    (root / "link-to-text").mkdir()                     # a directory where a symlink was
    write(root / "link-to-text" / "inside", b"x")
    os.unlink(root / "empty")
    os.symlink("text.txt", root / "empty")              # a symlink where a file was
    import shutil
    shutil.rmtree(root / "empty dir")
    write(root / "empty dir", b"a file where a directory was")
    env.ok("restore", "latest", "--target", target, "--overwrite")
    after = snapshot(root)
    assert after.keys() == before.keys()
    for rel in before:
        assert after[rel] == before[rel], rel
    assert not [n for _, dirs, files in os.walk(target) for n in dirs + files if n.startswith(".fsbackup-restore-")]


def test_ls_lists_a_version_tree_and_long_format(env, tmp_path):
    src = make_full_tree(tmp_path / "src")
    env.ok("backup", src)
    names = env.ok("ls", "latest", src).out.splitlines()
    assert str(src / "deep" / "a" / "b" / "c" / "d" / "leaf.txt") in names
    long = env.ok("ls", "latest", src / "text.txt", "-l").out
    assert long.startswith("-rw-r-----") and "12000" in long
    rows = json.loads(env.ok("ls", "latest", src, "--json").out)
    link = next(r for r in rows if r["path"].endswith("link-to-text"))
    assert link["type"] == "l" and link["target"] == "text.txt"


def test_excludes_leave_out_what_they_match(env, tmp_path):
    src = tmp_path / "src"
    write(src / "keep.txt", b"k")
    write(src / "skip.tmp", b"s")
    write(src / "build" / "out.o", b"o")
    write(src / "cache" / "CACHEDIR.TAG", b"Signature: 8a477f597d28d172789f06886806bc55\n")
    write(src / "cache" / "blob", b"c")
    write(src / "private" / ".nobackup", b"")
    write(src / "private" / "secret", b"x")
    excl = write(tmp_path / "excludes", b"# comment\n*.tmp\n")
    env.ok("backup", src, "--exclude-file", excl, "--exclude", f"{src}/build", "--exclude-caches",
           "--exclude-if-present", ".nobackup")
    names = set(env.ok("ls", "latest", src).out.splitlines())
    assert str(src / "keep.txt") in names
    for gone in ("skip.tmp", "build", "cache/blob", "private/secret"):
        assert str(src / gone) not in names, gone


def test_versions_lists_each_backup_with_tags_and_json(env, tmp_path):
    src = tmp_path / "src"
    write(src / "a", b"a" * 1000)
    env.ok("backup", src, "--tag", "nightly")
    write(src / "b", b"b" * 1000)
    env.ok("backup", src)
    versions = json.loads(env.ok("versions", "--json").out)
    assert len(versions) == 2
    assert versions[0]["tags"] == ["nightly"] and versions[0]["file_count"] == 1
    assert versions[1]["file_count"] == 2 and versions[1]["total_size"] == 2000
    text = env.ok("versions").out.splitlines()
    assert len(text) == 2 and versions[0]["short_id"] in text[0] and "[nightly]" in text[0]
    # an id prefix selects a version
    assert env.ok("ls", versions[0]["short_id"][:6], src).out.splitlines() == [str(src), str(src / "a")]


def test_unreadable_file_gives_exit_3_and_the_version_is_saved_without_it(tmp_path):
    """Runs as an unprivileged user (root reads everything), through setpriv when the suite runs as root."""
    import shutil
    import subprocess
    import sys
    import tempfile

    from conftest import Env
    prefix: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="fsb-unreadable-"))
    try:
        if os.geteuid() == 0:
            if not shutil.which("setpriv"):
                pytest.skip("running as root without setpriv: cannot drop privileges to make a file unreadable")
            prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            base.chmod(0o777)
        e = Env(base)
        src = base / "src"
        write(src / "ok", b"fine")
        write(src / "locked", b"no")
        for p in (base, src, src / "ok", src / "locked"):
            if prefix:
                os.chown(p, 65534, 65534)
        (src / "locked").chmod(0)
        env = e.environ()
        def cli(*args):
            return subprocess.run(prefix + [sys.executable, "-m", "fsbackup", *map(str, args)], env=env,
                                  capture_output=True, text=True, cwd=base)
        assert cli("init").returncode == 0
        r = cli("backup", src)
        assert r.returncode == 3, r.stderr
        assert "locked" in r.stderr and "Traceback" not in r.stderr
        names = cli("ls", "latest", src).stdout.splitlines()
        assert str(src / "ok") in names and str(src / "locked") not in names
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_dry_run_stores_nothing(env, tmp_path):
    src = tmp_path / "src"
    write(src / "a", pseudo_random(100_000, 3))
    r = json.loads(env.ok("backup", src, "--dry-run", "--json").out)
    assert r["version"] is None and r["bytes_new"] == 100_000
    assert json.loads(env.ok("versions", "--json").out) == []
    assert not list((env.repo / "data").glob("*/*")) if (env.repo / "data").exists() else True


def test_missing_local_index_is_rebuilt_from_the_remote(env, tmp_path):
    src = make_full_tree(tmp_path / "src")
    before = snapshot(src)
    env.ok("backup", src)
    import shutil
    shutil.rmtree(env.cache)
    r = env.ok("versions", "--json")
    assert len(json.loads(r.out)) == 1
    target = tmp_path / "out"
    env.ok("restore", "latest", "--target", target)
    assert snapshot(restored_root(target, src)) == before


def test_local_index_is_readable_by_its_owner_only(env, tmp_path):
    write(tmp_path / "src" / "a", b"a")
    env.ok("backup", tmp_path / "src")
    index_files = list(env.cache.rglob("index.sqlite*"))
    assert index_files
    for f in index_files:
        assert f.stat().st_mode & 0o077 == 0, f
    for d in {f.parent for f in index_files}:
        assert d.stat().st_mode & 0o777 == 0o700


def test_an_index_in_a_shared_folder_leaves_the_folder_alone(env, tmp_path):
    """--index in a folder others use (say /tmp): the index is private, the folder keeps its mode."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    write(tmp_path / "src" / "a", b"a")
    env.ok("--index", shared / "mine.sqlite", "backup", tmp_path / "src")
    assert shared.stat().st_mode & 0o7777 == 0o1777
    assert (shared / "mine.sqlite").stat().st_mode & 0o077 == 0


def test_an_index_from_an_older_schema_is_migrated(env, tmp_path):
    """An index written before `contents.stored` existed (schema v2) is brought up to date in place."""
    import apsw

    from fsbackup.catalog import Catalog
    from fsbackup.catalog.schema import MIGRATIONS
    write(tmp_path / "src" / "a", pseudo_random(100_000, 1))
    env.ok("backup", tmp_path / "src")
    (path,) = env.cache.rglob("index.sqlite")
    db = apsw.Connection(str(path))
    db.execute("CREATE TABLE c2 AS SELECT id, layout, hash, size, extents FROM contents")
    db.execute("DROP TABLE contents")
    db.execute("ALTER TABLE c2 RENAME TO contents")
    db.execute("DROP TABLE spare_blocks")                   # (v4)
    db.execute("DROP TABLE vanished_versions")              # (v6)
    db.execute("DROP INDEX blocks_by_place")                # (v7)
    db.execute("DROP INDEX nodes_with_xattrs")
    db.execute("CREATE INDEX blocks_by_volume ON blocks(volume)")
    db.execute("ALTER TABLE versions DROP COLUMN description")   # (v8)
    db.execute("DROP TABLE tag_records")
    db.execute("DROP INDEX versions_by_host")
    db.execute("PRAGMA user_version=2")
    db.close()
    catalog = Catalog(str(path))
    assert catalog.row("PRAGMA user_version")[0] == len(MIGRATIONS)
    assert catalog.row("SELECT stored FROM contents")[0] == 100_000
    catalog.close()
    env.ok("restore", "latest", "--target", tmp_path / "out")


def test_a_tree_deeper_than_the_descriptors_allowed_is_backed_up_and_restored(env, tmp_path):
    """Backup and restore keep a bounded number of directories open: a chain of directories
    deeper than the process may open files round-trips."""
    import resource
    src = tmp_path / "src"
    deep = src
    for i in range(300):
        deep = deep / f"level{i}"
        write(deep / "f.txt", b"at level %d" % i)
    before = snapshot(src)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 200, hard))
    try:
        env.ok("backup", src)
        target = tmp_path / "out"
        env.ok("restore", "latest", "--target", target)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert snapshot(restored_root(target, src)) == before


def test_backing_up_the_root_folder_backs_up_what_is_below_it(env, tmp_path):
    """`backup /` must walk the whole tree (it recorded the root alone). Everything but the test's
    own folder is excluded, level by level, to keep it small."""
    src = tmp_path / "src"
    write(src / "deep" / "file", b"below the root")
    excludes = []
    for keep in [*reversed(src.parents[:-1]), src]:        # /tmp, ..., tmp_path, src
        folder = keep.parent
        for name in os.listdir(folder):
            if folder / name != keep:
                excludes += ["--exclude", str(folder / name)]
    env.ok("backup", "/", *excludes)
    listing = env.ok("ls", "latest").out.splitlines()
    assert str(src / "deep" / "file") in listing
    env.ok("restore", "latest", str(src), "--target", tmp_path / "out")
    assert (restored_root(tmp_path / "out", src) / "deep" / "file").read_bytes() == b"below the root"
