"""The SFTP backend against a real OpenSSH server (tests/sftp_server.py): the contract suite, then
what only SFTP meets: host keys, user keys, a server that dies, a client killed mid-upload,
permissions, a full disk on the server, servers without OpenSSH's extensions, forks, URLs."""
from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest
from backend_contract import BackendContract
from sftp_server import environ, settings, sftp_server, sshserver  # noqa: F401 - the fixture

from fsbackup.backends import Latency, open_backend
from fsbackup.backends.retry import RetryingBackend
from fsbackup.backends.sftp import ChangedHostKey, SftpBackend, UnknownHostKey, parse_url
from fsbackup.errors import (
    EXIT_PERMISSION,
    AuthenticationFailed,
    BackendError,
    NoSpace,
    NoSuchObject,
    PermissionDenied,
    UsageError,
)


class TestSftpBackend(BackendContract):
    @pytest.fixture(autouse=True)
    def _server(self, sftp_server):
        self.server = sftp_server

    def make_backend(self, tmp_path, monkeypatch):
        return SftpBackend(self.server.url(self.server.storage() / "repo"), settings(self.server))

    def clean_up(self, backend):
        backend.close()

    def test_is_remote_and_replaces_atomically(self, backend):
        assert backend.traits.latency is Latency.REMOTE and backend.traits.atomic_replace
        assert backend.connections == 4


class TestSftpBackendOnOneConnection(TestSftpBackend):
    """Sessions as channels of one SSH connection: the layout docs/sftp.md compares with the default."""

    def make_backend(self, tmp_path, monkeypatch):
        return SftpBackend(self.server.url(self.server.storage() / "repo"), settings(self.server),
                           share_connection=True)


