"""b2sdk's in-memory B2 (`RawSimulator`) behind real `B2Backend`s, for tests that need no account.

`use_simulator()` makes `b2://` URLs opened afterwards in this process (by `open_backend`, hence
by the command line) reach one simulated B2, until `stop_simulator()` puts the real B2 back: the
scheme is registered again, fsbackup's B2 code is the production code, given another b2sdk API
configuration (`B2Backend(url, api_config)`).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from b2sdk.v2 import B2HttpApiConfig, RawSimulator
from b2sdk.v2.exception import DuplicateBucketName

from fsbackup import backends
from fsbackup.backends.b2 import ENV_KEY, ENV_KEY_ID, REALM, B2Backend, new_api

SCHEME = "b2"


@dataclass
class SimulatedB2:
    """The process's simulated B2 account: its master key and its buckets."""
    raw: RawSimulator
    key_id: str
    key: str

    def api_config(self) -> B2HttpApiConfig:
        # b2sdk builds its raw API as `raw_api_class(b2_http)`; a factory returning the one shared
        # simulator lets several B2Api objects (each with its own authorization) see the same buckets.
        return B2HttpApiConfig(_raw_api_class=lambda _b2_http: self.raw)

    def environ(self) -> dict[str, str]:
        """The credential variables a B2Backend reads, for this simulated account."""
        return {ENV_KEY_ID: self.key_id, ENV_KEY: self.key}

    def create_bucket(self, name: str) -> None:
        """Create a private bucket (no error if it exists), whose uploads carry the time they were
        made, as on B2 (the simulator's own upload times count milliseconds from 5000 on)."""
        api = new_api(self.api_config())
        api.authorize_account(REALM, self.key_id, self.key)
        try:
            api.create_bucket(name, "allPrivate")
        except DuplicateBucketName:
            pass
        bucket = self.raw.bucket_name_to_bucket[name]
        if not isinstance(bucket.upload_timestamp_counter, _WallClock):
            bucket.upload_timestamp_counter = _WallClock()

    def backend(self, url: str) -> B2Backend:
        """A B2Backend for `url` on this simulated B2 (credentials from the environment, as always)."""
        return B2Backend(url, api_config=self.api_config())


class _WallClock:
    """Upload times in milliseconds since the epoch, each later than the one before."""

    def __init__(self):
        self._last = 0
        self._lock = threading.Lock()

    def __iter__(self):
        return self

    def __next__(self) -> int:
        with self._lock:
            self._last = max(self._last + 1, int(time.time() * 1000))
            return self._last


_simulated: SimulatedB2 | None = None     # made once per process, kept across use/stop
_real_opener: backends.Opener | None = None
_lock = threading.Lock()


def simulated() -> SimulatedB2:
    """The process's simulated B2 (made on first use; its objects live as long as the process)."""
    global _simulated
    with _lock:
        if _simulated is None:
            raw = RawSimulator()
            key_id, key = raw.create_account()
            _simulated = SimulatedB2(raw, key_id, key)
        return _simulated


def use_simulator() -> SimulatedB2:
    """Make `b2://` URLs opened afterwards in this process reach the simulated B2: several
    `open_backend("b2://bucket/x")` then see the same objects. Create buckets with the returned
    account and put its `environ()` into os.environ."""
    global _real_opener
    sim = simulated()
    with _lock:
        previous = backends.register_scheme(SCHEME, sim.backend)
        if _real_opener is None:
            _real_opener = previous
    return sim


def stop_simulator() -> None:
    """`b2://` URLs reach the real B2 again (the simulated objects are kept)."""
    global _real_opener
    with _lock:
        if _real_opener is not None:
            backends.register_scheme(SCHEME, _real_opener)
            _real_opener = None
