"""The retry layer keeps the backend contract while a fifth of the calls below it fail for a
while: callers see the contract, never the failures (tests/test_faults.py covers its timing)."""
from __future__ import annotations

from backend_contract import BackendContract
from doubles.faults import FaultyBackend

from fsbackup.backends.local import LocalBackend
from fsbackup.backends.retry import RetryingBackend


class TestRetryingBackend(BackendContract):
    def make_backend(self, tmp_path, monkeypatch):
        self.faulty = FaultyBackend(LocalBackend(str(tmp_path / "store")), seed=5, fail_rate=0.2)
        return RetryingBackend(self.faulty, max_seconds=30, base_delay=0.001, max_delay=0.005)

    def test_failures_below_are_hidden(self, backend):
        for i in range(40):
            backend.put(f"x/{i}", b"x")
        assert len(list(backend.list("x/"))) == 40 and self.faulty.injected > 0
