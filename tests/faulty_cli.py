"""The fsbackup command line over a backend with injected faults, for tests that run commands as
separate processes: FSBACKUP_TEST_FAULTS="SEED:LIST_FAILURES:DAMAGED_READS" makes that share of
listings fail (permanently: the command must stop, deleting nothing) and that share of downloads
come back with one byte flipped (authentication must catch it): the `file` scheme (local
repositories) is registered again to open the faulty backend around the local one."""
from __future__ import annotations

import os
import random
import sys

from doubles.faults import FaultyBackend

import fsbackup.backends as backends
from fsbackup.cli import main


class RandomlyFaultyBackend(FaultyBackend):
    def __init__(self, inner, seed: int, list_failures: float, damaged_reads: float):
        super().__init__(inner, seed=seed, fail_rate=list_failures, methods=("list",), permanent=True)
        self.damaged_reads = damaged_reads
        self._damage_rng = random.Random(seed + 1)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        data = super().get(name, offset, length)
        with self._lock:
            damage = data and self._damage_rng.random() < self.damaged_reads
        if damage:
            flipped = bytearray(data)
            flipped[len(flipped) // 2] ^= 0x01
            return bytes(flipped)
        return data


def _install() -> None:
    spec = os.environ.get("FSBACKUP_TEST_FAULTS")
    if not spec:
        return
    seed, list_failures, damaged_reads = spec.split(":")
    seed_for_process = int(seed) * 1000 + os.getpid() % 1000
    plain = backends.register_scheme("file", lambda url: RandomlyFaultyBackend(
        plain(url), seed_for_process, float(list_failures), float(damaged_reads)))


if __name__ == "__main__":
    _install()
    sys.exit(main(sys.argv[1:]))
