"""A repository on an SSH server, through SFTP: `sftp://[USER@]HOST[:PORT]/ABSOLUTE/PATH`.

Why paramiko rather than asyncssh: fsbackup's backends are synchronous, and the engines call
them from thread pools (the backup's upload pool, the restore's and check's download pools, the
mount's trio worker threads through `trio.to_thread.run_sync`). paramiko's SFTPClient blocks the
calling thread, which is exactly that model: each call borrows one SFTP session of a small pool
for its whole request. asyncssh would need an event loop in a thread of its own and every call
bridged into it, and back, with no gain for callers that block anyway.

Trust, as OpenSSH's `ssh` does it: the server's host key must already be in known_hosts
(~/.ssh/known_hosts, or --sftp-known-hosts / FSBACKUP_SFTP_KNOWN_HOSTS); an unknown key and a
changed key are refused with different one-line errors and never added. Keys: the one file named
by --sftp-identity / FSBACKUP_SFTP_IDENTITY alone, or else the SSH agent's keys and then
~/.ssh/id_ed25519, id_ecdsa and id_rsa (passphrase-protected files are left to the agent).

Puts write a temporary `.tmp-` name in the object's folder (the contract reserves such names),
ask the server to flush it (fsync@openssh.com, when offered), then rename it over the object
with posix-rename@openssh.com, which replaces atomically. A server without that extension gets
remove-then-rename: a reader may then meet no object for a moment, so such a backend declares
`atomic_replace` False. Folders are made when a put first finds them missing.

Errors: a lost connection, a timeout or a refused connection is temporary (the broken session
is thrown away, the next call connects again); SFTP's "no such file" is NoSuchObject and
"permission denied" PermissionDenied. A full disk has no code of its own in SFTP version 3
(which OpenSSH speaks): the server answers the generic SSH_FX_FAILURE, reported as a permanent
BackendError that names a full disk or quota as the likely cause.
"""
from __future__ import annotations

import base64
import errno
import getpass
import hashlib
import logging
import os
import posixpath
import secrets
import socket
import stat
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import unquote, urlsplit

import paramiko
from paramiko.sftp import CMD_EXTENDED, CMD_EXTENDED_REPLY

from ..errors import AuthenticationFailed, BackendError, FsbackupError, NoSuchObject, PermissionDenied, UsageError
from . import Backend, BackendTraits, Latency

TMP_PREFIX = ".tmp-"
ENV_IDENTITY = "FSBACKUP_SFTP_IDENTITY"
ENV_KNOWN_HOSTS = "FSBACKUP_SFTP_KNOWN_HOSTS"
DEFAULT_IDENTITIES = ("id_ed25519", "id_ecdsa", "id_rsa")
DEFAULT_CONNECTIONS = 4
CONNECT_TIMEOUT = 20.0        # seconds to reach the server, and for its banner and authentication
IO_TIMEOUT = 60.0             # seconds a request may wait for an answer before the session counts as lost
READ_PIECE = 1 << 20          # bytes of a range handed to paramiko's readv as one piece
# paramiko reads and writes 32 KiB per request and lets 32 KiB travel per SSH packet: in Python,
# the cost of a packet or a request (decrypting, checking, handing over between threads) is what
# limits a transfer. A server that states its limits (limits@openssh.com: OpenSSH's 255 KiB) is
# asked for up to that much per read and sent that much per write, with SSH packets of up to
# MAX_PACKET coming in and a channel window that lets a run of a few MiB stream without waiting;
# one that does not keeps paramiko's 32 KiB.
MAX_PACKET = 256 << 10
WINDOW = 8 << 20
DEFAULT_REQUEST = paramiko.SFTPFile.MAX_REQUEST_SIZE
KEEPALIVE = 30                # seconds between keepalives, so an idle mount notices a dead server

# paramiko logs a dropped connection with a traceback from its transport thread; fsbackup reports
# such failures itself, once, as one line.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)


# ---- errors ---------------------------------------------------------------------------------------

class UnknownHostKey(AuthenticationFailed):
    """The server's host key is not in known_hosts: nothing proves it is the server meant."""


class ChangedHostKey(AuthenticationFailed):
    """known_hosts holds another key for the server: a reinstalled server, or an impostor."""


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _refused(e: OSError) -> bool:
    """Whether an SFTP status means the server does not do the request: SSH_FX_OP_UNSUPPORTED
    (which paramiko gives no errno), or "permission denied" from a server that refuses it by policy."""
    return e.errno == errno.EACCES or (e.errno is None and "unsupported" in str(e).lower())


