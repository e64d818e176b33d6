"""Bandwidth limits: --limit-upload and --limit-download (KiB/s) hold over every connection of
the process (one token bucket per direction, `backends.throttle`); 0 or nothing means unlimited;
a bad value is one line, exit 2."""
from __future__ import annotations

import threading
import time

import pytest
from conftest import pseudo_random, write
from doubles.memory import MemoryBackend

from fsbackup import errors
from fsbackup.backends import open_backend, throttle
from fsbackup.backends.retry import RetryingBackend
from fsbackup.backends.throttle import Bandwidth, ThrottledBackend, TokenBucket


class FakeClock:
    """A clock that moves only when slept on: waits are counted, not spent."""

    def __init__(self):
        self.now = 0.0
        self.slept: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)


def test_a_bucket_starts_empty_and_charges_each_byte_at_its_rate():
    clock = FakeClock()
    bucket = TokenBucket(1000, clock, clock.sleep)
    bucket.take(500)
    assert clock.slept == [pytest.approx(0.5)]
    bucket.take(1500)                         # the debt of the first is still there: 2000 bytes in all
    assert clock.slept[-1] == pytest.approx(2.0)
    clock.now = 10.0                          # idle: it fills up to one second's worth, no more
    bucket.take(1000)
    assert clock.slept[-1] == pytest.approx(2.0)   # (unchanged: nothing slept for this one)
    assert len(clock.slept) == 2
    bucket.take(1)
    assert clock.slept[-1] == pytest.approx(0.001)


def test_threads_share_one_budget():
    """Four threads putting 256 KiB each at 512 KiB/s: 1 MiB takes about 2 s in all, not 0.5 s."""
    backend = ThrottledBackend(MemoryBackend(), Bandwidth.of(upload_kib=512))
    started = time.monotonic()
    threads = [threading.Thread(target=backend.put, args=(f"data/{i}", bytes(256 * 1024))) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 1.8 <= time.monotonic() - started <= 4.0
    assert len(backend.inner.objects) == 4


def test_downloads_are_charged_by_what_came():
    inner = MemoryBackend()
    inner.put("data/x", bytes(300 * 1024))
    backend = ThrottledBackend(inner, Bandwidth.of(download_kib=1024))
    started = time.monotonic()
    backend.put("data/y", bytes(4 << 20))                     # uploads are not limited here
    assert time.monotonic() - started < 0.5
    assert len(backend.get("data/x", 0, 100 * 1024)) == 100 * 1024
    assert len(backend.get("data/x")) == 300 * 1024           # 400 KiB at 1 MiB/s
    assert 0.3 <= time.monotonic() - started <= 2.0


def test_no_limit_means_no_wrapper(tmp_path):
    assert Bandwidth.of(0, 0) is None
    backend = open_backend(str(tmp_path / "repo"))
    assert isinstance(backend, RetryingBackend) and not isinstance(backend.inner, ThrottledBackend)
    limited = open_backend(str(tmp_path / "repo"), limit_upload=64)
    assert isinstance(limited.inner, ThrottledBackend)
    again = open_backend(str(tmp_path / "repo"), limit_upload=64)
    assert again.inner.bandwidth is limited.inner.bandwidth   # one budget per process


def test_a_2_mib_backup_under_limit_upload_512_takes_about_4_s(env, tmp_path, monkeypatch):
    monkeypatch.setattr(throttle, "_shared", {})
    src = write(tmp_path / "src" / "random.bin", pseudo_random(2 << 20, 3))
    started = time.monotonic()
    r = env.ok("backup", src.parent, "--limit-upload", "512", "--no-verify")
    elapsed = time.monotonic() - started
    assert 3.0 <= elapsed <= 8.0, (elapsed, r.out)
    # Unlimited (0, or the option left out): far quicker.
    write(src, pseudo_random(2 << 20, 4))
    started = time.monotonic()
    env.ok("backup", src.parent, "--limit-upload", "0", "--no-verify")
    assert time.monotonic() - started < 3.0


def test_limit_download_slows_a_restore(env, tmp_path, monkeypatch):
    monkeypatch.setattr(throttle, "_shared", {})
    src = write(tmp_path / "src" / "random.bin", pseudo_random(1 << 20, 5))
    env.ok("backup", src.parent, "--no-verify")
    started = time.monotonic()
    env.ok("restore", "latest", "--target", tmp_path / "out", "--limit-download", "512")
    assert 1.5 <= time.monotonic() - started <= 6.0


@pytest.mark.parametrize("value", ["-1", "fast", "1.5", ""])
@pytest.mark.parametrize("option", ["--limit-upload", "--limit-download"])
def test_a_bad_limit_is_one_line_exit_2(env, option, value):
    r = env.run("versions", option, value)
    assert r.rc == errors.EXIT_USAGE
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and "is not a rate in KiB/s" in lines[0], r.err


def test_the_limits_are_global_options(env):
    r = env.ok("--limit-upload", "100", "--limit-download", "200", "versions")
    assert r.rc == 0
    for command in ("backup", "restore", "mount", "check", "prune", "init"):
        help_text = " ".join(env.run(command, "--help").out.split())
        assert "--limit-upload KIB" in help_text and "--limit-download KIB" in help_text


def test_the_mount_reads_within_limit_download(env, tmp_path):
    from test_mount import FUSE_MISSING, Mount
    if FUSE_MISSING:
        pytest.skip(f"FUSE unavailable: {FUSE_MISSING}")
    src = write(tmp_path / "src" / "random.bin", pseudo_random(1 << 20, 6))
    env.ok("backup", src.parent, "--no-verify")
    m = Mount(env, tmp_path / "mnt", "--limit-download", "256", "--cache-size", "0")
    try:
        started = time.monotonic()
        data = (m.version_dir() / str(src).lstrip("/")).read_bytes()
        elapsed = time.monotonic() - started
    finally:
        assert m.stop() == 0, m.output()
    assert data == src.read_bytes()
    assert 2.5 <= elapsed <= 12.0, elapsed            # 1 MiB at 256 KiB/s: about 4 s
