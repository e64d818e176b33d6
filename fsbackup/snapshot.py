"""Operating system snapshots for a backup: the scan reads one frozen moment of each path.

One door: `taken(paths, mode, ...)`, a context manager that snapshots what it can (btrfs: a
read-only snapshot of each subvolume holding a path; LVM: a snapshot volume of the logical volume,
mounted read-only) and yields the mapping from each given path (absolute, as the backup records
it) to the path to read it from instead. On leaving, however it is left (an error, Ctrl-C, a
SIGTERM the command line turns into one), every snapshot it made is deleted.

The modes (docs/snapshots.md):
  none   no snapshot.
  auto   a path is snapshotted only when that is sure to work and be undone: it lies on btrfs,
         this process may create and delete snapshots (root, or CAP_SYS_ADMIN), the folder its
         snapshot goes in is writable, and nothing else is mounted and no other subvolume
         lies below the path (a snapshot holds neither). Otherwise the path is read as it is,
         said once as a note when `explain` is set; a snapshot that was tried and failed is a
         warning. LVM is never chosen by auto: it takes space from the volume group.
  btrfs  every path must be snapshotted on btrfs, else SnapshotFailed.
  lvm    every path must be snapshotted on LVM, else SnapshotFailed.

Snapshots are named `.fsbackup-snapshot-<pid>-<random>` (a folder beside the subvolume, or in it
where it is a mount point, holding the snapshot under the subvolume's own name, so that names
below it are the same as in the original) and `fsbackup-snapshot-<pid>-<random>` (LVM volumes,
mounted in a folder of that name in the local cache folder). Each is recorded in an owner-only
state file, `snapshots.json` in the local cache folder, before it is made and forgotten after
it is deleted: the next run removes what a killed run left (its process is gone), and only what
that file names and still looks like a snapshot fsbackup made; nothing else is ever deleted.
Commands run through subprocess with argument lists, never a shell.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import stat
import subprocess
from dataclasses import dataclass
from typing import Callable, Iterator

from .errors import FsbackupError, SnapshotFailed
from .private import open_owned_folder, open_private
from .progress import SILENT, Reporter

MODES = ("auto", "btrfs", "lvm", "none")
SNAPSHOT_PREFIX = ".fsbackup-snapshot-"
SNAPSHOT_PATTERN = os.fsencode(SNAPSHOT_PREFIX) + b"*"   # (what every backup leaves out)
LVM_PREFIX = "fsbackup-snapshot-"
STATE_FILE = "snapshots.json"
SUBVOLUME_ROOT_INO = 256         # a btrfs subvolume's root directory (BTRFS_FIRST_FREE_OBJECTID)
LVM_SNAPSHOT_SIZE = "10%ORIGIN"  # taken from the volume group's free space while the backup runs
CAP_SYS_ADMIN = 21
DEVICE_MAPPER = "/dev/mapper/control"   # LVM snapshots need device-mapper
KIND_NAMES = {"btrfs": "btrfs", "lvm": "LVM"}


class ToolFailed(Exception):
    """A snapshot tool failed; the message is one line naming the command and why."""


Runner = Callable[[list[str]], str]


def run_tool(argv: list[str]) -> str:
    """Run `argv` (no shell), its stdin empty; its standard output. Raises ToolFailed.

    The tool runs apart from the terminal's process group, so its Ctrl-C does not stop it midway,
    and an interrupted backup waits for it to finish: a snapshot tool stopped in its system call
    would still make the snapshot, after the cleanup had looked for it."""
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, errors="surrogateescape", start_new_session=True)
    except OSError as e:
        raise ToolFailed(f"cannot run {argv[0]}: {e.strerror}") from None
    try:
        out, err = proc.communicate()
    except BaseException:
        while True:
            try:
                proc.communicate()
                break
            except KeyboardInterrupt:       # a second Ctrl-C: the tool is still let finish
                continue
        raise
    if proc.returncode != 0:
        why = (err.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise ToolFailed(f"'{' '.join(argv[:3])}' failed: {why}")
    return out


def default_state_folder() -> str:
    """The local cache folder (as for the local index): $XDG_CACHE_HOME/fsbackup, ~/.cache/fsbackup."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "fsbackup")


