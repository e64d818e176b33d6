"""A bounded in-memory cache of decoded blocks where concurrent requests for one block load it once.

A block is cached (its bytes), being loaded (a Future every requester shares), or unknown. Whoever
finds it unknown through `source` becomes its loader and must settle it exactly once: `loaded`,
`failed`, or `abandoned` (a speculative load, such as a neighbour fetched along with a block that
was asked for, that did not work out: its waiters get None and ask again, loading it themselves).
Waiters never depend on the cache holding the bytes afterwards: the Future carries them.
"""
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
        # block id -> the Future of its load; None until someone waits for a block claimed without
        # one (`claim`: a run's neighbours, most of them cached before anyone asks)
        self._loading: dict[bytes, Future | None] = {}
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def source(self, block_id: bytes) -> tuple[bytes | Future, bool]:
        """(the block's bytes, or the Future of its load; whether the caller is now its loader,
        who must settle it)."""
        with self._lock:
            data = self._blocks.get(block_id)
            if data is not None:
                self._blocks.move_to_end(block_id)
                self.hits += 1
                return data, False
            if block_id in self._loading:
                fut = self._loading[block_id]
                if fut is None:
                    fut = self._loading[block_id] = Future()
                return fut, False
            fut = self._loading[block_id] = Future()
            self.misses += 1
            return fut, True

    def claim(self, block_ids: list[bytes]) -> set[bytes]:
        """Become the loader of those of `block_ids` neither cached nor being loaded; returns them."""
        with self._lock:
            claimed = {bid for bid in block_ids if bid not in self._blocks and bid not in self._loading}
            self._loading.update(dict.fromkeys(claimed))
        return claimed

    def loaded(self, block_id: bytes, data: bytes) -> None:
        with self._lock:
            fut = self._loading.pop(block_id)
            self._insert(block_id, data)
        if fut is not None:
            fut.set_result(data)

    def failed(self, block_id: bytes, error: BaseException) -> None:
        with self._lock:
            fut = self._loading.pop(block_id)
        if fut is not None:
            fut.set_exception(error)

    def abandoned(self, block_id: bytes) -> None:
        with self._lock:
            fut = self._loading.pop(block_id)
        if fut is not None:
            fut.set_result(None)

    def get(self, block_id: bytes, load: Callable[[bytes], bytes]) -> bytes:
        """The block's bytes, from the cache or from `load(block_id)`. Errors from `load` reach every
        caller waiting on that block, and nothing is cached for it."""
        while True:
            source, owner = self.source(block_id)
            if isinstance(source, bytes):
                return source
            if not owner:
                data = source.result()
                if data is not None:
                    return data
                continue                 # abandoned by its loader: load it here
            try:
                data = load(block_id)
            except BaseException as e:
                self.failed(block_id, e)
                raise
            self.loaded(block_id, data)
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
