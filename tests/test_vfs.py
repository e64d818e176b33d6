"""The version-tree model behind the mount, driven directly (no kernel)."""
from __future__ import annotations

import errno
import os
import stat
import threading
import time

import pytest
from conftest import TEST_PASSWORD, make_full_tree, pseudo_random, write

from fsbackup.backends import open_backend
from fsbackup.backends.retry import RetryingBackend
from fsbackup.mount.namespace import HOSTS_INODE, LATEST_INODE, ROOT_INODE, TAGS_INODE, VERSIONS_INODE, FsOpError
from fsbackup.mount.view import RepositoryView
from fsbackup.repository import Repository


def open_view(env, **kwargs) -> RepositoryView:
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(env.cache)
    try:
        repo = Repository.open(open_backend(str(env.repo)), TEST_PASSWORD.encode())
    finally:
        if old is None:
            del os.environ["XDG_CACHE_HOME"]
        else:
            os.environ["XDG_CACHE_HOME"] = old
    repo.sync_catalog()
    return RepositoryView(repo, **kwargs)


def latest_file(view: RepositoryView, src, name: str):
    """Open `name` below `src` in the newest version."""
    return view.open(resolve(view, "/versions/" + os.fsdecode(view.latest) + f"{src}/{name}").ino)


def one_file_view(env, tmp_path, data: bytes, **view_options):
    """Back up one file holding `data`; return a view and that file, opened."""
    src = tmp_path / "src"
    write(src / "a", data)
    env.ok("backup", src)
    view = open_view(env, **view_options)
    return view, latest_file(view, src, "a")


def walk(view: RepositoryView, ino: int, path: bytes = b""):
    for name, attr, _ in view.readdir(ino, 0, 100000):
        yield path + b"/" + name, attr
        if stat.S_ISDIR(attr.mode):
            yield from walk(view, attr.ino, path + b"/" + name)


def resolve(view: RepositoryView, path: str):
    attr = view.getattr(ROOT_INODE)
    for part in path.strip("/").split("/"):
        attr = view.lookup(attr.ino, os.fsencode(part))
    return attr


@pytest.fixture
def backed_up(env, tmp_path):
    src = make_full_tree(tmp_path / "src")
    env.ok("backup", src)
    return env, src


def test_top_level_has_versions_and_latest(backed_up):
    env, src = backed_up
    view = open_view(env)
    names = [n for n, _, _ in view.readdir(ROOT_INODE, 0)]
    assert names == [b"versions", b"latest", b"hosts", b"tags", b"history"]
    (vname, vattr, _), = view.readdir(VERSIONS_INODE, 0)
    assert len(vname) == len(b"2026-11-24_10-00-00") and b":" not in vname
    assert view.readlink(LATEST_INODE) == b"versions/" + vname
    assert stat.S_ISDIR(vattr.mode)


def test_attributes_match_the_source(backed_up):
    env, src = backed_up
    view = open_view(env)
    base = "/versions/" + os.fsdecode(view.latest) + str(src)
    for rel in ("text.txt", "sparse", "link-to-text", "fifo", "empty dir", "deep/a"):
        attr = resolve(view, f"{base}/{rel}")
        st = os.lstat(src / rel)
        assert (attr.mode, attr.uid, attr.gid, attr.mtime_ns) == (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns), rel
        if not stat.S_ISDIR(st.st_mode):
            assert attr.size == st.st_size, rel
    sparse = resolve(view, f"{base}/sparse")
    assert sparse.blocks * 512 < 64 * 1024            # holes are not counted
    assert view.readlink(resolve(view, f"{base}/link-to-text").ino) == b"text.txt"


def test_hard_links_share_one_inode_and_count_their_links(backed_up):
    env, src = backed_up
    view = open_view(env)
    base = "/versions/" + os.fsdecode(view.latest) + str(src)
    a, b = resolve(view, f"{base}/random.bin"), resolve(view, f"{base}/hardlink-to-random")
    assert a.ino == b.ino and a.nlink == b.nlink == 2
    assert view.getattr(a.ino) == a


def test_xattrs_and_missing_xattr_is_enodata(backed_up):
    env, src = backed_up
    view = open_view(env)
    ino = resolve(view, "/versions/" + os.fsdecode(view.latest) + f"{src}/text.txt").ino
    assert view.listxattr(ino) == [b"user.comment"]
    assert view.getxattr(ino, b"user.comment") == b"an xattr value"
    with pytest.raises(FsOpError) as e:
        view.getxattr(ino, b"user.nope")
    assert e.value.errno == errno.ENODATA


