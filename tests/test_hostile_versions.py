"""Version objects written by someone who holds the key but not our intentions (another machine's
passphrase, a buggy writer): names that climb out of the tree, trees that loop, zstd bombs.

Each is encoded with the repository's real keys, so it authenticates. Every one must be reported
as corrupt (exit 12, naming the object), never recorded, never restored, never loop, never take
much memory, and `repair --remove-damaged` must remove it.
"""
from __future__ import annotations

import copy
import secrets
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import msgpack
import pytest
import zstandard
from conftest import TEST_PASSWORD, write

from fsbackup.backends.local import LocalBackend
from fsbackup.codec import wire
from fsbackup.errors import EXIT_CORRUPT, CorruptObject
from fsbackup.repository import Repository, version_object

COMMAND_TIMEOUT = 60      # a tree that loops would hang the command: it is killed and the test fails


def open_repository(env) -> Repository:
    return Repository.open(LocalBackend(str(env.repo)), TEST_PASSWORD.encode(), str(env.tmp / "craft.sqlite"))


@pytest.fixture
def good(env, tmp_path):
    """A repository with one real version of a small tree; returns (its header, its entries)."""
    src = tmp_path / "src"
    write(src / "dir" / "file", b"file data")
    write(src / "other", b"other data")
    env.ok("backup", src)
    repo = open_repository(env)
    try:
        (name,) = [n.split("/", 1)[1] for n, _ in repo.backend.list("versions/")]
        head, entries = repo.load_version(name)
        return head, list(entries)
    finally:
        repo.close()


def newer(head: dict) -> dict:
    return dict(head, time_ns=head["time_ns"] + 10**12)      # so that it is the latest version


def store_crafted(env, head: dict, entries: list) -> str:
    """Store a version object of `head` and `entries`, encoded with the repository's keys as
    the newest version; returns its object name."""
    repo = open_repository(env)
    try:
        name = secrets.token_hex(32)
        sealed = wire.encode_version(repo.keys, bytes.fromhex(name), newer(head), entries)
        repo.backend.put(version_object(name), sealed)
        return version_object(name)
    finally:
        repo.close()


def store_frames(env, frames: list[bytes]) -> str:
    """Store a version object of these zstd frames (the header's first), sealed as the encoder
    seals them; returns its object name."""
    repo = open_repository(env)
    try:
        name = secrets.token_hex(32)
        cipher = repo.keys.object_cipher(b"version", bytes.fromhex(name))
        data = bytearray(wire.header(wire.VERSION_MAGIC))
        for n, frame in enumerate(frames):
            sealed = cipher.seal(wire._frame_nonce(n), frame, wire._frame_ad(n, n == len(frames) - 1))
            data += wire.FRAME_LEN.pack(len(sealed)) + sealed
        repo.backend.put(version_object(name), bytes(data))
        return version_object(name)
    finally:
        repo.close()


def run(env, *args) -> subprocess.CompletedProcess:
    """The CLI in a process of its own, killed (failing the test) after COMMAND_TIMEOUT."""
    return subprocess.run([sys.executable, "-m", "fsbackup", *map(str, args)], env=env.environ(),
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT)


def assert_reported_corrupt(env, tmp_path: Path, obj: str) -> None:
    """`check` names `obj` as corrupt with exit 12; `ls` and `restore` of the newest version use
    the good one and write nothing outside the target, with or without a local index; `repair
    --remove-damaged` removes `obj`, after which `check` finds no damage."""
    for fresh_index in (False, True):
        if fresh_index:
            for p in env.cache.rglob("index.sqlite*"):
                p.unlink()
        r = run(env, "ls", "latest", "-l")
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
        assert r.returncode == 0 and f"{obj} does not read" in r.stderr, r.stderr
        target = tmp_path / f"out-{fresh_index}"
        r = run(env, "restore", "latest", "--target", target)
        assert r.returncode == 0, r.stderr
        assert not (tmp_path / "escaped").exists() and not (env.tmp.parent / "escaped").exists()
        for archive in ("tar", "zip"):
            assert_dump_names_stay_inside(env, tmp_path / f"dump-{fresh_index}.{archive}", archive)
        r = run(env, "check")
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
        assert r.returncode == EXIT_CORRUPT and obj in r.stdout + r.stderr, r.stdout + r.stderr
    r = env.run("repair", "--remove-damaged")
    assert r.rc == 0, r.out + r.err
    assert not (env.repo / obj).exists()
    env.ok("check")


