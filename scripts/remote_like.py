"""Run the fsbackup command line with its repository behind a simulated network link.

    python scripts/remote_like.py --latency-ms 30 --bandwidth-mbps 200 [--no-read-ahead] -- ARGS...

runs `fsbackup ARGS...` in this process, with every storage request waiting a round trip and
all transfers sharing one link of the given bandwidth, the way a remote store such as B2 behaves.
Requests in flight at the same time overlap their waits, as they do on a real network: this is
what makes concurrent uploads and read-ahead pay. --no-read-ahead makes the mount fetch one
block at a time (the baseline the read-ahead is measured against). For benchmarks only
(scripts/bench --latency-ms); it is not part of the package.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
import time

from fsbackup import backends, cli
from fsbackup.backends import Backend, BackendTraits, Latency, WrappingBackend


class RemoteLikeBackend(WrappingBackend):
    """A backend behind a link with a fixed round-trip `latency` (seconds) and a `bandwidth`
    (bytes/s, 0 = unlimited) that the bytes of all requests share. It is remote: the mount caches
    and syncs as it does for B2."""

    @property
    def traits(self) -> BackendTraits:
        return dataclasses.replace(self.inner.traits, latency=Latency.REMOTE)

    def __init__(self, inner: Backend, latency: float, bandwidth: float):
        super().__init__(inner)
        self.latency, self.bandwidth = latency, bandwidth
        self._lock = threading.Lock()
        self._link_free_at = 0.0

    def _transfer(self, nbytes: int) -> None:
        """Wait one round trip, then for this transfer's turn on the shared link."""
        ready = time.monotonic() + self.latency
        if self.bandwidth:
            with self._lock:
                start = max(ready, self._link_free_at)
                self._link_free_at = start + nbytes / self.bandwidth
                ready = self._link_free_at
        time.sleep(max(0.0, ready - time.monotonic()))

    def put(self, name, data):
        self._transfer(len(data))
        self.inner.put(name, data)

    def get(self, name, offset=0, length=None):
        data = self.inner.get(name, offset, length)
        self._transfer(len(data))
        return data

    def size(self, name):
        self._transfer(0)
        return self.inner.size(name)

    def list(self, prefix=""):
        self._transfer(0)
        return self.inner.list(prefix)

    def delete(self, name):
        self._transfer(0)
        self.inner.delete(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, default=30.0)
    parser.add_argument("--bandwidth-mbps", type=float, default=0.0, help="MB/s; 0 = unlimited")
    parser.add_argument("--no-read-ahead", action="store_true")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    opts = parser.parse_args()
    args = opts.args[1:] if opts.args[:1] == ["--"] else opts.args
    local = backends.register_scheme("file", lambda url: RemoteLikeBackend(local(url), opts.latency_ms / 1000,
                                                                           opts.bandwidth_mbps * 1_000_000))
    if opts.no_read_ahead:
        from fsbackup.mount import view as vfs
        init = vfs.RepositoryView.__init__

        def without_read_ahead(self, *a, **kw):
            init(self, *a, **kw)
            self.loader.max_prefetch = 0
        vfs.RepositoryView.__init__ = without_read_ahead
    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
