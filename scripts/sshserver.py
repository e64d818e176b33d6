"""A throwaway OpenSSH server for tests and benchmarks of the sftp:// backend.

`SshServer().start()` runs `/usr/sbin/sshd -D` on a free loopback port, with a host key and a
user key made by ssh-keygen in a new folder of its own, a known_hosts file naming that host key, and
`Subsystem sftp internal-sftp` as the only thing the user may run. The user is an unprivileged
one (created with useradd when missing), so permissions on the server behave as on a real one;
`storage()` makes a folder that user owns. `stop()` removes both kinds of folder. Needs root
(sshd changes to the user) and openssh-server. Only the standard library is used (scripts/bench.py
imports it too).
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"
USER = "fsbackup-sftp"


def missing() -> str:
    """Why no server can be started here ('' when one can)."""
    if os.geteuid() != 0:
        return "starting sshd for a test user needs root"
    for tool in (SSHD, shutil.which("ssh-keygen"), shutil.which("useradd")):
        if not tool or not os.path.exists(tool):
            return "openssh-server (sshd, ssh-keygen) and useradd are needed (scripts/env.sh installs them)"
    return ""


def ensure_user(name: str = USER) -> pwd.struct_passwd:
    """The unprivileged login user, created when missing. Its password field is '*' (no password,
    but not locked: sshd refuses even key logins to a locked account)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", "--password", "*", name],
                       check=True)
        return pwd.getpwnam(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)


class SshServer:
    def __init__(self, sftp_flags: str = "") -> None:
        """`sftp_flags`: options of the server's SFTP (internal-sftp, as sftp-server's), e.g. `-P
        REQUEST,...` to refuse some requests as a server without them would."""
        self.sftp_flags = sftp_flags
        # In the system's temporary folder, readable by all: sshd reads authorized_keys as the user.
        self.folder = Path(tempfile.mkdtemp(prefix="fsb-sshd-"))
        self.folder.chmod(0o755)
        self.storages: list[Path] = []
        self.user = ensure_user()
        self.host_key = self.folder / "host_ed25519"
        self.user_key = self.folder / "id_ed25519"
        self.known_hosts = self.folder / "known_hosts"
        self.authorized_keys = self.folder / "authorized_keys"
        self.config = self.folder / "sshd_config"
        self.log = self.folder / "sshd.log"
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def url(self, path: str | Path) -> str:
        return f"sftp://{self.user.pw_name}@{self.host}:{self.port}{path}"

    def storage(self) -> Path:
        """A new empty folder the login user owns, in a place every user can reach."""
        base = Path(tempfile.mkdtemp(prefix="fsb-sftp-"))
        base.chmod(0o755)
        os.chown(base, self.user.pw_uid, self.user.pw_gid)
        self.storages.append(base)
        return base

    def start(self) -> "SshServer":
        if not self.host_key.exists():
            keygen(self.host_key, "fsbackup test host")
            keygen(self.user_key, "fsbackup test user")
            shutil.copy(self.user_key.with_suffix(".pub"), self.authorized_keys)
            self.authorized_keys.chmod(0o644)
        self.port = self.port or free_port()
        self.config.write_text(
            f"Port {self.port}\n"
            f"ListenAddress {self.host}\n"
            f"HostKey {self.host_key}\n"
            f"AuthorizedKeysFile {self.authorized_keys}\n"
            f"PidFile none\n"
            "StrictModes no\n"
            "UsePAM no\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\n"
            "PermitRootLogin no\n"
            f"AllowUsers {self.user.pw_name}\n"
            f"Subsystem sftp internal-sftp {self.sftp_flags}\n"
            f"ForceCommand internal-sftp {self.sftp_flags}\n"
            "MaxSessions 64\n"
            "MaxStartups 64\n"
            "LogLevel ERROR\n")
        host_public = self.host_key.with_suffix(".pub").read_text().split()[:2]
        self.known_hosts.write_text(f"[{self.host}]:{self.port} {' '.join(host_public)}\n")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)     # its privilege separation folder
        self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"),
                                        start_new_session=True)
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def _descendants(self) -> list[int]:
        """The sshd processes serving connections (each in a session of its own), found by parent."""
        assert self.process is not None
        parents: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                parents[int(entry)] = int(fields[1])
        found, frontier = [], [self.process.pid]
        while frontier:
            children = [pid for pid, parent in parents.items() if parent in frontier]
            found += children
            frontier = children
        return found

    def kill(self) -> None:
        """Kill the server and every connection it serves at once, as a crash or power loss would."""
        if self.process is None:
            return
        for pid in [self.process.pid, *self._descendants()]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Start again on the same port, with the same keys."""
        self.kill()
        self.start()

    def stop(self) -> None:
        self.kill()
        for folder in [self.folder, *self.storages]:
            shutil.rmtree(folder, ignore_errors=True)

    def __enter__(self) -> "SshServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