# ---- what the system says --------------------------------------------------------------------

@dataclass
class Mount:
    point: bytes
    fstype: str
    source: str


def _unescape(field: str) -> bytes:
    """A mountinfo field: spaces, tabs, newlines and backslashes are written as octal escapes."""
    raw = os.fsencode(field)
    out, i = bytearray(), 0
    while i < len(raw):
        if raw[i] == 0x5C and i + 3 < len(raw) and raw[i + 1:i + 4].isdigit():
            out.append(int(raw[i + 1:i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


def mounts(mountinfo: str = "/proc/self/mountinfo") -> list[Mount]:
    """The mounts this process sees, in mount order."""
    table = []
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.rstrip("\n").partition(" - ")
            fields, tail = left.split(" "), right.split(" ")
            if len(fields) >= 5 and len(tail) >= 2:
                table.append(Mount(_unescape(fields[4]), tail[0], tail[1]))
    return table


def _below(path: bytes, folder: bytes) -> bool:
    """Whether `path` is `folder` or lies below it (both absolute and normalised)."""
    return path == folder or path.startswith(folder.rstrip(b"/") + b"/")


def mount_of(path: bytes, table: list[Mount]) -> Mount | None:
    """The mount holding `path` (the last one mounted on the deepest mount point above it)."""
    best = None
    for m in table:
        if _below(path, m.point) and (best is None or len(m.point) >= len(best.point)):
            best = m
    return best


def may_snapshot() -> bool:
    """Whether this process may create and delete btrfs snapshots and LVM volumes: root, or
    CAP_SYS_ADMIN in its effective set."""
    if os.geteuid() == 0:
        return True
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_SYS_ADMIN & 1)
    except (OSError, ValueError):
        pass
    return False


def _process_start(pid: int) -> str | None:
    """The start time of process `pid` (field 22 of /proc/PID/stat), None when it is gone: a pid
    with another start time is another process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            line = f.read()
    except OSError:
        return None
    return line[line.rfind(b")") + 2:].split()[19].decode()


def real_path(path: bytes) -> bytes:
    """`path` with its folders' symlinks resolved, itself not followed (a symlink is backed up as one)."""
    head, name = os.path.split(os.path.abspath(path))
    return os.path.join(os.path.realpath(head), name) if name else os.path.realpath(head)


# ---- the state file --------------------------------------------------------------------------

class StateFile:
    """`snapshots.json` in an owner-only folder: the snapshots made and not yet deleted, each a
    dict with "kind" ("btrfs" or "lvm"), "pid" and "start" (the process that made it), and
    "folder" (the named folder holding the snapshot, or its mount point), "subvolume" (btrfs), or
    "volume" (LVM: VG/LV) and "mountpoint". Every change is made under an exclusive flock of the
    folder, and replaces the file whole (written beside it, then renamed over it): a run killed
    while it writes leaves the entries as they were, never a torn file that would lose them."""

    def __init__(self, folder: str):
        self.folder = folder

    @contextlib.contextmanager
    def _entries(self) -> Iterator[list[dict]]:
        """The entries, to read or change in the `with` block; a change is stored when it ends
        without an error."""
        folder_fd = open_owned_folder(self.folder)
        try:
            fcntl.flock(folder_fd, fcntl.LOCK_EX)     # (the folder's: the file is replaced, not rewritten)
            with open(open_private(folder_fd, STATE_FILE, os.O_RDONLY | os.O_CREAT), encoding="utf-8") as f:
                try:
                    loaded = json.loads(f.read() or "[]")
                except ValueError:
                    loaded = []             # (written by hand, or by a fsbackup that rewrote it in place)
            entries = [e for e in loaded if isinstance(e, dict)] if isinstance(loaded, list) else []
            before = list(entries)
            yield entries
            if entries != before:
                new_name = STATE_FILE + ".new"
                with open(open_private(folder_fd, new_name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w",
                          encoding="utf-8") as f:
                    json.dump(entries, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.rename(new_name, STATE_FILE, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
                os.fsync(folder_fd)
        finally:
            os.close(folder_fd)             # (and with it the flock)

    def add(self, entry: dict) -> None:
        with self._entries() as entries:
            entries.append(entry)

    def remove(self, entry: dict) -> None:
        with self._entries() as entries:
            if entry in entries:
                entries.remove(entry)

    def orphans(self) -> list[dict]:
        """The entries whose process is gone (a killed run's)."""
        if not os.path.exists(os.path.join(self.folder, STATE_FILE)):
            return []                       # (no snapshot was ever made: no file is made to say so)
        with self._entries() as entries:
            return [e for e in entries
                    if not isinstance(e.get("pid"), int) or _process_start(e["pid"]) != e.get("start")]


# ---- making and deleting snapshots ----------------------------------------------------------

@dataclass
class _Plan:
    """One snapshot to make: `origin` is the btrfs subvolume root or the LVM mount point; each
    given path below it is read at the same place below the snapshot."""
    kind: str
    origin: bytes
    volume: str = ""          # LVM: VG/LV of the origin
    place: bytes = b""        # btrfs: the folder the snapshot's folder is made in
    fstype: str = ""


class Snapshots:
    """The snapshots of one backup (see the module's docstring); use `taken`."""

    def __init__(self, mode: str, state: StateFile, reporter: Reporter = SILENT, explain: bool = False,
                 run: Runner = run_tool, table: list[Mount] | None = None,
                 mounted: Callable[[str], bool] = os.path.ismount):
        if mode not in MODES:
            raise ValueError(f"unknown snapshot mode {mode!r}")
        self.mode, self.state, self.reporter, self.explain, self.run = mode, state, reporter, explain, run
        self.table, self.mounted = table, mounted     # (tests give their own)
        self.made: list[dict] = []           # state entries of the snapshots made, newest last
        self.fds: list[int] = []             # the btrfs snapshots' folders, open (see _make)
        self.start = _process_start(os.getpid())

    # -- deciding ---------------------------------------------------------------------------

    def _cannot(self, path: bytes, why: str, tried: bool = False) -> None:
        """`path` is read as it is: an error when the snapshot was asked for; under auto, a warning
        when it was `tried` and failed (a btrfs command), else a note (with --verbose) saying which
        condition of auto's rule does not hold (not btrfs, not root, a mount below...)."""
        text = f"{os.fsdecode(path)}: no snapshot ({why})"
        if self.mode != "auto":
            raise SnapshotFailed(f"cannot snapshot {os.fsdecode(path)}: {why}")
        if tried:
            self.reporter.warn(f"{text}; read as it is")
        elif self.explain:
            self.reporter.note(f"{text}; read as it is")

    def _plan(self, path: bytes, table: list[Mount]) -> _Plan | None:
        """What to snapshot for the real path `path`, or None (said through `_cannot`)."""
        mount = mount_of(path, table)
        if mount is None:
            self._cannot(path, "its mount is not found")
            return None
        inner = [m.point for m in table if m.point != path and _below(m.point, path) and m.point != mount.point]
        if self.mode == "lvm":
            return self._plan_lvm(path, mount, inner)
        if mount.fstype != "btrfs":
            self._cannot(path, f"it lies on {mount.fstype}, not btrfs" +
                         ("; LVM snapshots are taken only with --snapshot lvm" if self.mode == "auto" else ""))
            return None
        if not may_snapshot():
            self._cannot(path, "making and deleting btrfs snapshots needs root (or CAP_SYS_ADMIN)")
            return None
        if inner:
            self._cannot(path, f"{os.fsdecode(inner[0])} is mounted below it, and a snapshot would leave it out")
            return None
        try:
            root = self._subvolume_root(path)
        except OSError as e:
            self._cannot(path, f"cannot find its subvolume: {e.strerror}")
            return None
        if root is None:
            self._cannot(path, "its subvolume's root is not found")
            return None
        # Beside the subvolume, on the same file system: in it, where it is mounted as it is (a
        # file system's top level); the scan leaves out the empty folder the snapshot then shows.
        place = root if any(m.point == root for m in table) else os.path.dirname(root)
        if not os.access(place, os.W_OK):
            self._cannot(path, f"the folder for its snapshot, {os.fsdecode(place)}, is not writable")
            return None
        try:
            nested = self._nested_subvolume(root, path)
        except ToolFailed as e:
            self._cannot(path, str(e), tried=True)
            return None
        if nested is not None:
            self._cannot(path, f"the subvolume {os.fsdecode(nested)} lies below it, and a snapshot would "
                               "leave it out")
            return None
        return _Plan("btrfs", root, place=place)

    @staticmethod
    def _subvolume_root(path: bytes) -> bytes | None:
        """The root folder of the btrfs subvolume holding `path`: the highest folder above it on
        the same device (each subvolume has a device number of its own), with inode 256."""
        folder = path if os.path.isdir(path) and not os.path.islink(path) else os.path.dirname(path)
        dev = os.stat(folder).st_dev
        while folder != b"/":
            parent = os.path.dirname(folder)
            if os.stat(parent).st_dev != dev:
                break
            folder = parent
        return folder if os.stat(folder).st_ino == SUBVOLUME_ROOT_INO else None

    def _nested_subvolume(self, root: bytes, path: bytes) -> bytes | None:
        """A subvolume lying at or below `path` inside the subvolume `root`, or None. `btrfs
        subvolume list -o` names the subvolumes directly inside `root` by their path from the
        file system's top level; `btrfs subvolume show` names `root`'s own."""
        own = self.run(["btrfs", "subvolume", "show", os.fsdecode(root)]).splitlines()[0].strip()
        own = own.removeprefix("<FS_TREE>").strip("/")
        for line in self.run(["btrfs", "subvolume", "list", "-o", os.fsdecode(root)]).splitlines():
            _, found, rel = line.partition(" path ")
            if not found:
                continue
            rel = rel.removeprefix("<FS_TREE>").strip("/")
            if own:
                if not rel.startswith(own + "/"):
                    continue
                rel = rel[len(own) + 1:]
            nested = os.path.join(root, os.fsencode(rel))
            if _below(nested, path):
                return nested
        return None

    def _plan_lvm(self, path: bytes, mount: Mount, inner: list[bytes]) -> _Plan | None:
        if not may_snapshot():
            self._cannot(path, "making LVM snapshots needs root (or CAP_SYS_ADMIN)")
            return None
        if inner:
            self._cannot(path, f"{os.fsdecode(inner[0])} is mounted below it, and a snapshot would leave it out")
            return None
        if not os.path.exists(DEVICE_MAPPER):
            self._cannot(path, f"device-mapper is not available (no {DEVICE_MAPPER})")
            return None
        try:
            out = self.run(["lvs", "--noheadings", "--separator", "/", "-o", "vg_name,lv_name", mount.source])
        except ToolFailed as e:
            self._cannot(path, f"{mount.source} is not an LVM logical volume ({e})")
            return None
        volume = out.strip()
        if volume.count("/") != 1:
            self._cannot(path, f"{mount.source} is not an LVM logical volume")
            return None
        return _Plan("lvm", mount.point, volume=volume, fstype=mount.fstype)

    # -- making -----------------------------------------------------------------------------

    def _entry(self, kind: str, **fields: str) -> dict:
        return {"kind": kind, "pid": os.getpid(), "start": self.start, **fields}

    def _make(self, plan: _Plan) -> bytes:
        """Make the snapshot of `plan`; the folder its origin's content is read from. Recorded in
        the state file before it is made, forgotten there only once deleted."""
        tag = f"{os.getpid()}-{secrets.token_hex(4)}"
        if plan.kind == "btrfs":
            folder = os.path.join(plan.place, os.fsencode(SNAPSHOT_PREFIX + tag))
            inside = os.path.join(folder, os.path.basename(plan.origin) or b"root")
            entry = self._entry("btrfs", folder=os.fsdecode(folder), subvolume=os.fsdecode(inside))
            self._record(entry)
            os.mkdir(folder, 0o700)
            # The folder may lie in one other users can write: it is reached through a descriptor of
            # the folder made here from now on, never by its name, which could be swapped for a
            # symlink to a tree of theirs (to be read as this one) or to a subvolume (to be deleted).
            fd = own_folder(folder)
            if fd is None:
                raise ToolFailed(f"{os.fsdecode(folder)} was replaced while the snapshot was made")
            self.fds.append(fd)
            pinned = os.path.join(os.fsencode(f"/proc/{os.getpid()}/fd/{fd}"), os.path.basename(inside))
            self.run(["btrfs", "subvolume", "snapshot", "-r", os.fsdecode(plan.origin), os.fsdecode(pinned)])
            return pinned
        name = LVM_PREFIX + tag
        vg = plan.volume.split("/")[0]
        # Mounted under the origin's own name, as the btrfs snapshot is kept, so names below match.
        lv_folder = os.path.join(self.state.folder, name)
        mountpoint = os.path.join(lv_folder, os.fsdecode(os.path.basename(plan.origin)) or "root")
        entry = self._entry("lvm", folder=lv_folder, mountpoint=mountpoint, volume=f"{vg}/{name}")
        self._record(entry)
        self.run(["lvcreate", "--snapshot", "--name", name, "--extents", LVM_SNAPSHOT_SIZE, plan.volume])
        os.mkdir(lv_folder, 0o700)
        os.mkdir(mountpoint, 0o700)
        options = "ro,nouuid" if plan.fstype == "xfs" else "ro"
        self.run(["mount", "-o", options, f"/dev/{vg}/{name}", mountpoint])
        return os.fsencode(mountpoint)

    def _record(self, entry: dict) -> None:
        self.state.add(entry)
        self.made.append(entry)

    def take(self, paths: list[bytes]) -> dict[bytes, bytes]:
        """Snapshot what `paths` (absolute) need; {given path: path to read it from}."""
        if self.mode == "none":
            return {}
        try:
            table = self.table if self.table is not None else mounts()
        except OSError:
            table = []                           # (no /proc: every path's mount is "not found")
        plans: dict[bytes, _Plan] = {}           # origin -> plan: paths in one subvolume share it
        wanted: list[tuple[bytes, bytes, _Plan]] = []
        for path in paths:
            real = real_path(path)
            plan = self._plan(real, table)
            if plan is not None:
                plans.setdefault(plan.origin, plan)
                wanted.append((path, real, plans[plan.origin]))
        read_roots: dict[bytes, bytes] = {}
        for origin, plan in plans.items():
            try:
                read_roots[origin] = self._make(plan)
            except (ToolFailed, OSError) as e:
                why = str(e) if isinstance(e, ToolFailed) else f"{e.filename}: {e.strerror}"
                self._cannot(origin, why, tried=True)
        read_from = {}
        for path, real, plan in wanted:
            if plan.origin in read_roots:
                rel = os.path.relpath(real, plan.origin)
                read_from[path] = os.path.normpath(os.path.join(read_roots[plan.origin], rel))
                if self.explain:
                    self.reporter.note(f"reading {os.fsdecode(path)} from its {KIND_NAMES[plan.kind]} snapshot")
        return read_from

    # -- deleting ---------------------------------------------------------------------------

    def release(self) -> None:
        """Delete every snapshot made, newest first; what cannot be deleted stays recorded, for
        the next run, with a warning."""
        while self.made:
            entry = self.made.pop()
            try:
                delete(entry, self.run, self.mounted)
            except (ToolFailed, OSError) as e:
                self.reporter.warn(f"could not delete the snapshot {entry['folder']}: {e}; the next backup "
                                   "tries again")
                continue
            self.state.remove(entry)
        while self.fds:
            os.close(self.fds.pop())

    def remove_leftovers(self) -> None:
        """Delete the snapshots of runs that were killed (recorded, their process gone)."""
        try:
            orphans = self.state.orphans()
        except FsbackupError as e:
            self.reporter.warn(f"cannot read the snapshots of earlier runs: {e}")
            return
        for entry in orphans:
            try:
                delete(entry, self.run, self.mounted)
            except (ToolFailed, OSError) as e:
                self.reporter.warn(f"could not delete the snapshot {entry.get('folder')} left by an earlier run: "
                                   f"{e}")
                continue
            self.state.remove(entry)
            self.reporter.note(f"deleted the snapshot {entry.get('folder')} left by an earlier run")


def own_folder(folder: bytes) -> int | None:
    """`folder` opened (O_NOFOLLOW) if it is a folder of this user that nobody else may enter
    (as fsbackup makes its snapshots' folders), else None."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
        os.close(fd)
        return None
    return fd


def _ours(folder: str, prefix: str) -> bool:
    return os.path.basename(folder).startswith(prefix)


def delete(entry: dict, run: Runner = run_tool, mounted: Callable[[str], bool] = os.path.ismount) -> None:
    """Delete the snapshot of a state entry, if it is still there and still what fsbackup made: a
    btrfs read-only subvolume in a folder named `.fsbackup-snapshot-*`, an LVM snapshot volume
    named `fsbackup-snapshot-*` (unmounted first). What does not look so is left alone (and its
    entry dropped): a recorded name is never trusted to delete anything else."""
    folder = entry.get("folder")
    if not isinstance(folder, str) or not os.path.isabs(folder):
        return
    if entry.get("kind") == "btrfs":
        subvolume = entry.get("subvolume")
        if not _ours(folder, SNAPSHOT_PREFIX) or not isinstance(subvolume, str) \
                or os.path.dirname(subvolume) != folder:
            return
        fd = own_folder(os.fsencode(folder))
        if fd is None:
            return                        # gone, or not the folder made (another user's, a symlink)
        try:
            name = os.path.basename(subvolume)
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            pinned = f"/proc/{os.getpid()}/fd/{fd}/{name}"
            if st is not None and st.st_ino == SUBVOLUME_ROOT_INO and stat.S_ISDIR(st.st_mode):
                if run(["btrfs", "property", "get", "-ts", pinned, "ro"]).strip() == "ro=true":
                    run(["btrfs", "subvolume", "delete", pinned])
        finally:
            os.close(fd)
        _remove_folder(folder)
    elif entry.get("kind") == "lvm":
        volume, mountpoint = entry.get("volume"), entry.get("mountpoint")
        if not _ours(folder, LVM_PREFIX) or not isinstance(volume, str) or volume.count("/") != 1 \
                or not volume.split("/")[1].startswith(LVM_PREFIX) or not isinstance(mountpoint, str) \
                or os.path.dirname(mountpoint) != folder:
            return
        if mounted(mountpoint):
            run(["umount", mountpoint])
        try:
            origin = run(["lvs", "--noheadings", "-o", "origin", volume]).strip()
        except ToolFailed:
            origin = ""                   # gone already (or never made)
        if origin:                        # a snapshot volume (it has an origin), ours by its name
            run(["lvremove", "--yes", volume])
        _remove_folder(mountpoint)
        _remove_folder(folder)


def _remove_folder(folder: str) -> None:
    try:
        os.rmdir(folder)
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise


@contextlib.contextmanager
def taken(paths: list[bytes], mode: str, state_folder: str | None = None, reporter: Reporter = SILENT,
          explain: bool = False, run: Runner = run_tool) -> Iterator[dict[bytes, bytes]]:
    """The one door: snapshots of `paths` (absolute) as `mode` says, after deleting a killed
    run's; yields {given path: path to read it from} (paths not snapshotted are absent), and
    deletes every snapshot made when the block is left, however it is left."""
    snapshots = Snapshots(mode, StateFile(state_folder or default_state_folder()), reporter, explain, run)
    snapshots.remove_leftovers()            # (also with mode none: a killed run's are deleted all the same)
    try:
        yield snapshots.take(paths)
    finally:
        snapshots.release()
