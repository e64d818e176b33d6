"""What a long task tells its user: the Reporter an engine is handed, and the progress bar
(files, bytes, rate and ETA on a terminal, redrawn at most ten times a second)."""
from __future__ import annotations

import sys
import threading
import time
from typing import Protocol


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    """A one-line progress display. Silent unless `enabled` (a terminal and not --quiet)."""

    def __init__(self, enabled: bool | None = None, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.lock = threading.Lock()
        self.label = ""
        self.files = self.bytes = self.items = 0
        self.total_bytes: int | None = None
        self.total_items: int | None = None
        self.started = self.last_draw = 0.0

    def start(self, label: str, total_bytes: int | None = None, total_items: int | None = None) -> None:
        self.label, self.total_bytes, self.total_items = label, total_bytes, total_items
        self.files = self.bytes = self.items = 0
        self.started = time.monotonic()

    def advance(self, files: int = 0, nbytes: int = 0, items: int = 0) -> None:
        with self.lock:
            self.files += files
            self.bytes += nbytes
            self.items += items
        if self.enabled and time.monotonic() - self.last_draw > 0.1:
            self._draw()

    def set_total_bytes(self, total: int) -> None:
        self.total_bytes = total

    def _draw(self) -> None:
        self.last_draw = now = time.monotonic()
        elapsed = max(now - self.started, 1e-6)
        parts = [self.label]
        if self.total_items is not None:
            parts.append(f"{self.items}/{self.total_items}")
        if self.files:
            parts.append(f"{self.files} files")
        if self.bytes or self.total_bytes:
            rate = self.bytes / elapsed
            parts.append(human_bytes(self.bytes) + (f"/{human_bytes(self.total_bytes)}" if self.total_bytes else ""))
            parts.append(f"{human_bytes(rate)}/s")
            if self.total_bytes and rate > 0 and self.bytes <= self.total_bytes:
                parts.append(f"ETA {human_duration((self.total_bytes - self.bytes) / rate)}")
        if self.total_items:
            pct = 100 * self.items / self.total_items
        elif self.total_bytes:
            pct = 100 * min(self.bytes / self.total_bytes, 1)
        else:
            pct = None
        if pct is not None:
            filled = int(pct / 5)
            parts.insert(1, f"[{'#' * filled}{'.' * (20 - filled)}] {pct:3.0f}%")
        self.stream.write("\r\x1b[K" + "  ".join(parts))
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()


class Reporter(Protocol):
    """Where an engine (backup, restore, check, prune, repair) tells the user what happens. The
    command line's output object is one (it decides what is printed where, and what --quiet or
    --json silence); `SILENT` tells nobody. Each call gets one line of text, without a prefix."""

    def info(self, text: str) -> None:
        """A step done, for the user to read (e.g. "re-created index/... from its volume")."""

    def warn(self, text: str) -> None:
        """Something left undone that the user must know of (a file not read, not restored)."""

    def note(self, text: str) -> None:
        """Something the command did on its way that the user may want to know of."""

    def progress(self) -> Progress:
        """A new progress display for one stage of the work (silent when nobody watches)."""


class _Silent:
    """The Reporter of library callers that pass none: says nothing, shows no progress."""

    def info(self, text: str) -> None:
        pass

    def warn(self, text: str) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def progress(self) -> Progress:
        return Progress(enabled=False)


SILENT: Reporter = _Silent()