def one_line(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text and text
    return text


def new_backend(server, **changes) -> SftpBackend:
    return SftpBackend(server.url(server.storage() / "repo"), settings(server, **changes))


def test_a_whole_volume_reads_at_the_speed_of_the_link(sftp_server):
    """A 32 MiB object (a volume) read whole and in a long range: paramiko's readv of one long
    range joins its pieces over and over (about 30 s here); asked for in pieces it takes well
    under a second over loopback."""
    store = new_backend(sftp_server)
    data = os.urandom(32 << 20)
    store.put("data/big", data)
    started = time.monotonic()
    assert store.get("data/big") == data
    assert store.get("data/big", 5, len(data)) == data[5:]
    assert time.monotonic() - started < 8
    store.close()


def read_requests(monkeypatch, kind_counted=None) -> list[int]:
    """The length asked for by each SFTP read request (`kind_counted`: of that kind instead; for
    a write, the bytes it sends) from now on."""
    from paramiko.sftp import CMD_READ
    asked: list[int] = []
    real = paramiko.SFTPClient._async_request

    def counting(self, fileobj, kind, *args):
        if kind == (kind_counted or CMD_READ):
            asked.append(args[-1] if isinstance(args[-1], int) else len(args[-1]))
        return real(self, fileobj, kind, *args)
    monkeypatch.setattr(paramiko.SFTPClient, "_async_request", counting)
    return asked


def test_reads_and_writes_are_as_large_as_the_server_handles(sftp_server, monkeypatch):
    """OpenSSH states that it handles reads and writes of up to 255 KiB (limits@openssh.com): 4 MiB
    take 17 requests each way instead of paramiko's 128 of 32 KiB, each one Python work."""
    from paramiko.sftp import CMD_WRITE
    store = new_backend(sftp_server)
    data = os.urandom(4 << 20)
    sent = read_requests(monkeypatch, CMD_WRITE)
    store.put("data/x", data)
    assert 32768 < max(sent) <= 1 << 20 and len(sent) <= 20, sent
    monkeypatch.undo()
    asked = read_requests(monkeypatch)
    assert store.get("data/x", 0, len(data)) == data
    assert 32768 < max(asked) <= 1 << 20 and len(asked) <= 20, asked
    store.close()


def test_a_server_that_states_no_limits_is_asked_for_32_kib_per_read_and_write(monkeypatch):
    if sshserver.missing():
        pytest.skip(sshserver.missing())
    with sshserver.SshServer(sftp_flags="-P limits") as server:
        store = new_backend(server)
        from paramiko.sftp import CMD_WRITE
        data = os.urandom(1 << 20)
        sent = read_requests(monkeypatch, CMD_WRITE)
        store.put("k", data)
        monkeypatch.undo()
        asked = read_requests(monkeypatch)
        assert store.get("k", 10) == data[10:]
        assert max(sent) == max(asked) == 32768
        store.close()


def test_listing_with_times_gives_each_files_modification_time_on_the_server(sftp_server):
    store = new_backend(sftp_server)
    before = time.time()
    store.put("versions/new", b"n")
    store.put("data/ab/old", b"old")
    root = Path(parse_url(store.url).root)
    os.utime(root / "data" / "ab" / "old", (1_500_000_000, 1_500_000_000))   # written long ago
    listed = {name: (size, modified) for name, size, modified in store.list_modified("")}
    assert listed["data/ab/old"] == (3, 1_500_000_000)
    assert listed["versions/new"][0] == 1 and before - 2 <= listed["versions/new"][1] <= time.time() + 2
    assert [n for n, _, _ in store.list_modified("data/")] == ["data/ab/old"]
    store.close()


# ---- trust: host keys and user keys -----------------------------------------------------------------

def test_an_unknown_host_key_is_refused_naming_its_fingerprint(sftp_server, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(UnknownHostKey) as e:
        new_backend(sftp_server, known_hosts=str(empty))
    host_key = paramiko.PKey.from_path(str(sftp_server.host_key))
    text = one_line(e.value)
    assert f"[127.0.0.1]:{sftp_server.port}" in text and "is unknown" in text and "ssh-keyscan" in text
    assert subprocess.run(["ssh-keygen", "-l", "-f", str(sftp_server.host_key)], capture_output=True,
                          text=True).stdout.split()[1] in text                       # as OpenSSH prints it
    assert host_key.get_name() in text
    assert e.value.exit_code == EXIT_PERMISSION and empty.read_text() == ""          # never added


def test_a_changed_host_key_is_refused_loudly(sftp_server, tmp_path):
    other = tmp_path / "other"
    sshserver.keygen(other, "another server")
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sftp_server.port} " + " ".join(other.with_suffix(".pub").read_text().split()[:2])
                     + "\n")
    before = known.read_text()
    with pytest.raises(ChangedHostKey) as e:
        new_backend(sftp_server, known_hosts=str(known))
    text = one_line(e.value)
    assert text.startswith("WARNING: THE SSH HOST KEY OF") and "HAS CHANGED" in text and "ssh-keygen -R" in text
    assert e.value.exit_code == EXIT_PERMISSION and known.read_text() == before


def test_a_missing_known_hosts_file_named_on_the_command_line_is_a_usage_error(sftp_server, tmp_path):
    with pytest.raises(UsageError) as e:
        new_backend(sftp_server, known_hosts=str(tmp_path / "nothing"))
    assert "does not exist" in one_line(e.value)


def test_a_key_the_server_does_not_know_is_one_authentication_error(sftp_server, tmp_path):
    stranger = tmp_path / "id_ed25519"
    sshserver.keygen(stranger, "a stranger")
    with pytest.raises(AuthenticationFailed) as e:
        new_backend(sftp_server, identity=str(stranger))
    text = one_line(e.value)
    assert "refused user fsbackup-sftp" in text and str(stranger) in text and "--sftp-identity" in text
    assert not e.value.temporary and e.value.exit_code == EXIT_PERMISSION


def test_an_unreadable_identity_is_a_usage_error(sftp_server, tmp_path):
    with pytest.raises(UsageError) as e:
        new_backend(sftp_server, identity=str(tmp_path / "no-key"))
    assert "cannot read SSH key" in one_line(e.value)


