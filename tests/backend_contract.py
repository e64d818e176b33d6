"""The backend contract (fsbackup/backends/__init__.py), as one suite every backend's tests reuse.

A backend's test file subclasses `BackendContract` and says how to make the backend:

    class TestLocalBackend(BackendContract):
        def make_backend(self, tmp_path, monkeypatch):
            return LocalBackend(str(tmp_path / "store"))

Every test here then runs against it (pytest collects the subclass, not this base). Besides the
methods' contract, the suite checks the traits a backend declares (`BackendTraits`) wherever
they can be checked: a put over a name replaces it whole, never torn, under concurrent readers
and writers (`atomic_replace`); an object is listed as soon as its put returns and no more once
its delete returns (`immediate_listing`, which the locks rely on).
"""
from __future__ import annotations

import string
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from fsbackup.backends import Backend, BackendTraits, Latency
from fsbackup.errors import NoSuchObject

ALLOWED = string.ascii_letters + string.digits + "._-"     # every character a name part may hold
THREADS = 8


def run_together(work, count: int = THREADS) -> list:
    """`work(i)` for i in range(count), all started at once in threads; their results, in order.
    An exception in any of them is raised here."""
    start = threading.Barrier(count)

    def started(i):
        start.wait()
        return work(i)
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(started, range(count)))


