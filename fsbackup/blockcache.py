"""A bounded in-memory cache of decoded blocks where concurrent requests for one block load it once."""
from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import Callable


class BlockCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._blocks: OrderedDict[bytes, bytes] = OrderedDict()
        self._bytes = 0
        self._loading: dict[bytes, Future] = {}
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, block_id: bytes, load: Callable[[bytes], bytes]) -> bytes:
        """The block's bytes, from the cache or from `load(block_id)`. Errors from `load` reach every
        caller waiting on that block, and nothing is cached for it."""
        with self._lock:
            data = self._blocks.get(block_id)
            if data is not None:
                self._blocks.move_to_end(block_id)
                self.hits += 1
                return data
            fut = self._loading.get(block_id)
            owner = fut is None
            if owner:
                fut = self._loading[block_id] = Future()
                self.misses += 1
        if not owner:
            return fut.result()
        try:
            data = load(block_id)
        except BaseException as e:
            with self._lock:
                del self._loading[block_id]
            fut.set_exception(e)
            raise
        with self._lock:
            del self._loading[block_id]
            self._insert(block_id, data)
        fut.set_result(data)
        return data

    def put(self, block_id: bytes, data: bytes) -> None:
        """Keep a block its caller loaded itself."""
        with self._lock:
            if block_id not in self._blocks:
                self._insert(block_id, data)
            else:
                self._blocks.move_to_end(block_id)

    def peek(self, block_id: bytes) -> bytes | None:
        with self._lock:
            return self._blocks.get(block_id)

    def _insert(self, block_id: bytes, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        self._blocks[block_id] = data
        self._bytes += len(data)
        while self._bytes > self.max_bytes:
            _, old = self._blocks.popitem(last=False)
            self._bytes -= len(old)