def fingerprint(key: paramiko.PKey) -> str:
    """The key's SHA256 fingerprint as OpenSSH prints it."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


# ---- the URL and the settings -----------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    user: str
    host: str
    port: int
    root: str              # absolute folder on the server, without a trailing '/'

    @property
    def known_hosts_name(self) -> str:
        """The host's name in known_hosts, as OpenSSH writes it."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


def parse_url(url: str) -> Target:
    """'sftp://[USER@]HOST[:PORT]/PATH' -> Target (the current user when USER is left out)."""
    usage = f"'{url}' is not an SFTP repository URL: use sftp://USER@HOST[:PORT]/ABSOLUTE/PATH"
    try:
        parts = urlsplit(url)
        port = parts.port or 22
    except ValueError:
        raise UsageError(usage) from None
    path = posixpath.normpath(unquote(parts.path)) if parts.path else ""
    if parts.scheme != "sftp" or not parts.hostname or not path.startswith("/") or parts.query or parts.fragment:
        raise UsageError(usage)
    user = unquote(parts.username) if parts.username else getpass.getuser()
    return Target(user, parts.hostname, port, path.rstrip("/") or "/")


@dataclass(frozen=True)
class Settings:
    """Where the keys and known hosts come from (the command line's options or their variables)."""
    identity: str | None = None        # the one key file to use; None: the agent, then ~/.ssh's
    known_hosts: str | None = None     # None: ~/.ssh/known_hosts

    @classmethod
    def from_environment(cls) -> "Settings":
        return cls(os.environ.get(ENV_IDENTITY) or None, os.environ.get(ENV_KNOWN_HOSTS) or None)


def _ssh_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".ssh")


def _load_known_hosts(path: str, explicit: bool) -> paramiko.HostKeys:
    keys = paramiko.HostKeys()
    try:
        keys.load(path)
    except FileNotFoundError:
        if explicit:
            raise UsageError(f"known hosts file {path} does not exist (--sftp-known-hosts)") from None
    except (OSError, paramiko.SSHException) as e:
        raise UsageError(f"cannot read known hosts file {path}: {_one_line(e)}") from None
    return keys


def _load_keys(settings: Settings) -> tuple[list[paramiko.PKey], list[str]]:
    """The keys to offer, and where they came from (for the error when all are refused)."""
    if settings.identity:
        try:
            return [paramiko.PKey.from_path(settings.identity)], [settings.identity]
        except paramiko.PasswordRequiredException:
            raise UsageError(f"the SSH key {settings.identity} is protected by a passphrase: load it into "
                             "ssh-agent and leave out --sftp-identity") from None
        except (OSError, paramiko.SSHException, ValueError) as e:
            raise UsageError(f"cannot read SSH key {settings.identity}: {_one_line(e)}") from None
    keys: list[paramiko.PKey] = []
    sources: list[str] = []
    if os.environ.get("SSH_AUTH_SOCK"):
        try:
            agent_keys = list(paramiko.Agent().get_keys())
        except paramiko.SSHException:
            agent_keys = []
        keys += agent_keys
        sources += ["ssh-agent"] * bool(agent_keys)
    for name in DEFAULT_IDENTITIES:
        path = os.path.join(_ssh_dir(), name)
        try:
            keys.append(paramiko.PKey.from_path(path))
            sources.append(path)
        except (OSError, paramiko.SSHException, ValueError):
            continue     # absent, passphrase-protected (the agent's business) or of a kind paramiko lacks
    return keys, sources


# ---- sessions -------------------------------------------------------------------------------------

class _Session:
    """One SFTP channel and the SSH connection it runs on (maybe shared with other sessions)."""

    def __init__(self, transport: paramiko.Transport, sftp: paramiko.SFTPClient, owns_transport: bool):
        self.transport, self.sftp, self.owns_transport = transport, sftp, owns_transport

    def alive(self) -> bool:
        return self.transport.is_active() and not self.sftp.sock.closed

    def close(self) -> None:
        try:
            self.sftp.close()
            if self.owns_transport:
                self.transport.close()
        except Exception:
            pass


