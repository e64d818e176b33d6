"""The mount's per-file path: small files read in directory order come in runs, opens after a
listing need no query, loads are shared and always settled, and xattr requests can be switched
off where they hide nothing. The model is driven directly where counting matters; real mounts
show what a person sees."""
from __future__ import annotations

import errno
import os
import threading
import time

import pytest
from conftest import make_full_tree, pseudo_random, write
from test_mount import FUSE_MISSING, mounted  # noqa: F401 - a fixture
from test_vfs import open_view, resolve

from fsbackup.backends import BackendTraits, Latency
from fsbackup.errors import CorruptObject
from fsbackup.mount.namespace import FsOpError
from fsbackup.mount.reading import REMOTE_RUN_BYTES, RUN_BYTES


class CountingGets:
    """A backend wrapper that counts range reads."""

    def __init__(self, inner):
        self.inner = inner
        self.gets = 0
        self.lock = threading.Lock()

    def get(self, name, offset=0, length=None):
        with self.lock:
            self.gets += 1
        return self.inner.get(name, offset, length)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class RemoteCountingGets(CountingGets):
    """CountingGets on storage that declares itself remote (a request costs a round trip)."""
    traits = BackendTraits(latency=Latency.REMOTE)


def small_files(src, count: int, size: int = 3000) -> dict[str, bytes]:
    files = {f"f{i:04d}.txt": pseudo_random(size + i, i) for i in range(count)}
    for name, data in files.items():
        write(src / "dir" / name, data)
    return files


def version_dir(view, src) -> str:
    return "/versions/" + os.fsdecode(view.latest) + str(src)


def test_small_files_read_in_directory_order_come_in_a_few_range_reads(env, tmp_path):
    src = tmp_path / "src"
    files = small_files(src, 400)
    env.ok("backup", src)
    view = open_view(env)
    counting = view.repo.backend = CountingGets(view.repo.backend)
    base = version_dir(view, src) + "/dir"
    directory = resolve(view, base)
    listed = view.readdir(directory.ino, 0, 1000)
    assert [n.decode() for n, _, _ in listed] == sorted(files)
    for name, attr, _ in listed:
        f = view.open(attr.ino)
        assert view.read(f, 0, 131072) == files[name.decode()]
    # 400 files of about 3 KiB (1.2 MiB stored): the first file's block comes alone, then runs of
    # up to 1 MiB bring the others, each on its way before the reader gets there. (A reader that
    # overtakes the fetch thread before it claimed the run starts a run of its own: a few, more
    # on a busy machine; one per file, 400, without runs.)
    total = sum(len(d) for d in files.values())
    assert view.memory.misses <= 10, view.memory.misses
    assert counting.gets <= 2 * view.memory.misses + total // RUN_BYTES + 2, counting.gets
    view.close()


def test_a_large_file_read_in_order_from_remote_storage_comes_in_runs_of_several_blocks(env, tmp_path):
    src = tmp_path / "src"
    data = pseudo_random(24 << 20, 7)
    write(src / "big.bin", data)
    env.ok("backup", src)
    view = open_view(env)
    counting = view.repo.backend = RemoteCountingGets(view.repo.backend)
    try:
        f = view.open(resolve(view, version_dir(view, src) + "/big.bin").ino)
        blocks = len(f.extents)
        assert blocks >= 16, blocks                     # (blocks average about 1 MiB)
        read = b"".join(view.read(f, offset, 131072) for offset in range(0, len(data), 131072))
        assert read == data
        # The first block comes alone (the file's first read waits for it alone), then the read-ahead
        # brings the others in runs of up to REMOTE_RUN_BYTES: 24 MiB in 3 or 4 of them, while
        # loading block by block costs one range read per block.
        assert counting.gets <= 1 + len(data) // REMOTE_RUN_BYTES + 3, (counting.gets, blocks)
        assert not view.memory._loading               # every load was settled
    finally:
        view.close()


def test_a_large_file_from_remote_storage_already_in_the_disk_cache_is_read_without_range_reads(env, tmp_path):
    src = tmp_path / "src"
    data = pseudo_random(12 << 20, 8)
    write(src / "big.bin", data)
    env.ok("backup", src)
    view = open_view(env, cache_dir=str(tmp_path / "blocks"), memory_cache=2 << 20)
    counting = view.repo.backend = RemoteCountingGets(view.repo.backend)
    try:
        f = view.open(resolve(view, version_dir(view, src) + "/big.bin").ino)
        read = b"".join(view.read(f, offset, 131072) for offset in range(0, len(data), 131072))
        assert read == data and counting.gets > 0
        counting.gets = 0
        # The memory cache (2 MiB) keeps only the file's end: the read-ahead finds the rest on disk.
        read = b"".join(view.read(f, offset, 131072) for offset in range(0, len(data), 131072))
        assert read == data and counting.gets == 0
    finally:
        view.close()


