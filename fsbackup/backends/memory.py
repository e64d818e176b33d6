"""An in-memory backend for tests; `memory://NAME` URLs share one store per name in a process."""
from __future__ import annotations

import threading
from typing import Iterator

from ..errors import NoSuchObject
from . import Backend

_STORES: dict[str, dict[str, bytes]] = {}


class MemoryBackend(Backend):
    def __init__(self, objects: dict[str, bytes] | None = None, url: str = "memory://"):
        self.objects = {} if objects is None else objects
        self.url = url
        self._lock = threading.Lock()

    @classmethod
    def named(cls, url: str) -> "MemoryBackend":
        return cls(_STORES.setdefault(url, {}), url)

    def put(self, name: str, data: bytes) -> None:
        with self._lock:
            self.objects[name] = bytes(data)

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

    def delete(self, name: str) -> None:
        with self._lock:
            self.objects.pop(name, None)
