"""An in-memory backend for tests. After `register()`, `memory://NAME` URLs open one shared store
per name in this process (until `unregister()`); fsbackup itself knows no such URL."""
from __future__ import annotations

import threading
import time
from typing import Iterator

from fsbackup import backends
from fsbackup.backends import Backend
from fsbackup.errors import NoSuchObject

SCHEME = "memory"
_STORES: dict[str, dict[str, bytes]] = {}
_TIMES: dict[str, dict[str, float]] = {}


def register() -> None:
    backends.register_scheme(SCHEME, MemoryBackend.named)


def unregister() -> None:
    backends.unregister_scheme(SCHEME)


class MemoryBackend(Backend):
    """Objects in a dict. Puts, deletes and listings are atomic under one lock; its traits are the
    default ones (atomic replace, immediate listing, local)."""

    def __init__(self, objects: dict[str, bytes] | None = None, url: str = "memory://",
                 modified: dict[str, float] | None = None):
        self.objects = {} if objects is None else objects
        # When each object was put (time.time()); an object put into `objects` directly, as
        # some tests do, counts as written long ago.
        self.modified = {} if modified is None else modified
        self.url = url
        self._lock = threading.Lock()

    @classmethod
    def named(cls, url: str) -> "MemoryBackend":
        return cls(_STORES.setdefault(url, {}), url, _TIMES.setdefault(url, {}))

    def put(self, name: str, data: bytes) -> None:
        with self._lock:
            self.objects[name] = bytes(data)
            self.modified[name] = time.time()

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        try:
            data = self.objects[name]
        except KeyError:
            raise NoSuchObject(name) from None
        end = len(data) if length is None else offset + length
        return data[offset:end]

    def size(self, name: str) -> int:
        try:
            return len(self.objects[name])
        except KeyError:
            raise NoSuchObject(name) from None

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        with self._lock:
            items = [(n, len(d)) for n, d in self.objects.items() if n.startswith(prefix)]
        yield from items

    def list_modified(self, prefix: str = "") -> Iterator[tuple[str, int, float]]:
        with self._lock:
            items = [(n, len(d), self.modified.get(n, 0.0)) for n, d in self.objects.items() if n.startswith(prefix)]
        yield from items

    def delete(self, name: str) -> None:
        with self._lock:
            self.objects.pop(name, None)
            self.modified.pop(name, None)