class SftpBackend(Backend):
    """Objects as files below a folder of an SSH server, reached through SFTP.

    Thread-safe: each call borrows one SFTP session from a pool of at most `connections`, each
    on an SSH connection of its own: over loopback that measured as fast as channels of one
    connection (docs/sftp.md), and over a network each connection has its own TCP window and
    its own paramiko transport thread, where channels would share one of each. A session that
    broke is dropped and the next call connects again. A process forked after opening (the
    mount's --daemon) starts with an empty pool: SSH connections do not survive a fork.
    """

    traits = BackendTraits(atomic_replace=True, immediate_listing=True, latency=Latency.REMOTE)

    def __init__(self, url: str, settings: Settings | None = None, share_connection: bool = False):
        """Connects at once, so a bad host, host key or key fails here with its own error.
        `share_connection`: run every session as a channel of one SSH connection instead (kept
        to compare the two layouts, docs/sftp.md)."""
        self.url = url
        self.target = parse_url(url)
        self.settings = settings or Settings.from_environment()
        self.share_connection = share_connection
        known_hosts = self.settings.known_hosts or os.path.join(_ssh_dir(), "known_hosts")
        self._known_hosts_path = known_hosts
        self._host_keys = _load_known_hosts(known_hosts, explicit=self.settings.known_hosts is not None)
        self._keys, self._key_sources = _load_keys(self.settings)
        self._connections = DEFAULT_CONNECTIONS
        self._lock = threading.Condition()
        self._idle: list[_Session] = []
        self._open = 0                      # sessions made and not dropped (idle or borrowed)
        self._shared: paramiko.Transport | None = None
        self._pid = os.getpid()
        self._posix_rename: bool | None = None     # whether the server has posix-rename@openssh.com
        self._fsync = True                          # whether to ask for fsync@openssh.com (until refused)
        # bytes asked for per read request and sent per write request (`_probe`)
        self._read_request = self._write_request = DEFAULT_REQUEST
        session = self._checkout()
        try:
            self._probe(session)
        finally:
            self._checkin(session)

    @property
    def connections(self) -> int:
        return self._connections

    @connections.setter
    def connections(self, n: int) -> None:
        with self._lock:
            self._connections = n
            self._lock.notify_all()

    # ---- connecting -------------------------------------------------------------------------------

    def _where(self) -> str:
        return f"{self.target.host}:{self.target.port}"

    def _new_transport(self) -> paramiko.Transport:
        t = self.target
        try:
            sock = socket.create_connection((t.host, t.port), timeout=CONNECT_TIMEOUT)
        except socket.gaierror as e:
            raise BackendError(f"cannot find SFTP server {t.host}: {e.strerror}; check the repository URL") from None
        except OSError as e:
            raise BackendError(f"cannot connect to SFTP server {self._where()}: {_one_line(e)}",
                               temporary=True) from None
        transport = paramiko.Transport(sock)
        try:
            transport.banner_timeout = transport.auth_timeout = CONNECT_TIMEOUT
            known = self._host_keys.lookup(t.known_hosts_name) or {}
            if known:
                # Ask for a kind of host key known_hosts has, so a server with several kinds is
                # not refused for offering another one first.
                options = transport.get_security_options()
                options.key_types = [k for k in known.keys() if k in options.key_types] + \
                                    [k for k in options.key_types if k not in known]
            transport.start_client(timeout=CONNECT_TIMEOUT)
            self._check_host_key(transport.get_remote_server_key(), known)
            self._authenticate(transport)
            transport.set_keepalive(KEEPALIVE)
            return transport
        except FsbackupError:
            transport.close()
            raise
        except (paramiko.SSHException, OSError, EOFError) as e:
            transport.close()
            raise BackendError(f"SSH connection to {self._where()} failed: {_one_line(e)}", temporary=True) from None

    def _check_host_key(self, key: paramiko.PKey, known: dict) -> None:
        name, where = self.target.known_hosts_name, self._known_hosts_path
        if not known:
            raise UnknownHostKey(
                f"the SSH host key of {name} is unknown ({key.get_name()} {fingerprint(key)}) and not in {where}: "
                f"if that fingerprint is the server's, add it with 'ssh-keyscan -p {self.target.port} "
                f"{self.target.host} >> {where}' or by connecting once with ssh")
        if known.get(key.get_name()) != key:
            raise ChangedHostKey(
                f"WARNING: THE SSH HOST KEY OF {name} HAS CHANGED (now {key.get_name()} {fingerprint(key)}), "
                f"unlike the one in {where}: someone may be intercepting the connection; connect only if you "
                f"know why it changed (a reinstalled server), after 'ssh-keygen -R \"{name}\" -f {where}'")

    def _authenticate(self, transport: paramiko.Transport) -> None:
        user, where = self.target.user, self._where()
        if not self._keys:
            raise AuthenticationFailed(f"no SSH key to log in to {where} as {user}: start ssh-agent with the key, "
                                       f"put it in ~/.ssh/id_ed25519, or name it with --sftp-identity FILE")
        for key in self._keys:
            try:
                transport.auth_publickey(user, key)
                return
            except paramiko.AuthenticationException:
                continue
        raise AuthenticationFailed(f"the SFTP server {where} refused user {user} with the SSH keys of "
                                   f"{', '.join(self._key_sources)}: add the public key to the user's "
                                   f"authorized_keys on the server, or name another with --sftp-identity FILE")

    def _new_session(self) -> _Session:
        with self._lock:
            shared = self._shared if self.share_connection and self._shared and self._shared.is_active() else None
        transport = shared or self._new_transport()
        try:
            sftp = paramiko.SFTPClient.from_transport(transport, window_size=WINDOW, max_packet_size=MAX_PACKET)
            if sftp is None:
                raise paramiko.SSHException("no SFTP channel")
        except (paramiko.SSHException, OSError, EOFError) as e:
            if not shared:
                transport.close()
            raise BackendError(f"the SSH server {self._where()} offers no SFTP ({_one_line(e)}): enable its "
                               "sftp subsystem", temporary=not transport.is_active()) from None
        sftp.get_channel().settimeout(IO_TIMEOUT)
        if self.share_connection and not shared:
            with self._lock:
                self._shared = transport
        return _Session(transport, sftp, owns_transport=not self.share_connection)

    def _checkout(self) -> _Session:
        """A session for one call: an idle one, a new one while fewer than `connections` exist,
        or else the first one given back."""
        with self._lock:
            if self._pid != os.getpid():
                # A forked child: the parent's sessions are not ours to use (nor to close: that
                # would end the parent's connections).
                self._pid, self._idle, self._open, self._shared = os.getpid(), [], 0, None
            while True:
                while self._idle:
                    session = self._idle.pop()
                    if session.alive():
                        return session
                    self._open -= 1      # lost while idle (the keepalive noticed): connect anew
                    session.close()
                if self._open < self._connections:
                    break
                self._lock.wait()
            self._open += 1
        try:
            return self._new_session()
        except BaseException:
            with self._lock:
                self._open -= 1
                self._lock.notify()
            raise

    def _checkin(self, session: _Session, healthy: bool = True) -> None:
        with self._lock:
            if healthy and session.alive() and self._pid == os.getpid():
                self._idle.append(session)
            else:
                self._open -= 1
                session.close()
            self._lock.notify()

    @contextmanager
    def _sftp(self, what: str, name: str | None = None, listing: bool = False) -> Iterator[paramiko.SFTPClient]:
        """Borrow a session for `what` (on object `name`); translate what goes wrong into our errors."""
        session = self._checkout()
        healthy = False
        try:
            yield session.sftp
            healthy = True
        except FsbackupError:
            healthy = True
            raise
        except (OSError, EOFError, paramiko.SSHException) as e:
            # An answer of the server (an SFTP status) leaves the session usable; anything else
            # (a timeout, a dropped connection, a closed channel) means the session is lost.
            if not (isinstance(e, OSError) and not isinstance(e, TimeoutError) and session.alive()
                    and e.errno in (None, errno.ENOENT, errno.EACCES)):
                raise BackendError(f"connection to SFTP server {self._where()} lost during {what}: {_one_line(e)}",
                                   temporary=True) from None
            healthy = True
            raise self._status_error(e, what, name, listing) from None
        finally:
            self._checkin(session, healthy)

    def _status_error(self, e: OSError, what: str, name: str | None, listing: bool) -> FsbackupError:
        """The error for an SFTP status the server answered."""
        if e.errno == errno.ENOENT:
            if listing or name is None:
                return BackendError(f"cannot list repository folder {name or '/'} on {self._where()}: "
                                    "it vanished while listing")
            return NoSuchObject(name)
        if e.errno == errno.EACCES:
            return PermissionDenied(f"the SFTP server {self._where()} denied {what}: permission denied; check the "
                                    f"permissions of {self.target.root} for user {self.target.user}")
        # SSH_FX_FAILURE (and other codes paramiko gives no errno): SFTP version 3 has no code
        # for a full disk, which is the usual cause during writes.
        return BackendError(f"the SFTP server {self._where()} failed {what} ({_one_line(e)}; SFTP gives no "
                            f"reason: a full disk or quota on the server is the usual one)")

    def _probe(self, session: _Session) -> None:
        """Learn whether the server replaces by posix-rename@openssh.com: renaming a name that
        does not exist answers "no such file" when it does, "unsupported" or "permission denied"
        when it does not."""
        missing = posixpath.join(self.target.root, TMP_PREFIX + "probe-" + secrets.token_hex(8))
        try:
            session.sftp.posix_rename(missing, missing + "-renamed")
            self._posix_rename = True        # (cannot happen: nothing has that name)
        except OSError as e:
            # (a server that refuses the request by policy answers "permission denied")
            self._posix_rename = e.errno == errno.ENOENT
        except (EOFError, paramiko.SSHException) as e:
            raise BackendError(f"connection to SFTP server {self._where()} lost: {_one_line(e)}",
                               temporary=True) from None
        if not self._posix_rename:
            self.traits = BackendTraits(atomic_replace=False, immediate_listing=True, latency=Latency.REMOTE)
        self._read_request, self._write_request = self._request_sizes(session)

    def _request_sizes(self, session: _Session) -> tuple[int, int]:
        """The bytes to ask for per read request and to send per write request: what the server
        says it handles in full (limits@openssh.com, up to READ_PIECE), else paramiko's 32 KiB,
        which every server does."""
        try:
            kind, reply = session.sftp._request(CMD_EXTENDED, "limits@openssh.com")
            if kind != CMD_EXTENDED_REPLY:
                return DEFAULT_REQUEST, DEFAULT_REQUEST
            reply.get_int64()                         # (the longest message: not needed)
            longest_read, longest_write = reply.get_int64(), reply.get_int64()
        except OSError:
            return DEFAULT_REQUEST, DEFAULT_REQUEST   # not offered (or refused) by this server
        except (EOFError, paramiko.SSHException) as e:
            raise BackendError(f"connection to SFTP server {self._where()} lost: {_one_line(e)}",
                               temporary=True) from None

        def usable(longest: int) -> int:
            return min(longest, READ_PIECE) if longest >= DEFAULT_REQUEST else DEFAULT_REQUEST
        return usable(longest_read), usable(longest_write)

    # ---- objects ----------------------------------------------------------------------------------

    def _path(self, name: str) -> str:
        return posixpath.join(self.target.root, name)

    def put(self, name: str, data: bytes) -> None:
        path = self._path(name)
        folder = posixpath.dirname(path)
        tmp = posixpath.join(folder, TMP_PREFIX + secrets.token_hex(8))
        with self._sftp(f"the upload of {name}", name) as sftp:
            try:
                f = sftp.open(tmp, "wb")
            except FileNotFoundError:
                self._make_folders(sftp, folder)
                f = sftp.open(tmp, "wb")
            try:
                with f:
                    f.MAX_REQUEST_SIZE = self._write_request
                    f.set_pipelined(True)
                    f.write(data)
                    self._flush(sftp, f)
                self._publish(sftp, tmp, path)
            except BaseException:
                try:
                    sftp.remove(tmp)
                except Exception:
                    pass        # the connection is gone: remove_partial_uploads takes it later
                raise

    def _make_folders(self, sftp: paramiko.SFTPClient, folder: str) -> None:
        missing = []
        while folder not in ("/", ""):
            try:
                sftp.stat(folder)
                break
            except FileNotFoundError:
                missing.append(folder)
                folder = posixpath.dirname(folder)
        for path in reversed(missing):
            try:
                sftp.mkdir(path)
            except OSError:
                sftp.stat(path)         # made meanwhile by another put is fine; else its error

    def _flush(self, sftp: paramiko.SFTPClient, f: paramiko.SFTPFile) -> None:
        """Wait until the server has answered every write of the file, raising the first that
        failed; then have it fsync the file (fsync@openssh.com), as a local put does, when it can.
        paramiko reads the answers to pipelined writes only while more than 100 are pending, and
        drops the others unread when the next request of the session reads past them (a close,
        the fsync): the failure of a put's last writes (a full disk) would go unnoticed, and the
        object be published cut short. So they are read here, in order, each raising its failure."""
        f.flush()
        while f._reqs:
            sftp._read_response(f._reqs.popleft())
        if not self._fsync:
            return
        try:
            sftp._request(CMD_EXTENDED, "fsync@openssh.com", f.handle)
        except OSError as e:
            if not _refused(e):
                raise
            self._fsync = False          # not offered by this server: its own caching decides

    def _publish(self, sftp: paramiko.SFTPClient, tmp: str, path: str) -> None:
        if self._posix_rename:
            sftp.posix_rename(tmp, path)
            return
        # Plain SFTP rename refuses an existing target: remove it first (not atomic; the traits say so).
        try:
            sftp.remove(path)
        except FileNotFoundError:
            pass
        sftp.rename(tmp, path)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        with self._sftp(f"the download of {name}", name) as sftp:
            with sftp.open(self._path(name), "rb") as f:
                f.MAX_REQUEST_SIZE = self._read_request
                size = f.stat().st_size or 0
                end = size if length is None else min(size, offset + length)
                if end <= offset:
                    return b""
                # readv asks for every 32 KiB request at once instead of one after another. It
                # is given the range in pieces: one long read of its buffers would join them
                # again and again (quadratic: half a minute for a 32 MiB volume).
                pieces = [(start, min(READ_PIECE, end - start)) for start in range(offset, end, READ_PIECE)]
                return b"".join(f.readv(pieces))

    def size(self, name: str) -> int:
        with self._sftp(f"the size of {name}", name) as sftp:
            return sftp.stat(self._path(name)).st_size or 0

    def delete(self, name: str) -> None:
        with self._sftp(f"the deletion of {name}", name) as sftp:
            try:
                sftp.remove(self._path(name))
            except FileNotFoundError:
                pass

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        for name, size, _ in self.list_modified(prefix):
            yield name, size

    def list_modified(self, prefix: str = "") -> Iterator[tuple[str, int, float]]:
        # Walk only the folder the prefix names, so listing 'versions/' never touches data/. Every
        # folder must read (callers conclude "deleted" from what a listing lacks); only a missing
        # top folder is an empty listing (a new repository has no versions/ yet).
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        found: list[tuple[str, int, float]] = []
        with self._sftp(f"the listing of {prefix or '/'}", folder or None, listing=True) as sftp:
            start = self._path(folder) if folder else self.target.root
            try:
                sftp.stat(start)
            except FileNotFoundError:
                return
            pending = [(start, folder + "/" if folder else "")]
            while pending:
                path, rel = pending.pop()
                try:
                    entries = sftp.listdir_attr(path)
                except OSError as e:
                    if e.errno == errno.EACCES:
                        raise PermissionDenied(f"cannot list repository folder {rel or '/'} on {self._where()}: "
                                               "permission denied; check the repository's permissions") from None
                    raise
                for entry in entries:
                    name = rel + entry.filename
                    if entry.filename.startswith(TMP_PREFIX) or not name.startswith(prefix[:len(name)]):
                        continue
                    mode = entry.st_mode or 0
                    if stat.S_ISDIR(mode):
                        pending.append((posixpath.join(path, entry.filename), name + "/"))
                    elif stat.S_ISREG(mode) and name.startswith(prefix):
                        found.append((name, entry.st_size or 0, float(entry.st_mtime or 0)))
        yield from found

    def remove_partial_uploads(self, older_than_seconds: float) -> tuple[int, int]:
        """Remove the temporaries of puts (`.tmp-` files) not written to for `older_than_seconds`
        by the server's modification times, in every folder. Links are neither followed nor removed."""
        cutoff = time.time() - older_than_seconds
        removed, size = 0, 0
        with self._sftp("the removal of partial uploads", listing=True) as sftp:
            folders = [self.target.root]
            while folders:
                folder = folders.pop()
                try:
                    entries = sftp.listdir_attr(folder)
                except FileNotFoundError:
                    continue          # the root of a new repository, or a folder removed meanwhile
                for entry in entries:
                    mode, path = entry.st_mode or 0, posixpath.join(folder, entry.filename)
                    if stat.S_ISDIR(mode):
                        folders.append(path)
                    elif stat.S_ISREG(mode) and entry.filename.startswith(TMP_PREFIX) \
                            and (entry.st_mtime or 0) < cutoff:
                        try:
                            sftp.remove(path)
                        except FileNotFoundError:
                            continue  # renamed by its put, or removed by another run
                        removed += 1
                        size += entry.st_size or 0
        return removed, size

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            shared, self._shared = self._shared, None
        for session in idle:
            session.close()
        if shared is not None:
            shared.close()


def open_sftp(url: str) -> SftpBackend:
    """The backend for an `sftp://` URL, with the keys and known hosts of the environment."""
    return SftpBackend(url)
