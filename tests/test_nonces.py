"""No key and nonce ever encrypt two plaintexts: AES-GCM under a repeated (key, nonce) gives away the
XOR of the plaintexts and the authentication key. Every AES-GCM encryption fsbackup makes goes
through crypto.AESGCM; here it is recorded, and any sequence of commands is run."""
from __future__ import annotations

import hashlib
import os
import random
import threading
from pathlib import Path

import pytest
from conftest import TEST_PASSWORD, Env, restored_root, snapshot, write
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fsbackup import errors
from fsbackup.backends import open_backend
from fsbackup.codec import crypto, wire
from fsbackup.repository import Repository, locks

RealAESGCM = crypto.AESGCM


class NonceLedger:
    """(key, nonce) -> digest of (plaintext, associated data) of every encryption: a second, other
    pair under the same key and nonce is a reuse."""

    def __init__(self):
        self.seen: dict[tuple[bytes, bytes], bytes] = {}
        self.reuses: list[str] = []
        self.count = 0
        self._lock = threading.Lock()

    def record(self, key: bytes, nonce: bytes, data, ad) -> None:
        digest = hashlib.sha256(hashlib.sha256(bytes(data)).digest() + bytes(ad or b"")).digest()
        with self._lock:
            self.count += 1
            first = self.seen.setdefault((key, bytes(nonce)), digest)
            if first != digest:
                self.reuses.append(f"nonce {bytes(nonce).hex()} reused under one key (ad {bytes(ad or b'')[:12]!r})")

    def aesgcm(self):
        ledger = self

        class RecordingAESGCM:
            def __init__(self, key):
                self._key = bytes(key)
                self._real = RealAESGCM(key)

            def encrypt(self, nonce, data, ad):
                ledger.record(self._key, nonce, data, ad)
                return self._real.encrypt(nonce, data, ad)

            def decrypt(self, nonce, data, ad):
                return self._real.decrypt(nonce, data, ad)

        return RecordingAESGCM


class Scenario:
    """A repository driven by one sequence of commands, in this process (so every encryption is seen)."""

    def __init__(self, tmp: Path, rng: random.Random):
        self.env = Env(tmp)
        self.src = tmp / "src"
        self.rng = rng
        self.passphrase = TEST_PASSWORD
        self.env.ok("init")
        self.backup()

    def ok(self, *args, **extra):
        return self.env.ok(*args, FSBACKUP_PASSWORD=self.passphrase, **extra)

    def run(self, *args):
        r = self.env.run(*args, FSBACKUP_PASSWORD=self.passphrase)
        assert r.rc in (0, errors.EXIT_CORRUPT), f"fsbackup {' '.join(args)} -> {r.rc}\n{r.err}"
        return r

    def objects(self, folder: str) -> list[Path]:
        return sorted(p for p in (self.env.repo / folder).rglob("*") if p.is_file())

    def backup(self):
        for i in range(self.rng.randint(1, 3)):
            size = self.rng.choice([100, 5000, 300_000, 700_000])
            write(self.src / f"f{self.rng.randint(0, 6)}", self.rng.randbytes(size))
        self.ok("backup", self.src)

    def recreate_index_object(self):
        """repair writes a missing index object again from its volume's table."""
        if self.objects("index"):                     # (a prune may have left none)
            self.rng.choice(self.objects("index")).unlink()
        self.run("repair")

    def damage_and_remove(self):
        """repair --remove-damaged writes an index object again without the damaged blocks, and
        the versions that used them again without those files."""
        if not self.objects("data"):
            return
        volume = self.rng.choice(self.objects("data"))
        data = bytearray(volume.read_bytes())
        data[wire.HEADER_LEN + 20] ^= 0xFF            # inside the volume's first block
        volume.write_bytes(bytes(data))
        self.run("repair", "--read-data", "--remove-damaged")

    def prune(self):
        self.ok("forget", "--keep-last", "1", "--prune", "--max-unused", "0")

    def passwd(self):
        new = f"passphrase {self.rng.random()}"
        self.ok("key", "passwd", FSBACKUP_NEW_PASSWORD=new)
        self.passphrase = new

    def add_key(self):
        self.ok("key", "add", FSBACKUP_NEW_PASSWORD=f"another {self.rng.random()}")

    def refresh_lock(self):
        """A held lock is written again under its name every few minutes."""
        saved = dict(os.environ)
        os.environ.update(self.env.environ(FSBACKUP_PASSWORD=self.passphrase))
        try:
            repo = Repository.open(open_backend(str(self.env.repo)), self.passphrase.encode(),
                                   str(self.env.tmp / "lock-index.sqlite"))
            with locks.repository_lock(repo, "shared", command="test") as lock:
                for _ in range(3):
                    lock.refresh()
            repo.close()
        finally:
            os.environ.clear()
            os.environ.update(saved)


OPERATIONS = ["backup", "recreate_index_object", "damage_and_remove", "prune", "passwd", "add_key", "refresh_lock"]


@pytest.fixture
def ledger(monkeypatch) -> NonceLedger:
    ledger = NonceLedger()
    monkeypatch.setattr(crypto, "AESGCM", ledger.aesgcm())
    return ledger


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.sampled_from(OPERATIONS), min_size=1, max_size=6), seed=st.integers(0, 2**32))
@example(ops=["backup", "damage_and_remove", "backup"], seed=1)
@example(ops=["recreate_index_object", "damage_and_remove", "recreate_index_object"], seed=2)
@example(ops=["refresh_lock", "backup", "prune", "passwd", "add_key", "refresh_lock"], seed=3)
@example(ops=["damage_and_remove", "prune", "recreate_index_object", "damage_and_remove"], seed=1)
def test_no_sequence_of_commands_reuses_a_key_and_nonce(ledger, tmp_path_factory, ops, seed):
    scenario = Scenario(tmp_path_factory.mktemp("nonces"), random.Random(seed))
    for op in ops:
        getattr(scenario, op)()
    assert not ledger.reuses, ledger.reuses
    assert ledger.count > 0


def test_repair_rewriting_an_index_object_uses_a_new_nonce(ledger, tmp_path):
    """The case that reused the nonce in format 1: an index object written again with other
    content. Each writing has its own nonce, and the repository still restores."""
    scenario = Scenario(tmp_path, random.Random(7))
    scenario.backup()
    before = {p.name: p.read_bytes() for p in scenario.objects("index")}
    scenario.damage_and_remove()
    scenario.recreate_index_object()
    after = {p.name: p.read_bytes() for p in scenario.objects("index")}
    rewritten = [name for name in before.keys() & after.keys() if before[name] != after[name]]
    assert rewritten
    for name in rewritten:
        nonce = slice(wire.HEADER_LEN, wire.HEADER_LEN + crypto.NONCE_LEN)
        assert after[name][4] == wire.FORMAT_VERSION and before[name][nonce] != after[name][nonce]
    assert not ledger.reuses, ledger.reuses
    scenario.ok("restore", "latest", "--target", tmp_path / "out")
    restored = snapshot(restored_root(tmp_path / "out", scenario.src))
    assert restored.keys() <= snapshot(scenario.src).keys()