def assert_dump_names_stay_inside(env, archive_path: Path, archive: str) -> None:
    """`dump latest /` as `archive` uses the good version: every member name is relative, free
    of '.' and '..' parts, and none is the crafted entry."""
    r = run(env, "dump", "latest", "/", "--archive", archive, "-o", archive_path)
    assert r.returncode == 0, r.stderr
    if archive == "tar":
        with tarfile.open(archive_path) as tar:
            names = tar.getnames()
    else:
        with zipfile.ZipFile(archive_path) as z:
            names = z.namelist()
    assert names
    for name in names:
        parts = name.rstrip("/").split("/")
        assert not name.startswith("/") and "." not in parts and ".." not in parts and "" not in parts, name
        assert "escaped" not in parts and "child" not in parts, name


# ---- names and tree shape -------------------------------------------------------------------

def named(entries: list, index: int, name: bytes) -> list:
    entries = copy.deepcopy(entries)
    entries[index][wire.E_NAME] = name
    return entries


def parented(entries: list, index: int, parent: int) -> list:
    entries = copy.deepcopy(entries)
    entries[index][wire.E_PARENT] = parent
    return entries


def climbing(entries: list, name: bytes) -> list:
    """The tree with one more directory, named `name`, under the root, holding a file `escaped`."""
    entries = copy.deepcopy(entries)
    directory = next(e for e in entries if e[wire.E_TYPE] == "d" and e[wire.E_PARENT] != 0)
    file = next(e for e in entries if e[wire.E_TYPE] == "f")
    entries.append(list(directory))
    entries[-1][wire.E_PARENT], entries[-1][wire.E_NAME] = 1, name
    entries.append(list(file))
    entries[-1][wire.E_PARENT], entries[-1][wire.E_NAME] = len(entries) - 1, b"escaped"
    return entries


def file_index(entries: list) -> int:
    return next(i for i, e in enumerate(entries) if e[wire.E_TYPE] == "f")


def dir_index(entries: list) -> int:
    return next(i for i, e in enumerate(entries) if e[wire.E_TYPE] == "d" and i > 0)


CRAFTED = {
    "dot-dot directory": lambda es: climbing(es, b".."),
    "dot directory": lambda es: climbing(es, b"."),
    "slash in a name": lambda es: named(es, file_index(es), b"../../escaped"),
    "NUL in a name": lambda es: named(es, file_index(es), b"file\0name"),
    "empty name": lambda es: named(es, file_index(es), b""),
    "root is its own parent": lambda es: parented(es, 0, 1),
    "child before its parent": lambda es: parented(es, dir_index(es), len(es)),
    "entry is its own parent": lambda es: parented(es, dir_index(es), dir_index(es) + 1),
    "second root": lambda es: parented(es, file_index(es), 0),
    "parent is a file": lambda es: under_file(es),
}


def under_file(entries: list) -> list:
    """The tree with one more file, `child`, whose parent is a file."""
    entries = copy.deepcopy(entries)
    child = list(entries[file_index(entries)])
    child[wire.E_PARENT], child[wire.E_NAME] = file_index(entries) + 1, b"child"
    return entries + [child]


@pytest.mark.parametrize("case", list(CRAFTED))
def test_a_crafted_tree_is_reported_corrupt_and_never_restored(env, tmp_path, good, case):
    head, entries = good
    obj = store_crafted(env, head, CRAFTED[case](entries))
    assert_reported_corrupt(env, tmp_path, obj)


def test_hard_links_of_different_types_are_reported_corrupt(env, tmp_path, good):
    head, entries = good
    crafted = copy.deepcopy(entries)
    file = crafted[file_index(crafted)]
    file[wire.E_NLINK] = 2
    link = list(file)
    link[wire.E_NAME], link[wire.E_TYPE], link[wire.E_CONTENT], link[wire.E_TARGET] = b"link", "l", None, b"/etc"
    crafted.append(link)
    obj = store_crafted(env, head, crafted)
    assert_reported_corrupt(env, tmp_path, obj)


