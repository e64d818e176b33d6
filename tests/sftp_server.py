"""A real OpenSSH server for the sftp:// tests: the session's `sftp_server` (scripts/sshserver.py
starts it), and how a test reaches a fresh repository on it."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import sshserver  # noqa: E402 - scripts/ holds the server shared with scripts/bench.py

from fsbackup.backends.sftp import Settings  # noqa: E402


@pytest.fixture(scope="session")
def sftp_server():
    why = sshserver.missing()
    if why:
        pytest.skip(f"no test SSH server: {why}")
    with sshserver.SshServer() as server:
        yield server


def settings(server: sshserver.SshServer, **changes) -> Settings:
    """The server's test key and known_hosts file (what --sftp-identity and --sftp-known-hosts name)."""
    base = {"identity": str(server.user_key), "known_hosts": str(server.known_hosts)}
    return Settings(**{**base, **changes})


def environ(server: sshserver.SshServer) -> dict[str, str]:
    """The variables that point fsbackup at the server's test key and known_hosts file."""
    return {"FSBACKUP_SFTP_IDENTITY": str(server.user_key), "FSBACKUP_SFTP_KNOWN_HOSTS": str(server.known_hosts)}
