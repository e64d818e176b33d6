"""Bandwidth limits (--limit-upload, --limit-download): a token bucket per direction, shared by
every connection of the process, and a backend wrapper that charges put and get bytes to it.

A put is charged before it is sent, a get after its bytes came (its size is known only then).
A call larger than the bucket runs it into debt: the caller waits until the debt is paid off at
the rate, so a 32 MiB volume at 512 KiB/s waits 64 s, and the other connections wait behind it.
The stores take whole objects per call, so the limit holds on average over a few calls, not
within one: a call itself goes at the line's speed. The bucket starts empty (the limit holds from
the first byte) and fills to at most one second's worth while idle: a burst after a pause is
bounded by that.

`open_backend` puts the wrapper inside the retry layer, so a retried call is charged again: it
sends its bytes again.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from . import Backend, WrappingBackend

KIB = 1024
BURST_SECONDS = 1.0        # what a bucket holds at most: this many seconds of its rate


class TokenBucket:
    """`rate` bytes per second, taken by any number of threads (`take`)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if rate <= 0:
            raise ValueError("a token bucket needs a positive rate")
        self.rate = rate
        self.capacity = rate * BURST_SECONDS
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = 0.0
        self._updated = clock()

    def take(self, n: int) -> None:
        """Charge `n` bytes; return once the bucket has paid for them (at once while it holds
        enough). Thread-safe: callers are served in the order they charge, each waiting for its
        own share of the debt."""
        if n <= 0:
            return
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate) - n
            self._updated = now
            wait = -self._tokens / self.rate
        if wait > 0:
            self._sleep(wait)


@dataclass(frozen=True)
class Bandwidth:
    """The limits of one process: a bucket per direction, None where unlimited."""
    upload: TokenBucket | None = None
    download: TokenBucket | None = None

    @classmethod
    def of(cls, upload_kib: float = 0, download_kib: float = 0) -> "Bandwidth | None":
        """Limits in KiB/s (0: unlimited); None when neither is limited."""
        if not upload_kib and not download_kib:
            return None
        return cls(TokenBucket(upload_kib * KIB) if upload_kib else None,
                   TokenBucket(download_kib * KIB) if download_kib else None)


# The process's limits, by their rates: every backend the process opens with the same limits
# shares their buckets (a command that opens two repositories stays within one budget).
_shared: dict[tuple[float, float], Bandwidth] = {}
_shared_lock = threading.Lock()


def process_bandwidth(upload_kib: float = 0, download_kib: float = 0) -> Bandwidth | None:
    """The process's `Bandwidth` for these limits (KiB/s, 0: unlimited), made on first use."""
    if not upload_kib and not download_kib:
        return None
    with _shared_lock:
        key = (float(upload_kib), float(download_kib))
        if key not in _shared:
            _shared[key] = Bandwidth.of(upload_kib, download_kib)  # type: ignore[assignment]
        return _shared[key]


class ThrottledBackend(WrappingBackend):
    """`inner` with the bytes of its puts and gets charged to `bandwidth`'s buckets. Listings,
    sizes and deletes are small requests: not charged."""

    def __init__(self, inner: Backend, bandwidth: Bandwidth):
        super().__init__(inner)
        self.bandwidth = bandwidth

    def put(self, name: str, data: bytes) -> None:
        if self.bandwidth.upload is not None:
            self.bandwidth.upload.take(len(data))
        self.inner.put(name, data)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        data = self.inner.get(name, offset, length)
        if self.bandwidth.download is not None:
            self.bandwidth.download.take(len(data))
        return data

    def size(self, name: str) -> int:
        return self.inner.size(name)

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        return self.inner.list(prefix)

    def delete(self, name: str) -> None:
        self.inner.delete(name)