def test_every_check_of_a_tree_names_the_entry():
    """The codec's check, alone: each fault is CorruptObject naming the object and the entry."""
    root = [0, b"", "d", 0o40755, 0, 0, None, None, 0, 0, 0, 0, 1, 1, 2, 0, None, None, None]
    file = [1, b"f", "f", 0o100644, 0, 0, None, None, 0, 0, 0, 0, 2, 1, 1, 0, None, None, [bytes(32), 0, b""]]
    check = wire.TreeCheck("versions/x")
    assert check(list(root)) == root and check(list(file)) == file
    for fault in ([1, b"..", *file[2:]], [1, b"a/b", *file[2:]], [2, b"g", *file[2:]], [3, b"g", *file[2:]],
                  [1, b"g", "x", *file[3:]], file[:-1], [1, b"g", *file[2:8], "t", *file[9:]]):
        with pytest.raises(CorruptObject, match=r"versions/x .*entry 3"):
            check(list(fault))
    with pytest.raises(CorruptObject, match="has no root entry"):
        list(wire.checked_entries([], "versions/x"))


# ---- zstd bombs ---------------------------------------------------------------------------

BOMB = 2 << 30


def zeros_frame(declare_size: bool) -> bytes:
    """A zstd frame of BOMB zero bytes, a few hundred KiB long, declaring its size or not."""
    compressor = zstandard.ZstdCompressor(level=1, write_content_size=declare_size)
    obj = compressor.compressobj(size=BOMB if declare_size else -1)
    chunk = bytes(1 << 24)
    return b"".join([*(obj.compress(chunk) for _ in range(BOMB // len(chunk))), obj.flush()])


PEAK_MEMORY = 512 << 20
MEASURED = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)")


def run_measured(env, *args) -> tuple[int, str, int]:
    """(exit code, stderr, peak memory in bytes) of the CLI in a process of its own (the only
    child of a small parent that measures it), killed after COMMAND_TIMEOUT."""
    p = subprocess.run([sys.executable, "-c", MEASURED, sys.executable, "-m", "fsbackup", *map(str, args)],
                       env=env.environ(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                       timeout=COMMAND_TIMEOUT)
    *lines, peak_kib = p.stderr.splitlines()
    return p.returncode, "\n".join(lines), int(peak_kib) << 10


@pytest.mark.parametrize("where", ["header frame", "entry frame"])
@pytest.mark.parametrize("declared", [True, False], ids=["declared size", "undeclared size"])
def test_a_zstd_bomb_in_a_version_object_is_corrupt_in_bounded_memory(env, tmp_path, good, where, declared):
    head, entries = good
    header = wire._zstd_c().compress(msgpack.packb(newer(head)))
    root = wire._zstd_c().compress(msgpack.packb(entries[0]))
    bomb = zeros_frame(declared)
    obj = store_frames(env, [bomb, root] if where == "header frame" else [header, bomb])
    for p in env.cache.rglob("index.sqlite*"):
        p.unlink()                                        # a new machine: the index is built from the remote
    for command, code in (("versions", 0), ("check", EXIT_CORRUPT)):
        rc, err, peak = run_measured(env, command)
        assert "Traceback" not in err and "internal error" not in err, err
        assert rc == code and obj in err, err
        assert peak <= PEAK_MEMORY, f"{command} peaked at {peak >> 20} MiB"
    r = env.run("repair", "--remove-damaged")
    assert r.rc == 0 and not (env.repo / obj).exists(), r.out + r.err
    env.ok("check")


def test_decompression_is_bounded_by_what_a_frame_declares_and_what_it_expands_to():
    declared = zstandard.ZstdCompressor(level=1).compress(bytes(4 << 20))
    undeclared = zstandard.ZstdCompressor(level=1, write_content_size=False).compress(bytes(4 << 20))
    for frame in (declared, undeclared):
        assert wire._decompress(frame, 4 << 20) == bytes(4 << 20)
        with pytest.raises(zstandard.ZstdError):
            wire._decompress(frame, (4 << 20) - 1)
        with pytest.raises(zstandard.ZstdError):
            list(wire._decompress_chunks(frame, 1 << 20))
    keys = wire.Keys.from_master_secret(bytes(64))
    cipher = keys.object_cipher(b"blocks", bytes(32))
    data = bytes(1 << 20)
    block_id = keys.block_id(data)
    stored, _ = wire.encode_block(cipher, block_id, data)
    with pytest.raises(CorruptObject, match="more than blocks hold"):
        wire.decode_block(keys, cipher, block_id, stored, wire.MAX_BLOCK_LEN + 1, "data/x")