class BackendContract:
    """The contract suite. Subclasses define `make_backend(tmp_path, monkeypatch)`, and may
    override `clean_up(backend)` (run after each test, e.g. to empty a real bucket)."""

    shared_size = 64 << 10     # bytes of the object several threads replace at once

    def make_backend(self, tmp_path, monkeypatch) -> Backend:
        raise NotImplementedError

    def clean_up(self, backend: Backend) -> None:
        pass

    @pytest.fixture
    def backend(self, tmp_path, monkeypatch):
        store = self.make_backend(tmp_path, monkeypatch)
        try:
            yield store
        finally:
            self.clean_up(store)

    # ---- declared properties ------------------------------------------------------------------

    def test_declares_its_traits_and_connections(self, backend):
        assert isinstance(backend.traits, BackendTraits)
        assert isinstance(backend.traits.latency, Latency)
        assert isinstance(backend.connections, int) and backend.connections >= 1
        assert backend.url

    # ---- one caller ---------------------------------------------------------------------------

    def test_put_then_get_returns_the_bytes(self, backend):
        backend.put("data/ab/abc", b"hello world")
        assert backend.get("data/ab/abc") == b"hello world"
        assert backend.size("data/ab/abc") == 11
        assert backend.exists("data/ab/abc")

    def test_byte_ranges(self, backend):
        backend.put("x", bytes(range(100)))
        assert backend.get("x", 10, 5) == bytes(range(10, 15))
        assert backend.get("x", 0, 1) == b"\x00"
        assert backend.get("x", 99, 1) == b"\x63"
        assert backend.get("x", 90) == bytes(range(90, 100))
        assert backend.get("x", 5, 0) == b""

    def test_ranges_past_the_end_return_what_exists(self, backend):
        backend.put("x", bytes(range(100)))
        assert backend.get("x", 95, 50) == bytes(range(95, 100))    # reaches past the end
        assert backend.get("x", 99, 10) == b"\x63"
        assert backend.get("x", 100, 1) == b""                       # starts at the end
        assert backend.get("x", 200, 5) == b""                       # starts beyond it
        assert backend.get("x", 250) == b""
        with pytest.raises(NoSuchObject):
            backend.get("nope", 200, 5)                              # but a missing object is missing

    def test_missing_objects_raise_no_such_object(self, backend):
        with pytest.raises(NoSuchObject):
            backend.get("nope")
        with pytest.raises(NoSuchObject) as e:
            backend.get("versions/nope", 3, 4)
        assert e.value.name == "versions/nope"                       # the name as the caller gave it
        with pytest.raises(NoSuchObject):
            backend.size("nope")
        assert not backend.exists("nope")
        backend.delete("nope")                                       # not an error

    def test_deleting_twice_is_fine(self, backend):
        backend.put("locks/a", b"x")
        backend.delete("locks/a")
        backend.delete("locks/a")
        assert not backend.exists("locks/a") and list(backend.list("locks/")) == []

    def test_what_delete_removed_is_not_kept_hidden(self, backend):
        """`hidden` names what someone hid; fsbackup's own deletes (of an object written over
        once, too) leave nothing behind, so a forget is never taken for a hide."""
        backend.put("versions/a", b"first")
        backend.put("versions/a", b"second")
        backend.delete("versions/a")
        assert backend.hidden({"versions/a", "versions/never-stored"}) == set()

    def test_put_replaces_whole(self, backend):
        backend.put("k", b"long first content")
        backend.put("k", b"short")
        assert backend.get("k") == b"short" and backend.size("k") == 5
        assert list(backend.list("k")) == [("k", 5)]

    def test_list_by_prefix(self, backend):
        for name in ("versions/a", "versions/b", "index/c", "data/cc/c", "config"):
            backend.put(name, name.encode())
        assert sorted(backend.list("versions/")) == [("versions/a", 10), ("versions/b", 10)]
        assert sorted(n for n, _ in backend.list("")) == sorted(["versions/a", "versions/b", "index/c", "data/cc/c",
                                                                 "config"])
        assert sorted(n for n, _ in backend.list("data/")) == ["data/cc/c"]
        assert list(backend.list("nothing/")) == []
        backend.delete("versions/a")
        assert [n for n, _ in backend.list("versions/")] == ["versions/b"]

    def test_listing_with_times_says_when_each_object_was_written(self, backend):
        """`list_modified`: the listing of `list`, with each object's time of writing by the store's
        clock (prune and repair judge leftovers by their age); a put over a name makes it new."""
        import time
        before = time.time()
        for name in ("versions/a", "index/c", "data/cc/c"):
            backend.put(name, name.encode())
        listed = {name: (size, modified) for name, size, modified in backend.list_modified("")}
        assert sorted(listed) == sorted(n for n, _ in backend.list(""))
        assert {name: size for name, (size, _) in listed.items()} == dict(backend.list(""))
        # (a store's clock may be a little off ours: a minute either way is allowed)
        assert all(before - 60 <= modified <= time.time() + 60 for _, modified in listed.values())
        assert [n for n, _, _ in backend.list_modified("data/")] == ["data/cc/c"]
        assert list(backend.list_modified("nothing/")) == []

    def test_empty_object(self, backend):
        backend.put("empty", b"")
        assert backend.get("empty") == b"" and backend.size("empty") == 0
        assert list(backend.list("empty")) == [("empty", 0)]

    def test_names_with_every_allowed_character(self, backend):
        names = [ALLOWED, f"{ALLOWED[::-1]}/{ALLOWED}", "data/-_.x/Z.9-_"]
        for i, name in enumerate(names):
            backend.put(name, bytes([i]) * (i + 1))
        for i, name in enumerate(names):
            assert backend.get(name) == bytes([i]) * (i + 1) and backend.size(name) == i + 1
        assert sorted(backend.list("")) == sorted((name, i + 1) for i, name in enumerate(names))
        assert [n for n, _ in backend.list(f"{ALLOWED[::-1]}/")] == [names[1]]
        for name in names:
            backend.delete(name)
        assert list(backend.list("")) == []

    def test_an_object_is_listed_as_soon_as_put_returns(self, backend):
        """What `immediate_listing` promises; the locks rely on it (a lock just written is seen)."""
        if not backend.traits.immediate_listing:
            pytest.skip("this backend does not declare immediate listing")
        for i in range(5):
            name = f"locks/{i:02d}"
            backend.put(name, b"lock")
            assert (name, 4) in list(backend.list("locks/"))
            backend.delete(name)
            assert name not in [n for n, _ in backend.list("locks/")]

    # ---- several threads ------------------------------------------------------------------------

    def test_concurrent_puts_gets_lists_and_deletes_of_distinct_names(self, backend):
        rounds = 4

        def work(i: int) -> None:
            folder = f"data/{i:02x}/"
            for k in range(rounds):
                name, data = f"{folder}{k}", bytes([i, k]) * (1000 + 97 * i + k)
                backend.put(name, data)
                assert backend.get(name) == data
                assert backend.get(name, 7, 100) == data[7:107]
                listed = dict(backend.list(folder))
                if backend.traits.immediate_listing:
                    assert listed.get(name) == len(data)
                if k % 2:
                    backend.delete(name)
                    assert not backend.exists(name)
            assert sorted(n for n, _ in backend.list(folder)) == [f"{folder}{k}" for k in range(0, rounds, 2)]
        run_together(work)
        assert len(list(backend.list("data/"))) == THREADS * rounds // 2

    def test_concurrent_puts_of_one_name_are_never_torn(self, backend):
        """Writers replace one name while readers read it whole and in ranges: every read is
        exactly one writer's object (or its part), never a mix or a prefix."""
        if not backend.traits.atomic_replace:
            pytest.skip("this backend does not declare atomic replacement")
        writers, size = THREADS // 2, self.shared_size
        payloads = {bytes([w + 1]) * size for w in range(writers)}
        backend.put("shared", bytes([1]) * size)

        def work(i: int) -> None:
            for k in range(6):
                if i < writers:
                    backend.put("shared", bytes([i + 1]) * size)
                else:
                    whole = backend.get("shared")
                    assert whole in payloads, (len(whole), set(whole))
                    part = backend.get("shared", k, size // 4)
                    assert len(part) == size // 4 and len(set(part)) == 1
                    assert dict(backend.list("shared")) == {"shared": size}
        run_together(work)
        assert backend.get("shared") in payloads and dict(backend.list("")) == {"shared": size}
