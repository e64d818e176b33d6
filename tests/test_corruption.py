"""Damaged remote objects are detected, named in one line with the documented exit code, and a
restore never writes wrong bytes: a file whose data is damaged is left out, every other file is
restored exactly.

One byte is flipped in each kind of object (a volume: in a block's ciphertext or tag, in its table,
footer and header; an index object; a version object; a key object; the config), objects are
truncated, deleted, or replaced by another valid object of the same kind. `ls` and `restore` read the
tree from the local index, so to make them read a damaged index or version object the local index
(the cache folder) is deleted first and they rebuild it from the remote.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import TEST_PASSWORD, pseudo_random, restored_root, snapshot, write

from fsbackup.backends.local import LocalBackend
from fsbackup.codec import wire
from fsbackup.errors import EXIT_CORRUPT, EXIT_NO_REPOSITORY, EXIT_NOT_FOUND, EXIT_WRONG_PASSPHRASE, CorruptObject
from fsbackup.repository import Repository, index_object, version_object, volume_object

VOLUME_SIZE = "32K"     # below the smallest block: every block gets a volume of its own


# ---- the backed-up tree and where its blocks lie --------------------------------------------

def make_tree(src: Path) -> None:
    for i in range(4):
        write(src / f"small{i}", pseudo_random(40_000 + 30_000 * i, 100 + i))   # one block each
    write(src / "copy-of-small1", pseudo_random(70_000, 101))                    # shares small1's block
    write(src / "big.bin", pseudo_random(9 << 20, 7))                           # >= 3 blocks (max 4 MiB)
    write(src / "text.txt", b"compressible line of text\n" * 5000)
    write(src / "empty", b"")
    write(src / "sub" / "nested", pseudo_random(50_000, 200))
    os.symlink("text.txt", src / "link")


@dataclass
class Layout:
    """Where each file's blocks lie, decoded from the remote's version and index objects."""
    files: dict[bytes, list[bytes]]                    # path relative to src -> block ids, in file order
    blocks: dict[bytes, tuple[str, int, int]]         # block id -> (volume name, offset, stored length)
    keys: object

    def volumes_of(self, rel: bytes) -> list[str]:
        return [self.blocks[b][0] for b in self.files[rel]]

    def files_using(self, volume: str) -> set[bytes]:
        return {rel for rel, ids in self.files.items() if any(self.blocks[b][0] == volume for b in ids)}


def open_repository(env) -> Repository:
    return Repository.open(LocalBackend(str(env.repo)), TEST_PASSWORD.encode(), str(env.tmp / "layout.sqlite"))


def read_layout(env, src: Path, version: str) -> Layout:
    repo = open_repository(env)
    try:
        blocks = {}
        for obj, _ in repo.backend.list("index/"):
            name = obj.split("/", 1)[1]
            _, entries = wire.decode_index(repo.keys, bytes.fromhex(name), repo.backend.get(obj), obj)
            blocks.update({e.id: (name, e.offset, e.stored_length) for e in entries})
        _, entries = repo.load_version(version)
        paths, files = {}, {}
        prefix = os.fsencode(src) + b"/"
        for node_id, e in enumerate(entries, start=1):
            parent = paths.get(e[wire.E_PARENT], b"")
            paths[node_id] = path = b"/" if node_id == 1 else parent.rstrip(b"/") + b"/" + e[wire.E_NAME]
            if e[wire.E_CONTENT] is not None and path.startswith(prefix):
                extents = wire.unpack_extents(e[wire.E_CONTENT][2])
                files[path[len(prefix):]] = [b for b, _ in extents if b != wire.HOLE_ID]
        return Layout(files, blocks, repo.keys)
    finally:
        repo.close()


@dataclass
class Backed:
    src: Path
    version: str
    expected: dict          # `snapshot` of the tree as the backup saw it
    layout: Layout


def backed_up(env, tmp_path: Path) -> Backed:
    src = tmp_path / "src"
    make_tree(src)
    env.ok("backup", src, "--volume-size", VOLUME_SIZE)
    (version,) = os.listdir(env.repo / "versions")
    layout = read_layout(env, src, version)
    assert len(set(layout.volumes_of(b"big.bin"))) >= 2, "the test needs a file spread over several volumes"
    return Backed(src, version, snapshot(src), layout)


@pytest.fixture
def backed(env, tmp_path) -> Backed:
    return backed_up(env, tmp_path)


def volume_path(env, volume: str) -> Path:
    return env.repo / volume_object(volume)


def flip(path: Path, pos: int, mask: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= mask
    path.write_bytes(bytes(data))


def forget_local_index(env) -> None:
    shutil.rmtree(env.cache, ignore_errors=True)


# ---- what a command must say and leave behind --------------------------------------------------

def assert_one_line_error(r, code: int, *words: str) -> None:
    """The command failed as a whole: exactly one line on stderr, with the documented exit code."""
    assert "Traceback" not in r.err and "internal error" not in r.err, r.err
    assert r.rc == code, f"exit code {r.rc}, expected {code}: {r.err}"
    lines = r.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fsbackup: error: "), r.err
    for w in words:
        assert w in lines[0], f"{w!r} is not named in: {lines[0]}"


def assert_no_file_written(target: Path) -> None:
    assert not target.exists() or not [p for p in target.rglob("*") if not p.is_dir()], \
        f"a restore that failed wrote {[str(p) for p in target.rglob('*') if not p.is_dir()]}"


def assert_restore_leaves_out_exactly(r, target: Path, b: Backed, damaged: set[bytes], obj: str) -> None:
    """The restore reported each damaged file (naming the object) and left it out, in one error line
    with exit 12, and restored every other entry exactly."""
    assert damaged, "the test damaged no file"
    assert "Traceback" not in r.err and "internal error" not in r.err, r.err
    assert r.rc == EXIT_CORRUPT, f"exit code {r.rc}: {r.err}"
    lines = r.err.splitlines()
    errors = [ln for ln in lines if ln.startswith("fsbackup: error: ")]
    assert len(errors) == 1 and all(ln.startswith(("warning: ", "fsbackup: error: ")) for ln in lines), r.err
    root = restored_root(target, b.src)
    for rel in damaged:
        where = os.fsdecode(os.path.join(os.fsencode(root), rel))
        assert any(where in ln and obj in ln for ln in lines), f"no line names {where} and {obj}:\n{r.err}"
    assert_restored_exactly_except(root, b, damaged)


def assert_restored_exactly_except(root: Path, b: Backed, damaged: set[bytes]) -> None:
    got = snapshot(root)
    for rel, rec in b.expected.items():
        if rel in damaged:
            assert rel not in got, f"{rel!r} was restored although its data is damaged"
        else:
            assert got.get(rel) == rec, f"{rel!r} is not restored exactly"
    assert set(got) <= set(b.expected), f"restore made entries that were not backed up: {set(got) - set(b.expected)}"


def restore(env, tmp_path: Path, name: str = "out"):
    target = tmp_path / name
    return env.run("restore", "latest", "--target", target), target


# ---- volumes: blocks ------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["ciphertext", "tag"])
@pytest.mark.parametrize("file", ["small0", "copy-of-small1", "big.bin"])
def test_flipped_byte_in_a_block_leaves_out_only_the_files_using_it_and_names_the_volume(
        env, tmp_path, backed, file, where):
    # For big.bin, damage its last block: its first blocks are good and are written before the damage is found.
    block = backed.layout.files[file.encode()][-1]
    volume, offset, length = backed.layout.blocks[block]
    flip(volume_path(env, volume), offset + (length // 2 if where == "ciphertext" else length - 1))
    r, target = restore(env, tmp_path)
    # A volume may hold blocks of other files too (a small last block leaves room): only the files
    # using the damaged block are damaged.
    damaged = {rel for rel, ids in backed.layout.files.items() if block in ids}
    assert file.encode() in damaged and (file != "copy-of-small1" or b"small1" in damaged)
    assert_restore_leaves_out_exactly(r, target, backed, damaged, volume_object(volume))


def test_damaged_block_found_by_a_restore_process_is_one_error_line_and_exit_12(env, tmp_path, backed):
    volume, offset, length = backed.layout.blocks[backed.layout.files[b"sub/nested"][0]]
    flip(volume_path(env, volume), offset + 10, 0xFF)
    target = tmp_path / "out"
    r = env.run_process("restore", "latest", "--target", target)
    assert_restore_leaves_out_exactly(r, target, backed, {b"sub/nested"}, volume_object(volume))


def test_restoring_only_a_damaged_file_fails_and_writes_nothing_for_it(env, tmp_path, backed):
    volume, offset, length = backed.layout.blocks[backed.layout.files[b"big.bin"][-1]]
    flip(volume_path(env, volume), offset + length // 3)
    target = tmp_path / "out"
    r = env.run("restore", "latest", str(backed.src / "big.bin"), "--target", target)
    assert r.rc == EXIT_CORRUPT and "Traceback" not in r.err and volume_object(volume) in r.err, r.err
    assert not (restored_root(target, backed.src) / "big.bin").exists()


# ---- volumes: table, footer, header (redundant for a restore, which reads blocks by range) ----

def volume_positions(data: bytes) -> dict[str, int]:
    table_offset, table_length, _ = wire.FOOTER.unpack_from(data, len(data) - wire.FOOTER.size)
    footer = len(data) - wire.FOOTER.size
    return {"table": table_offset + table_length // 2, "table tag": table_offset + table_length - 1,
            "footer table offset": footer, "footer table length": footer + 8, "footer magic": footer + 12,
            "header magic": 0, "header format version": 4}


@pytest.mark.parametrize("where", ["table", "table tag", "footer table offset", "footer table length",
                                   "footer magic", "header magic", "header format version"])
def test_flipped_byte_outside_the_blocks_of_a_volume_never_yields_wrong_bytes_and_fails_its_table_check(
        env, tmp_path, backed, where):
    volume = backed.layout.volumes_of(b"small2")[0]
    path = volume_path(env, volume)
    flip(path, volume_positions(path.read_bytes())[where])
    # Restore reads each block by its range from the index and authenticates it: the volume's own
    # table, footer and header are not needed, so the data restores exactly, or the volume is named.
    r, target = restore(env, tmp_path)
    if r.rc == 0:
        assert_restored_exactly_except(restored_root(target, backed.src), backed, set())
    else:
        assert_restore_leaves_out_exactly(r, target, backed, backed.layout.files_using(volume), volume_object(volume))
    # Reading the volume whole (what a check or an index re-creation does) detects the damage.
    with pytest.raises(CorruptObject) as caught:
        wire.open_volume_table(backed.layout.keys, bytes.fromhex(volume), path.read_bytes(), volume_object(volume))
    assert caught.value.name == volume_object(volume)


# ---- volumes: truncated, missing, replaced ---------------------------------------------------

def test_truncated_volume_leaves_out_the_files_using_it_and_names_it(env, tmp_path, backed):
    volume, offset, length = backed.layout.blocks[backed.layout.files[b"big.bin"][-1]]
    path = volume_path(env, volume)
    cut = offset + length // 2
    path.write_bytes(path.read_bytes()[:cut])
    r, target = restore(env, tmp_path)
    lost = {b for b, (v, o, n) in backed.layout.blocks.items() if v == volume and o + n > cut}
    damaged = {rel for rel, ids in backed.layout.files.items() if lost & set(ids)}
    assert_restore_leaves_out_exactly(r, target, backed, damaged, volume_object(volume))


def test_missing_volume_leaves_out_the_files_using_it_and_names_it(env, tmp_path, backed):
    volume = backed.layout.volumes_of(b"small3")[0]
    volume_path(env, volume).unlink()
    r, target = restore(env, tmp_path)
    assert_restore_leaves_out_exactly(r, target, backed, backed.layout.files_using(volume), volume_object(volume))


def test_missing_volume_after_the_local_index_is_rebuilt_still_leaves_out_only_its_files(env, tmp_path, backed):
    volume = backed.layout.volumes_of(b"small3")[0]
    volume_path(env, volume).unlink()
    forget_local_index(env)
    r, target = restore(env, tmp_path)
    damaged = backed.layout.files_using(volume)
    assert r.rc == EXIT_CORRUPT and "Traceback" not in r.err, r.err
    assert_restored_exactly_except(restored_root(target, backed.src), backed, damaged)
    r = env.run("repair")          # the index is rebuilt; the missing volume is reported, with its files
    assert r.rc == EXIT_CORRUPT and volume_object(volume) in r.err and "missing" in r.err, r.err
    assert "small3" in r.err and "Traceback" not in r.err


def test_volume_copied_over_another_volumes_name_is_rejected(env, tmp_path, backed):
    good = backed.layout.volumes_of(b"small0")[0]
    victim = backed.layout.volumes_of(b"sub/nested")[0]
    shutil.copyfile(volume_path(env, good), volume_path(env, victim))
    r, target = restore(env, tmp_path)
    damaged = backed.layout.files_using(victim)
    assert b"small0" not in damaged
    assert_restore_leaves_out_exactly(r, target, backed, damaged, volume_object(victim))


# ---- index objects --------------------------------------------------------------------------

def assert_damaged_version_is_skipped_naming(env, tmp_path: Path, obj: str) -> None:
    """With no local index, a version object that does not read is skipped with a warning naming
    it (the other versions stay usable: here there are none); `repair` names it as damaged."""
    for command in (["ls", "latest"], ["restore", "latest", "--target", tmp_path / "out"]):
        forget_local_index(env)
        r = env.run(*command)
        assert "Traceback" not in r.err and r.rc == EXIT_NOT_FOUND, r.err
        assert f"{obj} does not read" in r.err and "skipped" in r.err, r.err
    assert_no_file_written(tmp_path / "out")
    forget_local_index(env)
    r = env.run("repair")
    assert r.rc == EXIT_CORRUPT and f"damaged: {obj}" in r.err, r.err


def assert_rebuild_from_remote_fails_naming(env, tmp_path: Path, obj: str) -> None:
    """With no local index, `ls` and `restore` must read `obj`, and each fails naming it; `repair`
    re-creates a damaged index object from its volume, and names a damaged version object."""
    for command in (["ls", "latest"], ["restore", "latest", "--target", tmp_path / "out"]):
        forget_local_index(env)
        r = env.run(*command)
        assert_one_line_error(r, EXIT_CORRUPT, obj)
    assert_no_file_written(tmp_path / "out")
    forget_local_index(env)
    r = env.run("repair")
    assert "Traceback" not in r.err
    if obj.startswith("index/"):
        assert r.rc == 0 and f"re-created {obj}" in r.out, r.out + r.err
    else:
        assert r.rc == EXIT_CORRUPT and f"damaged: {obj}" in r.err, r.err


@pytest.mark.parametrize("where", ["magic", "format version", "ciphertext", "tag"])
def test_flipped_byte_in_an_index_object_is_named_when_the_local_index_is_rebuilt(env, tmp_path, backed, where):
    volume = backed.layout.volumes_of(b"small0")[0]
    path = env.repo / index_object(volume)
    flip(path, {"magic": 0, "format version": 4, "ciphertext": wire.HEADER_LEN + 1,
                "tag": path.stat().st_size - 1}[where])
    assert_rebuild_from_remote_fails_naming(env, tmp_path, index_object(volume))


def test_truncated_index_object_is_named_when_the_local_index_is_rebuilt(env, tmp_path, backed):
    path = env.repo / index_object(backed.layout.volumes_of(b"small0")[0])
    path.write_bytes(path.read_bytes()[:-5])
    assert_rebuild_from_remote_fails_naming(env, tmp_path, index_object(path.name))


def test_index_object_copied_over_another_index_objects_name_is_rejected(env, tmp_path, backed):
    good = backed.layout.volumes_of(b"small0")[0]
    victim = backed.layout.volumes_of(b"small1")[0]
    shutil.copyfile(env.repo / index_object(good), env.repo / index_object(victim))
    assert_rebuild_from_remote_fails_naming(env, tmp_path, index_object(victim))


# ---- version objects ------------------------------------------------------------------------

def version_positions(data: bytes) -> dict[str, int]:
    frames, pos = [], wire.HEADER_LEN
    while pos < len(data):
        (length,) = wire.FRAME_LEN.unpack_from(data, pos)
        frames.append((pos, length))
        pos += wire.FRAME_LEN.size + length
    assert len(frames) >= 2
    (first, first_len), (last, last_len) = frames[0], frames[-1]
    return {"magic": 0, "format version": 4, "frame length": first, "header frame": first + 4 + first_len // 2,
            "tree frame": last + 4 + last_len // 2, "last tag": len(data) - 1}


@pytest.mark.parametrize("where", ["magic", "format version", "frame length", "header frame", "tree frame",
                                   "last tag"])
def test_flipped_byte_in_a_version_object_is_named_when_the_local_index_is_rebuilt(env, tmp_path, backed, where):
    path = env.repo / version_object(backed.version)
    flip(path, version_positions(path.read_bytes())[where])
    assert_damaged_version_is_skipped_naming(env, tmp_path, version_object(backed.version))


def test_truncated_version_object_is_named_when_the_local_index_is_rebuilt(env, tmp_path, backed):
    path = env.repo / version_object(backed.version)
    data = path.read_bytes()
    (first_len,) = wire.FRAME_LEN.unpack_from(data, wire.HEADER_LEN)
    path.write_bytes(data[:wire.HEADER_LEN + 4 + first_len])     # only the header frame is left
    assert_damaged_version_is_skipped_naming(env, tmp_path, version_object(backed.version))


def test_version_object_copied_over_another_versions_name_is_rejected(env, tmp_path, backed):
    write(backed.src / "small0", b"changed")
    env.ok("backup", backed.src, "--volume-size", VOLUME_SIZE)
    (second,) = set(os.listdir(env.repo / "versions")) - {backed.version}
    shutil.copyfile(env.repo / version_object(backed.version), env.repo / version_object(second))
    forget_local_index(env)
    r = env.run("versions", "--json")
    assert r.rc == 0 and f"{version_object(second)} does not read" in r.err, r.err
    assert [v["id"] for v in json.loads(r.out)] == [backed.version]      # the copy is not taken for it


def test_damaged_version_object_found_by_a_process_is_a_warning_line(env, tmp_path, backed):
    path = env.repo / version_object(backed.version)
    flip(path, version_positions(path.read_bytes())["tree frame"])
    forget_local_index(env)
    r = env.run_process("ls", "latest")
    assert "Traceback" not in r.err and r.rc == EXIT_NOT_FOUND           # the only version does not read
    assert [line for line in r.err.splitlines() if version_object(backed.version) in line], r.err


def test_one_damaged_version_object_does_not_block_the_others_on_a_new_machine(env, tmp_path, backed):
    write(backed.src / "small0", b"changed")
    env.ok("backup", backed.src, "--volume-size", VOLUME_SIZE)
    (second,) = set(os.listdir(env.repo / "versions")) - {backed.version}
    path = env.repo / version_object(backed.version)
    flip(path, version_positions(path.read_bytes())["tree frame"])
    forget_local_index(env)                                   # a new machine: the index is built from the remote
    r = env.run("versions", "--json")
    assert r.rc == 0 and version_object(backed.version) in r.err, r.err
    assert [v["id"] for v in json.loads(r.out)] == [second]
    env.ok("restore", second, "--target", tmp_path / "out")
    assert (restored_root(tmp_path / "out", backed.src) / "small0").read_bytes() == b"changed"
    r = env.run("prune")                                       # would take the damaged version's data for unused
    assert r.rc == EXIT_CORRUPT and "Traceback" not in r.err
    last = r.err.splitlines()[-1]
    assert last.startswith("fsbackup: error: ") and version_object(backed.version) in last, r.err
    assert "repair --remove-damaged" in last


# ---- key objects ----------------------------------------------------------------------------

def key_path(env) -> Path:
    (name,) = os.listdir(env.repo / "keys")
    return env.repo / "keys" / name


def test_key_object_that_does_not_parse_is_named_with_exit_12(env, tmp_path, backed):
    path = key_path(env)
    flip(path, 0)                                           # '{' -> 'z'
    obj = f"keys/{path.name}"
    assert_one_line_error(env.run("ls", "latest"), EXIT_CORRUPT, obj)
    r, target = restore(env, tmp_path)
    assert_one_line_error(r, EXIT_CORRUPT, obj)
    assert_no_file_written(target)


def test_key_object_with_a_damaged_wrapped_secret_is_refused(env, tmp_path, backed):
    path = key_path(env)
    raw = path.read_bytes()
    flip(path, raw.index(b'"wrapped": "') + len(b'"wrapped": "') + 5)
    for command in (["ls", "latest"], ["restore", "latest", "--target", tmp_path / "out"]):
        r = env.run(*command)
        assert r.rc in (EXIT_WRONG_PASSPHRASE, EXIT_CORRUPT), r.err
        assert_one_line_error(r, r.rc, *([f"keys/{path.name}"] if r.rc == EXIT_CORRUPT else []))
    assert_no_file_written(tmp_path / "out")


def each_one_byte_damage(env, path: Path, acceptable) -> list[str]:
    """Flip each byte of `path` in turn and run `ls latest`; return how each unacceptable outcome read.
    `acceptable(result, stderr lines, undamaged listing)` judges one outcome."""
    raw = path.read_bytes()
    listing = env.ok("ls", "latest").out
    failures = []
    for pos in range(len(raw)):
        data = bytearray(raw)
        data[pos] ^= 0x01
        path.write_bytes(bytes(data))
        r = env.run("ls", "latest")
        if not acceptable(r, r.err.splitlines(), listing):
            failures.append(f"byte {pos} ({chr(raw[pos])!r} in ...{raw[max(0, pos - 12):pos + 4].decode()!r}): "
                            f"exit {r.rc}: {r.err.strip()}")
    path.write_bytes(raw)
    return failures


def test_any_one_byte_damage_to_a_key_object_gives_one_line_with_exit_11_or_12(env, tmp_path, backed):
    path = key_path(env)

    def acceptable(r, lines, listing):
        if r.rc == 0:
            return r.out == listing        # a field the reader ignores: the secret still authenticates
        if r.rc == EXIT_CORRUPT:
            return len(lines) == 1 and f"keys/{path.name}" in lines[0]
        return r.rc == EXIT_WRONG_PASSPHRASE and len(lines) == 1 and lines[0].startswith("fsbackup: error: ")

    failures = each_one_byte_damage(env, path, acceptable)
    assert not failures, f"{len(failures)} one-byte damages are mis-reported, e.g.:\n" + \
        "\n".join(failures[:: max(1, len(failures) // 8)])


def test_a_damaged_key_object_does_not_hide_another_key_that_opens(env, tmp_path, backed):
    path = key_path(env)
    damaged = env.repo / "keys" / ("0" * 64)               # tried first: names are tried in order
    damaged.write_bytes(path.read_bytes())
    flip(damaged, 0)
    assert env.run("ls", "latest").rc == 0, "a damaged key object stops the repository from opening, " \
                                           "although another key object opens it"
    r, target = restore(env, tmp_path)
    assert r.rc == 0, r.err
    assert_restored_exactly_except(restored_root(target, backed.src), backed, set())


# ---- the config ---------------------------------------------------------------------------------

def test_config_that_does_not_parse_is_named_with_exit_12(env, tmp_path, backed):
    flip(env.repo / "config", 0)                          # '{' -> 'z'
    assert_one_line_error(env.run("ls", "latest"), EXIT_CORRUPT, "config")
    r, target = restore(env, tmp_path)
    assert_one_line_error(r, EXIT_CORRUPT, "config")
    assert_no_file_written(target)


def test_any_one_byte_damage_to_the_config_gives_one_line_never_a_traceback(env, tmp_path, backed):
    def acceptable(r, lines, listing):
        if r.rc == 0:
            return r.out == listing        # e.g. the creation time, which nothing reads
        return (r.rc in (EXIT_NO_REPOSITORY, EXIT_WRONG_PASSPHRASE, EXIT_CORRUPT) and len(lines) == 1
                and lines[0].startswith("fsbackup: error: ") and (r.rc != EXIT_CORRUPT or "config" in lines[0]))

    failures = each_one_byte_damage(env, env.repo / "config", acceptable)
    assert not failures, "\n".join(failures[:10])


def test_damaged_repository_id_in_the_config_is_reported_as_corrupt_config_not_as_wrong_passphrase(
        env, tmp_path, backed):
    path = env.repo / "config"
    raw = path.read_bytes()
    repo_id = json.loads(raw)["id"]
    flip(path, raw.index(repo_id.encode()) + 3)
    r = env.run("ls", "latest")
    assert "wrong passphrase" not in r.err, "a damaged config makes the right passphrase look wrong: " + r.err
    assert_one_line_error(r, EXIT_CORRUPT, "config")