def test_fetch_threads_start_with_the_mount_each_with_its_index_connection(env, tmp_path, monkeypatch):
    """The first read of a mount finds its fetch threads running and connected: it pays for
    neither a thread start nor opening the local index."""
    write(tmp_path / "src" / "a", b"x")
    env.ok("backup", tmp_path / "src")
    connected = set()
    real = RepositoryView._catalog

    def recording(self):
        connected.add(threading.current_thread().name)
        return real(self)
    monkeypatch.setattr(RepositoryView, "_catalog", recording)
    view = open_view(env, fetch_threads=3)
    try:
        deadline = time.monotonic() + 10
        while len({n for n in connected if n.startswith("fsbackup-fetch")}) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert {n for n in connected if n.startswith("fsbackup-fetch")} == \
            {"fsbackup-fetch_0", "fsbackup-fetch_1", "fsbackup-fetch_2"}
    finally:
        view.close()


def test_reads_return_exact_bytes_at_any_offset(env, tmp_path):
    data = pseudo_random(9 << 20, 5)
    view, f = one_file_view(env, tmp_path, data)
    import random
    rng = random.Random(1)
    for _ in range(200):
        off = rng.randrange(0, len(data) + 10)
        size = rng.choice([1, 100, 4096, 131072, 3 << 20])
        assert view.read(f, off, size) == data[off:off + size]
    # a sequential reader gets the whole file and prefetch kicks in
    out = b"".join(view.read(f, off, 131072) for off in range(0, len(data), 131072))
    assert out == data


