"""Keeping the mount's local index in step with the repository, from a thread of its own."""
from __future__ import annotations

import math
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

from ..errors import FsbackupError
from ..repository import Repository
from .log import ThrottledLog, error_kind

# Syncs of the local index begin at least this far apart, however many reads ask for one: a read
# of data that is really lost must not cost a listing of the repository each time.
SYNC_MIN_GAP = 2.0
SYNC_WAIT_SECONDS = 60.0             # the longest a read waits for a sync to find a block's new place


class CatalogSync:
    """Brings the local index in step with the repository (`Repository.sync_catalog`: versions
    and volumes stored or removed by other machines) from a thread of its own, every `period`
    seconds (None: only when asked) and when a reader asks (`wait_for_sync_after`). Syncs begin
    at least `min_gap` seconds apart; requests made while one waits to begin share it.

    The sync writes through its own `Repository` over the same backend, keys and index file, whose
    SQLite connection is opened and closed in that thread (connections stay in their thread). A
    failed sync is logged (throttled) and does not stop anything: the mount serves what the index
    holds, and the next turn tries again."""

    def __init__(self, repo: Repository, messages: ThrottledLog, period: float | None,
                 min_gap: float = SYNC_MIN_GAP):
        self._source = repo
        self._messages = messages
        self.period = period
        self.min_gap = min_gap
        self._lock = threading.Condition()
        self._requested: Future | None = None          # the next sync, asked for and not begun yet
        done: Future = Future()
        done.set_result(None)
        self._latest: tuple[float, Future] = (-math.inf, done)   # when the latest sync began; its outcome
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="fsbackup-sync", daemon=True)
        self._thread.start()

    def wait_for_sync_after(self, moment: float) -> bool:
        """Wait for a sync that began at `moment` (a `time.monotonic()` reading) or later: the
        latest one if it did, else the next. Says whether it succeeded."""
        with self._lock:
            began, outcome = self._latest
            if began < moment:
                if self._requested is None:
                    if self._stopping:
                        return False
                    self._requested = Future()
                    self._lock.notify()
                outcome = self._requested
        try:        # bounded: a reader answers EIO rather than wait on a sync stuck in the storage
            return outcome.exception(timeout=SYNC_WAIT_SECONDS) is None
        except FutureTimeout:
            return False

    def close(self, wait: float = 5.0) -> None:
        """Stop the thread, waiting up to `wait` seconds for a sync under way (a daemon thread: a
        sync stuck on the storage does not keep the process alive)."""
        with self._lock:
            self._stopping = True
            self._lock.notify()
        self._thread.join(wait)

    def _next_due(self, last: float) -> float:
        """When the next sync begins, `last` being when the latest began (inf: when asked)."""
        due = math.inf
        if self._requested is not None:
            due = last + self.min_gap
        if self.period is not None:
            due = min(due, last + self.period)
        return due

    def _run(self) -> None:
        repo = Repository(self._source.backend, self._source.config, self._source.keys, self._source.catalog_path)
        repo.accept_missing = self._source.accept_missing
        last = time.monotonic()          # the index was brought up to date when the mount began
        try:
            while True:
                with self._lock:
                    while not self._stopping:
                        wait = self._next_due(last) - time.monotonic()
                        if wait <= 0:
                            break
                        self._lock.wait(None if wait == math.inf else wait)
                    if self._stopping:
                        if self._requested is not None:
                            self._requested.set_exception(FsbackupError("the mount is stopping"))
                        return
                    outcome, self._requested = self._requested or Future(), None
                    last = time.monotonic()
                    self._latest = (last, outcome)
                try:
                    repo.sync_catalog()
                except Exception as e:  # noqa: BLE001 - logged; the mount serves what the index holds
                    self._report(e)
                    outcome.set_exception(e)
                else:
                    outcome.set_result(None)
        finally:
            repo.close_catalog()

    def _report(self, e: Exception) -> None:
        message = f"cannot bring the local index up to date with the repository: {e}; serving what it holds"
        if isinstance(e, FsbackupError):
            self._messages.warning(("sync", *error_kind(e)), message)
        else:                                       # a bug: its traceback, still throttled
            self._messages.error(("sync", *error_kind(e)), message, exc_info=e)
