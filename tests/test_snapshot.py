"""backup --snapshot, --pre-command and --post-command (docs/snapshots.md).

The btrfs tests run on a real btrfs file system made by the fixture on a loop device; they skip
only where the kernel lacks btrfs or loop devices (or btrfs-progs is missing), saying so. The LVM
tests check the command lines and the bookkeeping with a recording runner; the real LVM test needs
device-mapper."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import pseudo_random

from fsbackup import snapshot
from fsbackup.errors import SnapshotFailed

PAGE = 4096


def _skip_reason_for_btrfs() -> str | None:
    if os.geteuid() != 0:
        return "making a btrfs file system on a loop device needs root"
    if shutil.which("mkfs.btrfs") is None or shutil.which("btrfs") is None:
        return "btrfs-progs is not installed (mkfs.btrfs, btrfs)"
    with open("/proc/filesystems") as f:
        if not any(line.split()[-1] == "btrfs" for line in f if line.strip()):
            if shutil.which("modprobe"):
                subprocess.run(["modprobe", "btrfs"], capture_output=True)
            with open("/proc/filesystems") as again:
                if not any(line.split()[-1] == "btrfs" for line in again if line.strip()):
                    return "the kernel has no btrfs (not in /proc/filesystems)"
    if not os.path.exists("/dev/loop-control"):
        return "the kernel has no loop devices (no /dev/loop-control)"
    return None


def _processes_using(mnt: Path) -> list[int]:
    """The processes with a working directory, root or open file below `mnt` (a backup a failed
    test left running keeps the file system busy)."""
    inside = str(mnt).rstrip("/") + "/"
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            links = [os.readlink(f"/proc/{pid}/{x}") for x in ("cwd", "root")]
            links += [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue                              # gone meanwhile
        if int(pid) != os.getpid() and any((link + "/").startswith(inside) for link in links):
            found.append(int(pid))
    return found


def _tear_down(mnt: Path, device: str | None) -> None:
    """Unmount `mnt` and detach its loop `device`, whatever the test left behind: processes still
    using the file system are killed first, an unmount still refused after that is made lazy (the
    file system goes once its last user does), and the loop device is marked to detach itself then."""
    for attempt in range(20):
        if not os.path.ismount(mnt):
            break
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0:
            break
        for pid in _processes_using(mnt):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1 * (attempt + 1))
    else:
        subprocess.run(["umount", "--lazy", str(mnt)], check=False)
        print(f"{mnt} was still busy: unmounted lazily")
    if device:
        subprocess.run(["losetup", "-d", device], check=False, capture_output=True)
    if mnt.exists() and not os.path.ismount(mnt):
        mnt.rmdir()


class Btrfs:
    """A btrfs file system on a loop device, mounted at `mnt`."""

    def __init__(self, root: Path, mnt: Path):
        self.root = root
        self.mnt = mnt
        self.device = ""

    def subvolume(self, name: str) -> Path:
        path = self.mnt / name
        subprocess.run(["btrfs", "-q", "subvolume", "create", str(path)], check=True)
        return path

    def subvolumes(self) -> list[str]:
        out = subprocess.run(["btrfs", "subvolume", "list", str(self.mnt)], check=True, capture_output=True,
                             text=True).stdout
        return [line.partition(" path ")[2] for line in out.splitlines()]

    def leftovers(self, folder: Path) -> list[str]:
        return sorted(n for n in os.listdir(folder) if n.startswith(snapshot.SNAPSHOT_PREFIX))


@pytest.fixture
def btrfs(tmp_path: Path):
    why = _skip_reason_for_btrfs()
    if why:
        print(f"skipped: {why}")
        pytest.skip(why)
    # Mounted where every user can reach it (the test folder is root's own), for the tests that
    # run fsbackup as an unprivileged user.
    fs = Btrfs(tmp_path / "btrfs", Path(tempfile.mkdtemp(prefix="fsb-btrfs-")))
    fs.mnt.chmod(0o755)
    fs.root.mkdir()
    image = fs.root / "image"
    with open(image, "wb") as f:
        f.truncate(256 << 20)            # sparse; btrfs needs about 114 MiB at least
    made = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True, text=True)
    if made.returncode != 0:
        why = f"no loop device could be set up: {made.stderr.strip()}"
        print(f"skipped: {why}")
        pytest.skip(why)
    device = fs.device = made.stdout.strip()
    try:
        subprocess.run(["mkfs.btrfs", "-q", "-f", device], check=True, capture_output=True)
        subprocess.run(["mount", device, str(fs.mnt)], check=True)
        yield fs
    finally:
        _tear_down(fs.mnt, device)


def test_the_file_system_is_torn_down_while_a_process_a_failed_test_left_still_uses_it(btrfs):
    holder = subprocess.Popen(["sleep", "600"], cwd=btrfs.mnt)
    _tear_down(btrfs.mnt, btrfs.device)
    assert holder.wait(timeout=30) == -signal.SIGKILL
    assert not btrfs.mnt.exists()
    attached = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert str(btrfs.root / "image") not in attached, attached


def _state(env) -> list:
    path = env.cache / "fsbackup" / snapshot.STATE_FILE
    return json.loads(path.read_text() or "[]") if path.exists() else []


def _paths_of_latest(env) -> list[str]:
    return json.loads(env.ok("versions", "--json").out)[-1]["paths"]


# ---- btrfs --------------------------------------------------------------------------------

WRITER = r"""
import os, sys, struct
fd = os.open(sys.argv[1], os.O_WRONLY)
n = 0
while not os.path.exists(sys.argv[2]):
    n += 1
    half = struct.pack("<Q", n) * (2048 // 8)
    os.pwrite(fd, half + half, 0)     # the first page (a page is written whole)
    os.fdatasync(fd)                  # committed, as a database does
    if n == 1:
        open(sys.argv[2] + ".started", "w").close()
"""


def test_a_file_rewritten_during_the_backup_is_recorded_as_one_moment(env, btrfs, tmp_path):
    vol = btrfs.subvolume("vol")
    live = vol / "alice" / "live.db"
    live.parent.mkdir()
    rest = pseudo_random(8 << 20, 7)    # unchanged, but long to read: the page changes meanwhile
    live.write_bytes(bytes(PAGE) + rest)
    for i in range(200):                 # something to scan while the writer runs
        (vol / "alice" / f"f{i:03}").write_bytes(pseudo_random(3000, i))
    stop = tmp_path / "stop"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(live), str(stop)])
    try:
        while not os.path.exists(f"{stop}.started"):
            assert writer.poll() is None
            time.sleep(0.01)
        r = env.run("backup", "--snapshot", "btrfs", vol / "alice")
    finally:
        stop.touch()
        writer.wait()
    assert r.rc == 0, r.err              # not left out as "changed while it was read"
    target = tmp_path / "restored"
    env.ok("restore", "latest", live, "--target", target)
    data = (target / str(live).lstrip("/")).read_bytes()
    page = data[:PAGE]
    assert page[:2048] == page[2048:] and page != bytes(PAGE) and data[PAGE:] == rest


def test_the_version_records_the_original_paths_and_no_snapshot_is_left(env, btrfs, tmp_path):
    vol = btrfs.subvolume("vol")
    (vol / "alice").mkdir()
    (vol / "alice" / "notes.txt").write_text("hello")
    (vol / "bob").mkdir()
    (vol / "bob" / "b.txt").write_text("bob")
    r = env.ok("backup", "-v", vol / "alice", vol / "bob")          # auto: root, on btrfs
    assert f"reading {vol / 'alice'} from its btrfs snapshot" in r.err
    assert _paths_of_latest(env) == [str(vol / "alice"), str(vol / "bob")]
    listing = env.ok("ls", "latest", vol).out.split()
    assert str(vol / "alice" / "notes.txt") in listing and str(vol / "bob" / "b.txt") in listing
    assert not any(snapshot.SNAPSHOT_PREFIX in line for line in listing)
    env.ok("restore", "latest", "--target", tmp_path / "t")
    assert (tmp_path / "t" / str(vol).lstrip("/") / "alice" / "notes.txt").read_text() == "hello"
    assert btrfs.subvolumes() == ["vol"] and btrfs.leftovers(btrfs.mnt) == [] and _state(env) == []


def test_a_file_system_top_level_is_snapshotted_inside_and_its_folder_left_out(env, btrfs):
    (btrfs.mnt / "alice").mkdir()
    (btrfs.mnt / "alice" / "notes.txt").write_text("hello")
    r = env.ok("backup", "-v", "--snapshot", "btrfs", btrfs.mnt)
    assert f"reading {btrfs.mnt} from its btrfs snapshot" in r.err
    listing = env.ok("ls", "latest", btrfs.mnt).out.split()
    assert listing[-2:] == [str(btrfs.mnt / "alice"), str(btrfs.mnt / "alice" / "notes.txt")]
    assert not any(snapshot.SNAPSHOT_PREFIX in line for line in listing)
    assert btrfs.leftovers(btrfs.mnt) == [] and btrfs.subvolumes() == [] and _state(env) == []


def test_paths_in_one_subvolume_share_one_snapshot(env, btrfs):
    vol = btrfs.subvolume("vol")
    (vol / "a").mkdir()
    (vol / "b").mkdir()
    with snapshot.taken([os.fsencode(vol / "a"), os.fsencode(vol / "b")], "btrfs",
                        str(env.cache / "fsbackup")) as read_from:
        assert len(btrfs.leftovers(btrfs.mnt)) == 1
        a, b = (read_from[os.fsencode(vol / n)] for n in ("a", "b"))
        assert os.path.dirname(a) == os.path.dirname(b) and os.path.basename(a) == b"a"
        assert os.path.basename(os.path.dirname(a)) == b"vol"       # the subvolume's own name
        (vol / "a" / "late").write_text("made after the snapshot")
        assert not os.path.exists(os.path.join(a, b"late"))
    assert btrfs.leftovers(btrfs.mnt) == [] and btrfs.subvolumes() == ["vol"]


def test_a_failed_backup_deletes_its_snapshot(env, btrfs):
    vol = btrfs.subvolume("vol")
    (vol / "f").write_bytes(pseudo_random(100_000, 1))
    repo = btrfs.mnt / "repo"                  # (on btrfs, where chattr works)
    env.ok("init", "--repo", repo)
    (repo / "data").mkdir(exist_ok=True)
    subprocess.run(["chattr", "+i", str(repo / "data")], check=True)    # volumes cannot be stored
    try:
        r = env.run("backup", "--repo", repo, "--snapshot", "btrfs", vol, "--post-command",
                    f"echo $FSBACKUP_OUTCOME > {btrfs.root / 'outcome'}")
    finally:
        subprocess.run(["chattr", "-i", str(repo / "data")], check=True)
    assert r.rc == 16 and r.err.startswith("fsbackup: error: ") and r.err.count("\n") == 1, r.err
    assert (btrfs.root / "outcome").read_text() == "failed\n"
    assert btrfs.leftovers(btrfs.mnt) == [] and btrfs.subvolumes() == ["vol"] and _state(env) == []


def _backup_process(env, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fsbackup", "backup", *map(str, args)], env=env.environ(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _slow_source(vol: Path) -> Path:
    """A source whose scan takes a while: incompressible data to read, cut, encrypt and store."""
    data = vol / "data"
    data.mkdir()
    for i in range(6):
        (data / f"big{i}").write_bytes(os.urandom(16 << 20))
    return data


def _wait_for_snapshot(btrfs, p: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while not btrfs.leftovers(btrfs.mnt):
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_killed_backup_leaves_its_snapshot_to_the_next_run(env, btrfs):
    vol = btrfs.subvolume("vol")
    data = _slow_source(vol)
    p = _backup_process(env, "--snapshot", "btrfs", data)
    _wait_for_snapshot(btrfs, p)
    time.sleep(0.2)                           # well into the scan
    p.kill()
    p.wait()
    assert len(btrfs.leftovers(btrfs.mnt)) == 1 and len(_state(env)) == 1
    other = btrfs.subvolume("other")          # the next run backs up something else
    (other / "x").write_text("x")
    r = env.ok("backup", "--snapshot", "none", other)
    assert "deleted the snapshot" in r.err and "left by an earlier run" in r.err
    assert btrfs.leftovers(btrfs.mnt) == [] and sorted(btrfs.subvolumes()) == ["other", "vol"]
    assert _state(env) == []


def test_sigterm_stops_the_backup_and_deletes_its_snapshot(env, btrfs):
    vol = btrfs.subvolume("vol")
    data = _slow_source(vol)
    outcome = btrfs.root / "outcome"
    p = _backup_process(env, "--snapshot", "btrfs", data, "--post-command",
                        f"echo $FSBACKUP_OUTCOME $FSBACKUP_EXIT_CODE > {outcome}")
    _wait_for_snapshot(btrfs, p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "interrupted" in err, err
    assert outcome.read_text() == "interrupted 130\n"
    assert btrfs.leftovers(btrfs.mnt) == [], err
    assert btrfs.leftovers(btrfs.mnt) == [] and btrfs.subvolumes() == ["vol"] and _state(env) == []


def test_a_recorded_name_that_is_not_a_snapshot_of_ours_is_left_alone(env, btrfs):
    vol = btrfs.subvolume("vol")
    (vol / "keep").write_text("keep")
    victim = btrfs.mnt / "victim"              # a read-only subvolume in a private folder...
    victim.mkdir(mode=0o700)
    subprocess.run(["btrfs", "-q", "subvolume", "snapshot", "-r", str(vol), str(victim / "vol")], check=True)
    planted = btrfs.mnt / ".fsbackup-snapshot-2-x"
    planted.symlink_to(victim)                 # ...reached through a symlink named like ours
    state = snapshot.StateFile(str(env.cache / "fsbackup"))
    for folder, subvolume in ((btrfs.mnt, vol), (btrfs.mnt / ".fsbackup-snapshot-1-x", vol),
                              (planted, planted / "vol")):
        # (no process has that pid: the entries look like a killed run's)
        state.add({"kind": "btrfs", "pid": 2 ** 22 + 1, "start": "1", "folder": str(folder),
                   "subvolume": str(subvolume)})
    with snapshot.taken([os.fsencode(vol)], "auto", str(env.cache / "fsbackup")):
        pass
    assert (vol / "keep").read_text() == "keep" and sorted(btrfs.subvolumes()) == ["victim/vol", "vol"]
    assert _state(env) == []


def test_a_nested_subvolume_is_not_left_out(env, btrfs):
    vol = btrfs.subvolume("vol")
    inner = btrfs.subvolume("vol/inner")
    (inner / "x").write_text("x")
    with pytest.raises(SnapshotFailed, match="subvolume .*inner lies below it"):
        with snapshot.taken([os.fsencode(vol)], "btrfs", str(env.cache / "fsbackup")):
            pass
    r = env.ok("backup", "-v", vol)             # auto: read as it is, -v says why
    assert f"note: {vol}: no snapshot (the subvolume {inner} lies below it" in r.err
    assert str(inner / "x") in env.ok("ls", "latest", vol).out.split()


def test_auto_reads_as_it_is_where_it_may_not_snapshot(env, btrfs, unprivileged_user):
    vol = btrfs.subvolume("vol")
    (vol / "f").write_text("f")
    unprivileged_user.own(vol, vol / "f")
    home = unprivileged_user.folder()
    env.vars.update(FSBACKUP_REPOSITORY=str(home / "repo"), XDG_CACHE_HOME=str(home / "cache"))
    try:
        assert unprivileged_user.run(env, "init").rc == 0
        r = unprivileged_user.run(env, "backup", "-v", vol)
        assert r.rc == 0 and f"note: {vol}: no snapshot (making and deleting btrfs snapshots needs root" in r.err
        r = unprivileged_user.run(env, "backup", "--snapshot", "btrfs", vol)
        assert r.rc == 1 and r.err == (f"fsbackup: error: cannot snapshot {vol}: making and deleting btrfs "
                                       "snapshots needs root (or CAP_SYS_ADMIN)\n")
    finally:
        shutil.rmtree(home)
    assert btrfs.leftovers(btrfs.mnt) == [] and btrfs.subvolumes() == ["vol"]


def test_a_snapshot_that_fails_is_a_warning_under_auto_and_an_error_when_asked_for(env, btrfs):
    vol = btrfs.subvolume("vol")
    warnings: list[str] = []

    class Reporter:
        def warn(self, text):
            warnings.append(text)

        def note(self, text):
            pass

    def failing(argv):
        if argv[:3] == ["btrfs", "subvolume", "snapshot"]:
            raise snapshot.ToolFailed("'btrfs subvolume snapshot' failed: ERROR: no space left on device")
        return snapshot.run_tool(argv)
    state = str(env.cache / "fsbackup")
    with snapshot.taken([os.fsencode(vol)], "auto", state, Reporter(), run=failing) as read_from:   # type: ignore[arg-type]
        assert read_from == {}
    assert warnings == [f"{vol}: no snapshot ('btrfs subvolume snapshot' failed: ERROR: no space left on device); "
                        "read as it is"]
    with pytest.raises(SnapshotFailed, match="no space left on device"):
        with snapshot.taken([os.fsencode(vol)], "btrfs", state, run=failing):
            pass
    assert btrfs.leftovers(btrfs.mnt) == [] and _state(env) == []


# ---- without btrfs ------------------------------------------------------------------------

def test_snapshot_btrfs_fails_on_another_file_system_before_storing(env, tmp_path):
    if snapshot.mount_of(os.fsencode(tmp_path), snapshot.mounts()).fstype == "btrfs":
        pytest.skip("the test folder lies on btrfs")
    (tmp_path / "src").mkdir()
    r = env.run("backup", "--snapshot", "btrfs", tmp_path / "src")
    assert r.rc == 1 and r.err.startswith(f"fsbackup: error: cannot snapshot {tmp_path / 'src'}: it lies on ")
    assert r.err.count("\n") == 1 and json.loads(env.ok("versions", "--json").out) == []
    r = env.ok("backup", "-v", tmp_path / "src")              # auto reads it as it is, says why with -v
    assert f"note: {tmp_path / 'src'}: no snapshot (it lies on" in r.err


def test_pre_command_runs_first_and_its_failure_stores_nothing(env, tmp_path):
    (tmp_path / "src").mkdir()
    dump = tmp_path / "src" / "dump.sql"
    env.ok("backup", tmp_path / "src", "--pre-command", f"echo 'the dump' > '{dump}'")
    assert "dump.sql" in env.ok("ls", "latest", tmp_path / "src").out
    log = tmp_path / "post"
    r = env.run("backup", tmp_path / "src", "--pre-command", "exit 7", "--post-command",
                f"echo $FSBACKUP_OUTCOME $FSBACKUP_EXIT_CODE \"$FSBACKUP_VERSION\" > '{log}'")
    assert r.rc == 1 and r.err == "fsbackup: error: --pre-command 'exit 7' failed with exit status 7; " \
                                  "nothing was backed up\n"
    assert len(json.loads(env.ok("versions", "--json").out)) == 1
    assert log.read_text() == "failed 1 \n"
    r = env.run("backup", tmp_path / "src", "--pre-command", "kill -9 $$")
    assert r.rc == 1 and r.err == "fsbackup: error: --pre-command 'kill -9 $$' failed with signal 9; " \
                                  "nothing was backed up\n"


def test_a_command_line_error_runs_neither_command(env, tmp_path):
    """A pre-command may stop a service: a mistyped command line must not get that far."""
    (tmp_path / "src").mkdir()
    ran = tmp_path / "ran"
    commands = ["--pre-command", f"echo pre >> '{ran}'", "--post-command", f"echo post >> '{ran}'"]
    for args in ([], [tmp_path / "src", "--prune"], [tmp_path / "src", "--stdin"], ["--null"]):
        r = env.run("backup", *args, *commands)
        assert r.rc == 2 and len(r.err.splitlines()) == 1, r.err
        assert not ran.exists(), (args, ran.read_text())
    # A list a pre-command writes is read after it.
    listed = tmp_path / "list"
    env.ok("backup", "--files-from", listed, "--pre-command", f"echo '{tmp_path / 'src'}' > '{listed}'")


def test_post_command_gets_the_outcome_and_the_version(env, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("f")
    log = tmp_path / "post"
    cmd = f"echo $FSBACKUP_OUTCOME $FSBACKUP_EXIT_CODE $FSBACKUP_VERSION \"$FSBACKUP_PASSWORD\" > '{log}'"
    env.ok("backup", tmp_path / "src", "--post-command", cmd)
    version = json.loads(env.ok("versions", "--json").out)[-1]["id"]
    assert log.read_text() == f"success 0 {version} \n"            # (the passphrase is not passed on)
    r = env.run("backup", tmp_path / "src", "--post-command", "exit 4")
    assert r.rc == 1 and "--post-command 'exit 4' failed with exit status 4; the backup itself succeeded" in r.err


# ---- LVM ----------------------------------------------------------------------------------

class Recorder:
    """A runner that records command lines and answers the LVM queries."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> str:
        self.calls.append(argv)
        if argv[0] == "lvs" and "vg_name,lv_name" in argv:
            return "  vg0/home\n"
        if argv[0] == "lvs" and "origin" in argv:
            return "  home\n"
        return ""


def test_lvm_command_lines_and_cleanup(env, tmp_path, monkeypatch):
    monkeypatch.setattr(snapshot, "DEVICE_MAPPER", str(tmp_path / "control"))
    (tmp_path / "control").touch()
    monkeypatch.setattr(snapshot, "may_snapshot", lambda: True)
    home = tmp_path / "home"
    (home / "alice").mkdir(parents=True)
    table = [snapshot.Mount(b"/", "ext4", "/dev/sda1"), snapshot.Mount(os.fsencode(home), "ext4",
                                                                        "/dev/mapper/vg0-home")]
    state = snapshot.StateFile(str(env.cache / "fsbackup"))
    run = Recorder()
    snaps = snapshot.Snapshots("lvm", state, run=run, table=table, mounted=lambda path: True)
    read_from = snaps.take([os.fsencode(home / "alice")])
    name = run.calls[1][run.calls[1].index("--name") + 1]
    assert name.startswith(f"fsbackup-snapshot-{os.getpid()}-")
    folder = env.cache / "fsbackup" / name
    assert run.calls == [
        ["lvs", "--noheadings", "--separator", "/", "-o", "vg_name,lv_name", "/dev/mapper/vg0-home"],
        ["lvcreate", "--snapshot", "--name", name, "--extents", "10%ORIGIN", "vg0/home"],
        ["mount", "-o", "ro", f"/dev/vg0/{name}", str(folder / "home")]]
    assert read_from == {os.fsencode(home / "alice"): os.fsencode(folder / "home" / "alice")}
    assert [e["volume"] for e in _state(env)] == [f"vg0/{name}"]
    run.calls.clear()
    snaps.release()
    assert run.calls == [["umount", str(folder / "home")], ["lvs", "--noheadings", "-o", "origin", f"vg0/{name}"],
                         ["lvremove", "--yes", f"vg0/{name}"]]
    assert not folder.exists() and _state(env) == []


def test_lvm_leftovers_of_a_killed_run_are_removed_and_nothing_else(env, tmp_path):
    state = snapshot.StateFile(str(env.cache / "fsbackup"))
    gone = str(env.cache / "fsbackup" / "fsbackup-snapshot-1-ab")
    ours = {"kind": "lvm", "pid": 2 ** 22 + 1, "start": "1", "folder": gone, "mountpoint": gone + "/home",
            "volume": "vg0/fsbackup-snapshot-1-ab"}
    theirs = {"kind": "lvm", "pid": 2 ** 22 + 1, "start": "1", "folder": gone, "mountpoint": gone + "/home",
              "volume": "vg0/home"}
    alive = dict(ours, pid=os.getpid(), start=snapshot._process_start(os.getpid()))
    for entry in (ours, theirs, alive):
        state.add(entry)
    run = Recorder()
    snapshot.Snapshots("lvm", state, run=run, table=[], mounted=lambda path: False).remove_leftovers()
    assert run.calls == [["lvs", "--noheadings", "-o", "origin", "vg0/fsbackup-snapshot-1-ab"],
                         ["lvremove", "--yes", "vg0/fsbackup-snapshot-1-ab"]]
    assert _state(env) == [alive]          # a running backup's snapshot is its own to delete


def test_lvm_snapshot_of_a_real_logical_volume(env, tmp_path):
    why = None
    if not os.path.exists("/dev/mapper/control"):
        why = "device-mapper is not available (no /dev/mapper/control)"
    elif os.geteuid() != 0:
        why = "making a volume group on a loop device needs root"
    elif shutil.which("lvcreate") is None or shutil.which("mkfs.ext4") is None:
        why = "lvm2 or e2fsprogs is not installed (lvcreate, mkfs.ext4)"
    if why:
        print(f"skipped: {why}")
        pytest.skip(why)
    image = tmp_path / "pv"
    with open(image, "wb") as f:
        f.truncate(256 << 20)
    device = subprocess.run(["losetup", "--find", "--show", str(image)], check=True, capture_output=True,
                            text=True).stdout.strip()
    vg = f"fsbtest{os.getpid()}"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        subprocess.run(["vgcreate", "-q", vg, device], check=True, capture_output=True)
        subprocess.run(["lvcreate", "-q", "-n", "home", "-L", "128M", vg], check=True, capture_output=True)
        subprocess.run(["mkfs.ext4", "-q", f"/dev/{vg}/home"], check=True, capture_output=True)
        subprocess.run(["mount", f"/dev/{vg}/home", str(mnt)], check=True)
        (mnt / "alice").mkdir()
        (mnt / "alice" / "notes.txt").write_text("hello")
        r = env.ok("backup", "-v", "--snapshot", "lvm", mnt / "alice")
        assert f"reading {mnt / 'alice'} from its LVM snapshot" in r.err
        assert _paths_of_latest(env) == [str(mnt / "alice")]
        assert str(mnt / "alice" / "notes.txt") in env.ok("ls", "latest", mnt).out.split()
        lvs = subprocess.run(["lvs", "--noheadings", "-o", "lv_name", vg], check=True, capture_output=True,
                             text=True).stdout.split()
        assert lvs == ["home"] and _state(env) == []
    finally:
        _tear_down(mnt, None)
        subprocess.run(["vgremove", "-q", "-f", vg], check=False, capture_output=True)
        subprocess.run(["losetup", "-d", device], check=False)


def test_the_state_file_keeps_its_entries_when_a_write_stops_midway(env, monkeypatch):
    """A run killed while it records a new snapshot must not lose the record of the others: their
    snapshots would be left behind for ever."""
    state = snapshot.StateFile(str(env.cache / "fsbackup"))
    kept = {"kind": "lvm", "pid": 2 ** 22 + 1, "start": "1", "folder": "/x/fsbackup-snapshot-1-ab",
            "mountpoint": "/x/fsbackup-snapshot-1-ab/home", "volume": "vg0/fsbackup-snapshot-1-ab"}
    state.add(kept)

    def killed_midway(entries, f, **kwargs):
        f.write('[{"kind": "lv')
        f.flush()
        raise KeyboardInterrupt
    monkeypatch.setattr(snapshot.json, "dump", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        state.add(dict(kept, volume="vg0/fsbackup-snapshot-2-cd"))
    monkeypatch.undo()
    assert _state(env) == [kept] and state.orphans() == [kept]
