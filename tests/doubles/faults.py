"""A backend wrapper that injects failures, so tests can drive the failure paths of the layers
above (retries, re-fetches, clean stops) against real code.

    faulty = FaultyBackend(LocalBackend(path), seed=7, fail_rate=0.1)   # 10% of calls fail, temporarily
    faulty.fail_call(3, "put")               # the 3rd put from now fails (once)
    faulty.go_down(after=5, method="put")    # after 5 more puts, every call fails...
    faulty.come_back()                       # ...until this
    faulty.damage_downloads("truncate", times=1, prefix="data/")   # the next volume read comes back short

Random failures come from a generator seeded with `seed`: the same sequence of calls meets the same
failures. Injected failures are `BackendError`s, temporary unless `permanent` is asked for.
"""
from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

from fsbackup.backends import Backend, WrappingBackend
from fsbackup.errors import BackendError

METHODS = ("put", "get", "size", "list", "delete")


@dataclass
class _Plan:
    """A failure waiting for its call: the `remaining`-th next call of `method` (None: any method)
    raises `error`, or a BackendError (temporary unless `permanent`) when error is None."""
    method: str | None
    remaining: int
    permanent: bool = False
    retry_after: float | None = None
    error: Exception | None = None


@dataclass
class _Damage:
    how: str                 # "flip": one byte in the middle is inverted; "truncate": the tail is cut off
    times: int | None        # downloads still to damage (None: every one)
    prefix: str              # only objects whose names start with this


class FaultyBackend(WrappingBackend):
    def __init__(self, inner: Backend, seed: int = 0, fail_rate: float = 0.0,
                 methods: tuple[str, ...] = METHODS, permanent: bool = False):
        super().__init__(inner)
        self.fail_rate = fail_rate            # this fraction of calls of `methods` fails at random
        self.rate_methods = frozenset(methods)
        self.rate_permanent = permanent
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._plans: list[_Plan] = []
        self._outage: _Plan | None = None     # when it comes due, the backend goes down
        self._down: bool | None = None        # None: up; else whether the outage's errors are permanent
        self._damage: list[_Damage] = []
        self.calls: Counter[str] = Counter()  # calls seen, by method
        self.injected = 0                     # failures raised
        self.damaged = 0                      # downloads damaged

    # ---- scripting faults -----------------------------------------------------------------

    def fail_call(self, k: int, method: str | None = None, permanent: bool = False,
                  retry_after: float | None = None, error: Exception | None = None) -> None:
        """Make the k-th next call (of `method`, or of any method) fail once: with `error` when
        given, else with a BackendError, temporary unless `permanent`, carrying `retry_after`."""
        with self._lock:
            self._plans.append(_Plan(method, k, permanent, retry_after, error))

    def go_down(self, after: int = 0, method: str | None = None, permanent: bool = True) -> None:
        """After `after` more calls (of `method`, or any) succeed, every call fails until `come_back`."""
        with self._lock:
            if after <= 0:
                self._down = permanent
            else:
                self._outage = _Plan(method, after, permanent)

    def come_back(self) -> None:
        with self._lock:
            self._down, self._outage = None, None

    def damage_downloads(self, how: str = "flip", times: int | None = 1, prefix: str = "") -> None:
        """Damage the next `times` downloads (None: all) of objects named with `prefix`: the stored
        object stays intact, only what this get returns is wrong."""
        if how not in ("flip", "truncate"):
            raise ValueError(f"unknown damage {how!r}")
        with self._lock:
            self._damage.append(_Damage(how, times, prefix))

    # ---- deciding a call's fate -------------------------------------------------------------

    def _failure(self, method: str) -> _Plan | None:
        """None if this call goes through, else how it fails. Holds the lock."""
        if self._outage is not None and self._outage.method in (None, method):
            if self._outage.remaining == 0:
                self._down, self._outage = self._outage.permanent, None
            else:
                self._outage.remaining -= 1
        if self._down is not None:
            return _Plan(method, 0, self._down)
        due = [plan for plan in self._plans if plan.method in (None, method)]
        for plan in due:                  # every plan counts this call, even when another fires
            plan.remaining -= 1
        fired = [plan for plan in due if plan.remaining == 0]
        for plan in fired:
            self._plans.remove(plan)
        if fired:
            return fired[0]
        if self.fail_rate and method in self.rate_methods and self._rng.random() < self.fail_rate:
            return _Plan(method, 0, self.rate_permanent)
        return None

    def _enter(self, method: str, name: str) -> None:
        with self._lock:
            self.calls[method] += 1
            failure = self._failure(method)
            if failure is None:
                return
            self.injected += 1
        if failure.error is not None:
            raise failure.error
        kind = "outage" if failure.permanent else "temporary failure"
        raise BackendError(f"simulated {kind} on {method} {name or '/'}", temporary=not failure.permanent,
                           retry_after=failure.retry_after)

    def _damaged(self, name: str, data: bytes) -> bytes:
        if not data:
            return data
        with self._lock:
            damage = next((d for d in self._damage if name.startswith(d.prefix)), None)
            if damage is None:
                return data
            if damage.times is not None:
                damage.times -= 1
                if damage.times == 0:
                    self._damage.remove(damage)
            self.damaged += 1
        if damage.how == "truncate":
            return data[:len(data) * 3 // 4]
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0xFF
        return bytes(flipped)

    # ---- the backend -------------------------------------------------------------------------

    def put(self, name: str, data: bytes) -> None:
        self._enter("put", name)
        self.inner.put(name, data)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        self._enter("get", name)
        return self._damaged(name, self.inner.get(name, offset, length))

    def size(self, name: str) -> int:
        self._enter("size", name)
        return self.inner.size(name)

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        self._enter("list", prefix)
        yield from self.inner.list(prefix)

    def list_modified(self, prefix: str = "") -> Iterator[tuple[str, int, float]]:
        self._enter("list", prefix)            # (a listing, as far as faults go)
        yield from self.inner.list_modified(prefix)

    def delete(self, name: str) -> None:
        self._enter("delete", name)
        self.inner.delete(name)