def test_concurrent_readers_get_correct_bytes(env, tmp_path):
    src = tmp_path / "src"
    files = {f"f{i}": pseudo_random((2 << 20) + i * 1000, 40 + i) for i in range(6)}
    for name, data in files.items():
        write(src / name, data)
    env.ok("backup", src)
    view = open_view(env, memory_cache=4 << 20)
    base = "/versions/" + os.fsdecode(view.latest) + str(src)
    errors = []

    def reader(name: str, seed: int):
        import random
        rng = random.Random(seed)
        f = view.open(resolve(view, f"{base}/{name}").ino)
        data = files[name]
        for _ in range(40):
            off = rng.randrange(0, len(data))
            if view.read(f, off, 65536) != data[off:off + 65536]:
                errors.append(name)

    threads = [threading.Thread(target=reader, args=(name, i)) for i in range(3) for name in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_directory_listing_pages_resume_by_offset(env, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2500):
        (src / f"file-{i:05d}").touch()
    env.ok("backup", src)
    view = open_view(env)
    dir_ino = resolve(view, "/versions/" + os.fsdecode(view.latest) + str(src)).ino
    names, offset = [], 0
    while True:
        page = view.readdir(dir_ino, offset, 300)
        if not page:
            break
        names += [n for n, _, _ in page]
        offset = page[-1][2]
    assert names == sorted(os.fsencode(f"file-{i:05d}") for i in range(2500))


def test_corrupt_block_fails_that_read_only(env, tmp_path):
    src = tmp_path / "src"
    write(src / "a", pseudo_random(300_000, 1))
    write(src / "b", pseudo_random(300_000, 2))
    env.ok("backup", src, "--volume-size", "100K")      # a and b land in different volumes
    view = open_view(env)
    base = "/versions/" + os.fsdecode(view.latest) + str(src)
    fa = view.open(resolve(view, f"{base}/a").ino)
    bid = fa.extents[0][0]
    vol, offset, _, _ = view.repo.block_location(bid)
    path = env.repo / "data" / vol[:2] / vol
    raw = bytearray(path.read_bytes())
    raw[offset + 10] ^= 0xFF
    path.write_bytes(bytes(raw))
    view = open_view(env)          # a fresh memory cache: open() may have prefetched the block intact
    fa = view.open(resolve(view, f"{base}/a").ino)
    from fsbackup.errors import CorruptObject
    with pytest.raises(CorruptObject) as e:
        view.read(fa, 0, 4096)
    assert vol in str(e.value)
    fb = view.open(resolve(view, f"{base}/b").ino)
    assert view.read(fb, 0, 300_000) == pseudo_random(300_000, 2)


def test_new_versions_appear_after_refresh(env, tmp_path):
    src = tmp_path / "src"
    write(src / "a", b"one")
    env.ok("backup", src)
    view = open_view(env)
    assert len(view.readdir(VERSIONS_INODE, 0)) == 1
    time.sleep(1.1)                        # a different second: a different directory name
    write(src / "a", b"two")
    env.ok("backup", src)
    assert view.refresh_versions()
    assert len(view.readdir(VERSIONS_INODE, 0)) == 2
    latest = view.readlink(LATEST_INODE).split(b"/")[1]
    f = view.open(resolve(view, f"/versions/{os.fsdecode(latest)}{src}/a").ino)
    assert view.read(f, 0, 10) == b"two"


def test_disk_cache_serves_blocks_and_drops_damaged_entries(env, tmp_path):
    data = pseudo_random(3 << 20, 8)
    cache = tmp_path / "blocks"
    view, f = one_file_view(env, tmp_path, data, cache_dir=str(cache), cache_size=64 << 20, memory_cache=1)
    assert view.read(f, 0, len(data)) == data
    entries = list(cache.iterdir())
    assert entries and oct(cache.stat().st_mode & 0o777) == oct(0o700)
    for e in entries:                       # damage the cache: reads must still be right
        raw = bytearray(e.read_bytes())
        raw[5] ^= 1
        e.write_bytes(bytes(raw))
    view2 = open_view(env, cache_dir=str(cache), cache_size=64 << 20, memory_cache=1)
    f2 = latest_file(view2, tmp_path / "src", "a")
    assert view2.read(f2, 0, len(data)) == data


class FlakyBackend:
    """Wraps a backend: range reads fail temporarily while `down` is set."""

    def __init__(self, inner):
        self.inner, self.down, self.failures = inner, False, 0

    def get(self, name, offset=0, length=None):
        from fsbackup.errors import BackendError
        if self.down:
            self.failures += 1
            raise BackendError("connection reset (simulated)", temporary=True)
        return self.inner.get(name, offset, length)

    def __getattr__(self, attr):
        return getattr(self.inner, attr)


def test_unreachable_storage_retries_for_a_bounded_time_then_fails_and_recovers(env, tmp_path):
    from fsbackup.errors import BackendError
    data = pseudo_random(500_000, 3)
    write(tmp_path / "src" / "a", data)
    env.ok("backup", tmp_path / "src")
    view = open_view(env, memory_cache=1)
    # Below the retry layer, which the mount bounds (here to 0.5 s instead of 30 s). Down before
    # the file is opened: the fetch an open starts must not bring the block in first.
    flaky = FlakyBackend(view.repo.backend.inner)
    view.repo.backend = RetryingBackend(flaky, max_seconds=0.5, base_delay=0.1)
    flaky.down = True
    f = latest_file(view, tmp_path / "src", "a")
    t = time.monotonic()
    with pytest.raises(BackendError):
        view.read(f, 0, 1000)
    assert 0.3 < time.monotonic() - t < 5 and flaky.failures >= 2     # retried, with backoff, then gave up
    flaky.down = False
    assert view.read(f, 0, 1000) == data[:1000]                       # and it recovers


def test_disk_cache_stays_within_its_size(env, tmp_path):
    data = pseudo_random(12 << 20, 4)
    cache = tmp_path / "blocks"
    view, f = one_file_view(env, tmp_path, data, cache_dir=str(cache), cache_size=3 << 20, memory_cache=1)
    assert view.read(f, 0, len(data)) == data
    assert sum(p.stat().st_size for p in cache.iterdir()) <= 3 << 20


def test_versions_coming_or_going_make_the_top_level_and_their_entries_stale(env, tmp_path):
    src = tmp_path / "src"
    write(src / "a", b"x")
    env.ok("backup", src)
    view = open_view(env)
    try:
        first = view.latest
        env.ok("backup", src)
        changed = view.refresh_versions()
        assert first not in changed and len(changed) == 1
        stale = view.invalidations(changed)
        assert sorted(stale.inodes) == [ROOT_INODE, VERSIONS_INODE, LATEST_INODE, HOSTS_INODE, TAGS_INODE]
        assert sorted(stale.entries) == sorted([(ROOT_INODE, b"latest"), (VERSIONS_INODE, view.latest)])
        with pytest.raises(FsOpError) as e:
            view.lookup(LATEST_INODE, b"x")
        assert e.value.errno == errno.ENOTDIR
    finally:
        view.close()