def test_keys_come_from_the_home_folder_without_options(sftp_server, tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    for name in ("id_ed25519", "known_hosts"):
        (home / ".ssh" / name).write_bytes((sftp_server.folder / name).read_bytes())
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    for var in environ(sftp_server):
        monkeypatch.delenv(var, raising=False)
    store = open_backend(sftp_server.url(sftp_server.storage() / "repo"))
    store.put("config", b"c")
    assert list(store.list("")) == [("config", 1)]
    store.close()


# ---- failures: the server dies, the client dies ---------------------------------------------------

def test_a_server_killed_mid_run_gives_temporary_errors_then_a_clear_failure_then_reconnects():
    if sshserver.missing():
        pytest.skip(sshserver.missing())
    with sshserver.SshServer() as server:      # a server of its own: this test kills it
        inner = new_backend(server)
        store = RetryingBackend(inner, max_seconds=1.5, base_delay=0.1, max_delay=0.3)
        store.put("data/a", b"before")
        server.kill()
        with pytest.raises(BackendError) as e:
            inner.get("data/a")
        assert e.value.temporary and f"127.0.0.1:{server.port}" in one_line(e.value)
        with pytest.raises(BackendError) as e:
            store.get("data/a")                 # the retries meet a refused connection each time
        text = one_line(e.value)
        assert not e.value.temporary and "cannot connect to SFTP server" in text and "gave up after" in text
        server.start()                          # back, on the same port: the next call connects again
        assert store.get("data/a") == b"before"
        store.close()


KILLED_PUT = """
import sys
from fsbackup.backends.sftp import SftpBackend, Settings
store = SftpBackend(sys.argv[1], Settings(sys.argv[2], sys.argv[3]))
store.put("data/big", b"n" * (256 << 20))
"""


def test_a_client_killed_mid_upload_leaves_no_partial_object(sftp_server):
    storage = sftp_server.storage()
    url = sftp_server.url(storage / "repo")
    store = SftpBackend(url, settings(sftp_server))
    store.put("data/big", b"old")
    p = subprocess.Popen([sys.executable, "-c", KILLED_PUT, url, str(sftp_server.user_key),
                          str(sftp_server.known_hosts)])
    folder = storage / "repo" / "data"
    deadline = time.monotonic() + 30
    while not any(f.name.startswith(".tmp-") and f.stat().st_size > (1 << 20) for f in folder.iterdir()):
        assert p.poll() is None and time.monotonic() < deadline, "the upload did not start"
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    time.sleep(0.3)                             # the server notices the lost connection
    assert store.get("data/big") == b"old"
    assert list(store.list("")) == [("data/big", 3)] == [(n, s) for n, s, _ in store.list_modified("")]
    [leftover] = [f for f in folder.iterdir() if f.name.startswith(".tmp-")]
    assert store.remove_partial_uploads(3600) == (0, 0)          # too young: maybe a put in flight
    size = leftover.stat().st_size
    assert store.remove_partial_uploads(0) == (1, size)
    assert sorted(f.name for f in folder.iterdir()) == ["big"]
    store.close()


# ---- what the server refuses ----------------------------------------------------------------------

def test_permission_denied_on_the_server_is_reported(sftp_server):
    store = new_backend(sftp_server)
    store.put("data/ab/x", b"x")
    root = Path(parse_url(store.url).root)
    (root / "data" / "ab").chmod(0o500)         # the login user owns it but may not write into it
    (root / "locked").mkdir(mode=0o700)         # root's: the login user may not read it
    try:
        with pytest.raises(PermissionDenied) as e:
            store.put("data/ab/y", b"y")
        assert "permission denied" in one_line(e.value)
        with pytest.raises(PermissionDenied):
            list(store.list(""))                # a listing is whole or raises
        assert store.get("data/ab/x") == b"x"   # the session is still good
    finally:
        (root / "data" / "ab").chmod(0o755)
        store.close()


def test_missing_objects_and_folders(sftp_server):
    store = new_backend(sftp_server)
    with pytest.raises(NoSuchObject) as e:
        store.get("data/zz/nope", 3, 4)
    assert e.value.name == "data/zz/nope"
    assert list(store.list("data/")) == [] and store.remove_partial_uploads(0) == (0, 0)   # no folder yet
    store.close()


@pytest.mark.parametrize("size, write_request", [(4 << 20, None), (2 << 20, 32768)])
def test_a_full_disk_on_the_server_is_a_permanent_error_that_says_so(sftp_server, size, write_request):
    """Also when every write of the put is pipelined (64 of 32 KiB): paramiko reads no answer to
    them itself below 100 pending, and would drop a failure unread."""
    storage = sftp_server.storage()
    small = storage / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0777", "tmpfs", str(small)]).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        store = SftpBackend(sftp_server.url(small / "repo"), settings(sftp_server))
        store._write_request = write_request or store._write_request
        with pytest.raises(BackendError) as e:
            store.put("data/big", os.urandom(size))
        text = one_line(e.value)
        # SFTP version 3 has no "no space" status: the server says Failure, and the error cannot be NoSpace.
        assert not isinstance(e.value, NoSpace) and not e.value.temporary and "full disk" in text
        assert list(store.list("")) == []
        store.close()
    finally:
        subprocess.run(["umount", "-l", str(small)])


def test_a_server_without_openssh_extensions_replaces_by_remove_and_rename():
    if sshserver.missing():
        pytest.skip(sshserver.missing())
    with sshserver.SshServer(sftp_flags="-P posix-rename,fsync") as server:
        store = new_backend(server)
        assert not store.traits.atomic_replace and store.traits.immediate_listing
        store.put("k", b"first")
        store.put("k", b"second")
        assert store.get("k") == b"second" and list(store.list("")) == [("k", 6)]
        assert not store._fsync                 # asked once, refused, not asked again
        store.close()


# ---- processes and URLs ---------------------------------------------------------------------------

def test_a_forked_child_connects_anew(sftp_server):
    """The mount's --daemon forks after opening the repository; SSH connections stay behind."""
    store = new_backend(sftp_server)
    store.put("a", b"x" * 1000)
    pid = os.fork()
    if pid == 0:
        signal.alarm(20)
        try:
            store.put("b", b"y")
            ok = store.get("a", 2, 5) == b"x" * 5 and store.get("b") == b"y"
            gc.collect()                        # the parent's sessions, dropped here, must say nothing
            os._exit(0 if ok else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.get("b") == b"y" and store._open == 1      # the parent's connection still works
    store.close()


def test_urls_name_user_host_port_and_folder(monkeypatch):
    import getpass
    t = parse_url("sftp://backup@nas.example:2222/volume1/backups/")
    assert (t.user, t.host, t.port, t.root, t.known_hosts_name) == \
        ("backup", "nas.example", 2222, "/volume1/backups", "[nas.example]:2222")
    t = parse_url("sftp://nas/srv/repo")
    assert (t.user, t.port, t.root, t.known_hosts_name) == (getpass.getuser(), 22, "/srv/repo", "nas")
    for bad in ("sftp://nas", "sftp:///srv", "sftp://nas:port/x", "sftp://nas/x?y=1"):
        with pytest.raises(UsageError) as e:
            parse_url(bad)
        assert "sftp://USER@HOST[:PORT]/ABSOLUTE/PATH" in one_line(e.value)


def test_an_unreachable_server_is_a_temporary_error(sftp_server):
    port = sshserver.free_port()
    with pytest.raises(BackendError) as e:
        SftpBackend(f"sftp://u@127.0.0.1:{port}/x", settings(sftp_server))
    assert e.value.temporary and f"cannot connect to SFTP server 127.0.0.1:{port}" in one_line(e.value)
