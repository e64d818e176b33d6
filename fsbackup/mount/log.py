"""The mount's log: one line per kind of failure per minute, however many requests fail."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Hashable

from ..errors import BackendError

log = logging.getLogger("fsbackup.mount")


class ThrottledLog:
    """Logs each kind of message (its `key`, e.g. the error's class and object) at most once per
    `interval` seconds; the next line of that kind says how many were held back meanwhile. A
    repository that fails every request must not write a line per request. Thread-safe."""

    MAX_KEYS = 1000

    def __init__(self, logger: logging.Logger, interval: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        # key -> [when last logged, lines held back since, level and text of the last one held back]
        self._seen: dict[Hashable, list] = {}

    def error(self, key: Hashable, message: str, exc_info: BaseException | None = None) -> None:
        self.log(logging.ERROR, key, message, exc_info)

    def warning(self, key: Hashable, message: str, exc_info: BaseException | None = None) -> None:
        self.log(logging.WARNING, key, message, exc_info)

    def log(self, level: int, key: Hashable, message: str, exc_info: BaseException | None = None) -> None:
        now = self.clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.interval:
                seen[1] += 1
                seen[2] = (level, message)
                return
            held_back = (seen[1], now - seen[0]) if seen else (0, 0.0)
            if len(self._seen) >= self.MAX_KEYS:
                self._forget_quiet_keys(now)
            self._seen[key] = [now, 0, None]
        self.logger.log(level, message + self._held_back_note(*held_back), exc_info=exc_info)

    def flush(self) -> None:
        """Log the last line held back of each kind (when the mount ends)."""
        now = self.clock()
        with self._lock:
            pending = [(seen[1], now - seen[0], seen[2]) for seen in self._seen.values() if seen[1]]
            self._seen.clear()
        for count, span, (level, message) in pending:
            self.logger.log(level, message + self._held_back_note(count - 1, span))

    def _forget_quiet_keys(self, now: float) -> None:
        """Drop kinds whose interval is over (their held-back count is lost: the map stays bounded)."""
        for key in [k for k, seen in self._seen.items() if now - seen[0] >= self.interval]:
            del self._seen[key]
        if len(self._seen) >= self.MAX_KEYS:
            self._seen.clear()

    @staticmethod
    def _held_back_note(count: int, span: float) -> str:
        return f" (and {count} more like it in the last {span:.0f} s)" if count else ""


def error_kind(e: BaseException) -> tuple:
    """What makes two errors the same message for `ThrottledLog`: their class and text; for an
    error the retry layer gave up on, those of the storage's own error (the count of attempts and
    seconds it adds differs every time)."""
    if isinstance(e, BackendError) and isinstance(e.__cause__, BackendError):
        e = e.__cause__
    return type(e), str(e)