def test_a_damaged_neighbour_is_left_to_its_reader_and_never_returned(env, tmp_path):
    src = tmp_path / "src"
    files = small_files(src, 50)
    env.ok("backup", src)
    view = open_view(env)
    base = version_dir(view, src) + "/dir"
    victim = view.open(resolve(view, base + "/f0020.txt").ino)
    vol, offset, _, _ = view.repo.block_location(victim.extents[0][0])
    path = env.repo / "data" / vol[:2] / vol
    raw = bytearray(path.read_bytes())
    raw[offset + 20] ^= 0xFF
    path.write_bytes(bytes(raw))
    view.close()
    view = open_view(env)                  # a fresh memory cache
    for name in sorted(files):
        f = view.open(resolve(view, f"{base}/{name}").ino)
        if name == "f0020.txt":
            with pytest.raises(CorruptObject):
                view.read(f, 0, 131072)
        else:
            assert view.read(f, 0, 131072) == files[name]
    # nothing is left waiting: every load was settled
    assert not view.memory._loading
    view.close()


def test_a_load_abandoned_before_the_read_looks_makes_the_read_ask_again_not_answer_nothing(env, tmp_path):
    """A read can find a neighbour's load under way and see it abandoned (the neighbour failed)
    before it checks what it waits for: it must come back as a read to ask again, never as None
    (which the FUSE adapter would hand the kernel as the file's bytes)."""
    from concurrent.futures import Future
    src = tmp_path / "src"
    files = small_files(src, 3)
    env.ok("backup", src)
    view = open_view(env)
    try:
        f = view.open(resolve(view, version_dir(view, src) + "/dir/f0001.txt").ino)
        real_source = view.loader.source
        abandoned: Future = Future()
        abandoned.set_result(None)
        view.loader.source = lambda block_id, with_run: abandoned
        started = view.start_read(f, 0, 1 << 20)
        assert started is not None and not isinstance(started, (bytes, memoryview))
        assert started.waiting() == [] and started.assemble() is None
        view.loader.source = real_source
        assert view.read(f, 0, 1 << 20) == files["f0001.txt"]
    finally:
        view.close()


def test_a_file_opened_after_its_listing_needs_no_query_and_a_forgotten_version_is_enoent(env, tmp_path):
    src = tmp_path / "src"
    small_files(src, 3)
    env.ok("backup", src)
    view = open_view(env)
    directory = resolve(view, version_dir(view, src) + "/dir")
    (_, attr, _), *_ = view.readdir(directory.ino, 0, 10)
    catalog = view._catalog()
    queries = []
    original = catalog.rows
    catalog.rows = lambda sql, args=(): queries.append(sql) or original(sql, args)
    view.open(attr.ino)
    assert queries == []
    env.ok("forget", view.by_name[view.latest].name)
    view.repo.sync_catalog()
    view.refresh_versions()
    with pytest.raises(FsOpError) as e:
        view.open(attr.ino)
    assert e.value.errno == errno.ENOENT
    view.close()


@pytest.mark.skipif(bool(FUSE_MISSING), reason=f"FUSE unavailable: {FUSE_MISSING}")
def test_without_xattrs_in_any_version_the_mount_answers_no_xattr_request(env, tmp_path, mounted):
    src = tmp_path / "src"
    files = small_files(src, 5)
    env.ok("backup", src)
    m = mounted()
    inside = m.version_dir() / str(src).lstrip("/") / "dir"
    for _ in range(2):      # the kernel stops asking: the second answer comes from the kernel itself
        with pytest.raises(OSError) as e:
            os.getxattr(inside / "f0001.txt", "user.anything")
        assert e.value.errno == errno.EOPNOTSUPP
    assert (inside / "f0001.txt").read_bytes() == files["f0001.txt"]
    # a version with xattrs backed up meanwhile: named in the log, its xattrs not shown
    os.setxattr(src / "dir" / "f0001.txt", "user.note", b"new")
    env.ok("backup", src)
    deadline = time.monotonic() + 20
    while "holds extended attributes" not in m.output():
        assert time.monotonic() < deadline, m.output()
        time.sleep(0.2)
    m.stop()
    m2 = mounted()                          # mounted again: now on, and shown
    inside = m2.version_dir() / str(src).lstrip("/") / "dir"
    assert os.getxattr(inside / "f0001.txt", "user.note") == b"new"
    with pytest.raises(OSError) as e:
        os.getxattr(inside / "f0002.txt", "user.note")
    assert e.value.errno == errno.ENODATA


@pytest.mark.skipif(bool(FUSE_MISSING), reason=f"FUSE unavailable: {FUSE_MISSING}")
def test_xattrs_on_and_off_are_obeyed_and_off_with_allow_other_is_refused(env, tmp_path, mounted):
    src = make_full_tree(tmp_path / "src")
    env.ok("backup", src)
    r = env.run("mount", str(tmp_path / "mnt"), "--xattrs", "off", "--allow-other")
    assert r.rc == 2 and "ACLs" in r.err and "Traceback" not in r.err
    m = mounted("--xattrs", "off")
    inside = m.version_dir() / str(src).lstrip("/")
    with pytest.raises(OSError) as e:
        os.getxattr(inside / "text.txt", "user.comment")
    assert e.value.errno == errno.EOPNOTSUPP
    m.stop()
    small = tmp_path / "small"
    small_files(small, 2)
    env.ok("backup", small)
    m2 = mounted("--xattrs", "on")        # asked for even by the newest version, which has none
    with pytest.raises(OSError) as e:
        os.getxattr(m2.version_dir() / str(small).lstrip("/") / "dir" / "f0001.txt", "user.comment")
    assert e.value.errno == errno.ENODATA
