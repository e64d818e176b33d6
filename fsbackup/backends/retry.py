"""A backend wrapper that retries temporary failures: the one retry loop of the storage stack.

`open_backend` wraps every backend in it. A call that fails with a temporary `BackendError` is
tried again after a capped exponential backoff with full jitter (a random wait between 0 and
min(max_delay, base_delay * 2**n), so many clients hit by the same outage do not retry in step),
or after the longer `retry_after` the storage asked for, until `max_seconds` have passed since
the call began (the last attempt is made at that bound; a `retry_after` beyond it ends the
call at once); then the last error is raised, saying how many attempts and seconds it took.
Everything else (missing objects, permission, no space, permanent errors, bugs) passes at once.

Every method is safe to repeat: puts replace whole objects, gets and sizes read, deleting a
missing object is no error, and a listing is gathered whole before it is handed on, so a
listing that fails midway is started again rather than continued. Removing partial uploads
is repeated whole too (what a failed attempt removed is then not counted).
"""
from __future__ import annotations

import logging
import random
import time
from typing import Callable, Iterator, TypeVar

from ..errors import BackendError
from . import Backend, WrappingBackend

log = logging.getLogger("fsbackup.backends")

BACKUP_RETRY_SECONDS = 300.0     # backups, restores and other batch work wait out outages this long
BASE_DELAY = 0.5
MAX_DELAY = 20.0

T = TypeVar("T")


class RetryingBackend(WrappingBackend):
    def __init__(self, inner: Backend, max_seconds: float | None = None, base_delay: float | None = None,
                 max_delay: float | None = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None):
        """Bounds left out are the module's (BACKUP_RETRY_SECONDS, BASE_DELAY, MAX_DELAY), read
        when the wrapper is made, so tests can shorten every retry of the command line at once."""
        # Wrapping a RetryingBackend re-bounds it instead of nesting: nested loops would multiply
        # the attempts and the time a caller waits.
        super().__init__(inner.inner if isinstance(inner, RetryingBackend) else inner)
        self.max_seconds = BACKUP_RETRY_SECONDS if max_seconds is None else max_seconds
        self.base_delay = BASE_DELAY if base_delay is None else base_delay
        self.max_delay = MAX_DELAY if max_delay is None else max_delay
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()

    def delay(self, attempt: int, error: BackendError) -> float:
        """How long to wait after the `attempt`-th failure (1-based): full jitter under a capped
        exponential bound, but never less than the wait the storage asked for."""
        bound = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        wait = self._rng.uniform(0, bound)
        retry_after = getattr(error, "retry_after", None)
        return max(wait, retry_after) if retry_after is not None else wait

    def _retry(self, method: str, call: Callable[[], T]) -> T:
        started = self._clock()
        attempt = 0
        while True:
            attempt += 1
            try:
                return call()
            except BackendError as e:
                if not e.temporary:
                    raise
                elapsed = self._clock() - started
                remaining = self.max_seconds - elapsed
                if remaining <= 0 or (getattr(e, "retry_after", None) or 0) > remaining:
                    # Not temporary any more: this layer has waited as long as callers allow.
                    raise BackendError(f"{e} (gave up after {attempt} attempt{'s' * (attempt > 1)} "
                                       f"in {elapsed:.1f} s)", temporary=False) from e
                wait = min(self.delay(attempt, e), remaining)   # the last attempt comes at the bound
                log.warning("storage error during %s (%s); retrying in %.1f s (attempt %d)",
                            method, e, wait, attempt + 1)
                self._sleep(wait)

    def put(self, name: str, data: bytes) -> None:
        self._retry("put", lambda: self.inner.put(name, data))

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._retry("get", lambda: self.inner.get(name, offset, length))

    def size(self, name: str) -> int:
        return self._retry("size", lambda: self.inner.size(name))

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        yield from self._retry("list", lambda: [*self.inner.list(prefix)])

    def list_modified(self, prefix: str = "") -> Iterator[tuple[str, int, float]]:
        yield from self._retry("list", lambda: [*self.inner.list_modified(prefix)])

    def delete(self, name: str) -> None:
        self._retry("delete", lambda: self.inner.delete(name))

    def hidden(self, names: set[str]) -> set[str]:
        return self._retry("list", lambda: self.inner.hidden(names))

    def remove_partial_uploads(self, older_than_seconds: float) -> tuple[int, int]:
        return self._retry("remove_partial_uploads", lambda: self.inner.remove_partial_uploads(older_than_seconds))
