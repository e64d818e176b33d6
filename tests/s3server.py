"""A real S3 server for the s3:// tests: moto's server mode, run as a separate process on a free
loopback port, as a user runs MinIO or any other S3-compatible store beside fsbackup.

    from s3server import s3_bucket, s3_server   # fixtures: the server (one per session), a fresh bucket

`s3_bucket` gives each test a new, empty bucket and sets the variables that lead s3:// URLs to it
(endpoint, path-style addressing, moto's dummy credentials, no ~/.aws files); after the test the
server forgets everything (moto's reset), so its memory does not grow over the session.
"""
from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest

ACCESS_KEY = "fsbackup-test-key"      # moto accepts any credentials unless told to check them
SECRET_KEY = "fsbackup-test-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """`python -m moto.server` on 127.0.0.1:`port`; `start` waits until it answers."""

    def __init__(self, port: int | None = None, **environ: str):
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.environ = environ          # extra variables of the server process (e.g. moto's settings)
        self.process: subprocess.Popen | None = None
        # The server's log, to say why it failed (a pipe nobody reads would stop it once full).
        self.log = tempfile.TemporaryFile()

    def start(self, timeout: float = 60) -> S3Server:
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                        env={**os.environ, **self.environ}, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the S3 server did not start: {self.log_tail()}")
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2).close()
                return self
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the S3 server did not answer on port {self.port} within {timeout} s")
                time.sleep(0.1)

    def log_tail(self, size: int = 4000) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-size:]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def reset(self) -> None:
        """Forget every bucket and object (and moto's counters)."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", data=b"", method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    def client_environ(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> dict[str, str]:
        """The variables that make s3:// URLs (and boto3) reach this server with these credentials,
        whatever the machine's own AWS settings are."""
        return {"FSBACKUP_S3_ENDPOINT": self.endpoint, "FSBACKUP_S3_PATH_STYLE": "1",
                "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key,
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                "AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY, service: str = "s3"):
        """A plain boto3 client of this server, for setting up and looking behind fsbackup's back."""
        import boto3
        from botocore.config import Config
        return boto3.client(service, endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}))

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"fsbackup-test-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name)
        return name


@dataclass
class Bucket:
    """A fresh bucket on the session's server; `url(prefix)` is an s3:// URL in it."""
    server: S3Server
    name: str

    def url(self, prefix: str = "repo") -> str:
        return f"s3://{self.name}/{prefix}" if prefix else f"s3://{self.name}"

    def keys(self) -> list[str]:
        answer = self.server.client().list_objects_v2(Bucket=self.name)
        return sorted(item["Key"] for item in answer.get("Contents", []))


@pytest.fixture(scope="session")
def s3_server():
    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):
    for var, value in s3_server.client_environ().items():
        monkeypatch.setenv(var, value)
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", "FSBACKUP_S3_REGION"):
        monkeypatch.delenv(var, raising=False)
    yield Bucket(s3_server, s3_server.create_bucket())
    s3_server.reset()
