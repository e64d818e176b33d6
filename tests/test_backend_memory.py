"""The in-memory test backend keeps the contract the other backends keep, so tests built on it
test what a real backend would do; `memory://` is a URL only once test code registers it."""
from __future__ import annotations

import pytest
from backend_contract import BackendContract
from conftest import Env
from doubles import memory
from doubles.memory import MemoryBackend

from fsbackup.backends import BackendTraits, Latency, open_backend
from fsbackup.backends.retry import RetryingBackend
from fsbackup.errors import RepositoryNotFound
from fsbackup.repository import Repository


class TestMemoryBackend(BackendContract):
    def make_backend(self, tmp_path, monkeypatch):
        return MemoryBackend()


def test_memory_connections_are_the_default():
    assert MemoryBackend().connections == 2


def test_memory_urls_are_unknown_to_fsbackup_itself(tmp_path):
    with pytest.raises(RepositoryNotFound) as e:
        open_backend("memory://x")
    assert "unknown repository URL scheme 'memory://'" in str(e.value)
    r = Env(tmp_path).run("init", FSBACKUP_REPOSITORY="memory://x")
    assert r.rc == RepositoryNotFound.exit_code and "unknown repository URL scheme 'memory://'" in r.err


def test_a_registered_scheme_serves_the_command_line(tmp_path):
    """A new backend is one registration: then its URLs work everywhere a repository URL does."""
    memory.register()
    try:
        url = "memory://registered-for-a-test"
        env = Env(tmp_path)
        env.vars["FSBACKUP_REPOSITORY"] = url
        env.ok("init")
        (tmp_path / "src").mkdir()
        (tmp_path / "src" / "f").write_bytes(b"kept in memory")
        env.ok("backup", tmp_path / "src")
        env.ok("check", "--read-data")
        assert not (tmp_path / "repo").exists()
        assert any(name.startswith("versions/") for name, _ in open_backend(url).list(""))
    finally:
        memory.unregister()


class FarAway(MemoryBackend):
    traits = BackendTraits(latency=Latency.REMOTE)


@pytest.mark.parametrize("store, local", [(MemoryBackend(), True), (FarAway(), False)])
def test_the_repository_tells_local_storage_by_its_declared_latency(store, local, tmp_path, monkeypatch):
    """What the mount sizes its disk cache by: the declared trait, whatever the backend's class."""
    monkeypatch.setenv("FSBACKUP_KDF_MEMORY_KIB", "1024")
    monkeypatch.setenv("FSBACKUP_WEAK_KDF_FOR_TESTS", "1")
    repo = Repository.create(RetryingBackend(store), b"secret", str(tmp_path / "index.sqlite"))
    assert repo.storage_is_local is local
    repo.bound_retries(30)
    assert repo.storage_is_local is local and repo.backend.max_seconds == 30
