"""Repository locks: which commands may run together on one repository.

A lock is a small encrypted object `locks/<id>` naming its holder: host, pid, command, when it was
taken and when last refreshed (docs/format.md). A command that writes objects it has not yet
recorded, or deletes objects others may rely on, takes an exclusive lock: `backup` does, and so
must prune, forget and repairs. A shared lock only keeps exclusive ones away. Reading commands
(restore, mount, ls, versions) take none: a backup only adds objects, and adds its version last,
so what they read stays whole while it runs.

Taking a lock: list the locks and fail at once (`errors.Locked`) when a live one conflicts; else
write ours, list again, and when a conflicting lock appeared meanwhile (two processes raced past
the first look), remove ours and fail: of two racers both may fail, never both succeed.

While held, a daemon thread rewrites the lock every REFRESH_INTERVAL with the time. A lock not
refreshed for STALE_AFTER, or whose holder ran on this host and whose process is gone, is stale:
it binds no one, and `fsbackup unlock` removes it.

A full repository disk has no room for a lock object: taking a lock then fails with
`errors.NoSpace` saying to free space with `forget` or `prune --no-lock`, which hold
`no_lock_written` instead (the first look only: the user vouches that no other process starts).
"""
from __future__ import annotations

import datetime
import logging
import os
import secrets
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from ..errors import CorruptObject, FsbackupError, Locked, NoSpace, NoSuchObject

REFRESH_INTERVAL = 5 * 60          # seconds between rewrites of a held lock
STALE_AFTER = 30 * 60              # a lock not rewritten for this long binds no one

# How long a partial upload (what a put that never returned left: Backend.remove_partial_uploads)
# must have lain unwritten before the holder of the exclusive lock removes it. That lock keeps
# other backups, prunes and repairs away, but not every put: a process taking a lock may be writing
# its lock object (it looked before ours was there), `key` takes no lock, and a process whose lock
# went stale may still be writing (a machine suspended midway). Any folder, `locks/` above all,
# may hold a put in flight. A put writes, syncs and renames within minutes at most (a big volume
# synced to a slow disk); a temporary left alone as long as a silent lock takes to go stale
# belongs to no put that can still finish. One age serves every folder: it is far beyond what a
# lock put needs, and a killed backup's volumes are removed by the next night's run.
PARTIAL_UPLOAD_AGE = STALE_AFTER

log = logging.getLogger("fsbackup.locks")

# Locks this process released but could not delete (the storage failed): they bind no one here,
# and the next acquire tries to delete them again. Other processes see them live until they go stale.
_undeleted: set[str] = set()


def _process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot; Linux), or None when unknown. With the
    pid it names one process: a pid reused after a crash or reboot has another start time."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _process_gone(pid: int, started: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:        # it exists, under another user
        pass
    now_started = _process_start(pid)
    return started is not None and now_started is not None and now_started != started


@dataclass
class LockInfo:
    """What a lock object says about its holder; `damage` is set when it could not be read."""
    name: str
    host: str = "?"
    pid: int = 0
    command: str = "?"
    exclusive: bool = True
    created_ns: int = 0
    time_ns: int = 0
    damage: str | None = None
    started: int | None = None       # the holder's process start time, when known (_process_start)

    @classmethod
    def from_doc(cls, name: str, doc: dict) -> "LockInfo":
        try:
            started = doc.get("started")
            return cls(name, str(doc["host"]), int(doc["pid"]), str(doc["command"]), bool(doc["exclusive"]),
                       int(doc["created_ns"]), int(doc["time_ns"]), started=int(started) if started else None)
        except (KeyError, ValueError, TypeError):
            return cls(name, damage="lock object lacks its fields")

    def to_doc(self) -> dict:
        return {"host": self.host, "pid": self.pid, "command": self.command, "exclusive": self.exclusive,
                "created_ns": self.created_ns, "time_ns": self.time_ns, "started": self.started}

    def stale(self) -> bool:
        """A damaged lock is not stale: nobody can tell it is not held (`unlock` removes it)."""
        if self.damage:
            return False
        if time.time_ns() - self.time_ns > STALE_AFTER * 1_000_000_000:
            return True
        return self.host == socket.gethostname() and _process_gone(self.pid, self.started)

    def conflicts_with(self, exclusive: bool) -> bool:
        return exclusive or self.exclusive or self.damage is not None

    def describe(self) -> str:
        if self.damage:
            return f"an unreadable lock object locks/{self.name} ({self.damage})"
        since = datetime.datetime.fromtimestamp(self.created_ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")
        kind = "" if self.exclusive else " (shared)"
        return f"{self.command}{kind} on host {self.host} (pid {self.pid}) since {since}"

    def as_json(self) -> dict:
        return dict(self.to_doc(), id=self.name, damage=self.damage, stale=self.stale())


def list_locks(repo) -> list[LockInfo]:
    """Every lock in the repository (stale ones included)."""
    locks = []
    for name in repo.lock_names():
        try:
            locks.append(LockInfo.from_doc(name, repo.load_lock(name)))
        except NoSuchObject:
            continue               # released while we looked
        except CorruptObject as e:
            locks.append(LockInfo(name, damage=str(e)))
    return locks


def remove_stale_locks(repo) -> list[LockInfo]:
    """Remove stale and unreadable locks; returns them."""
    removed = [lock for lock in list_locks(repo) if lock.damage or lock.stale()]
    for lock in removed:
        repo.delete_lock(lock.name)
    return removed


def remove_all_locks(repo) -> list[LockInfo]:
    """Remove every lock, live or not: only for when no other process uses the repository."""
    removed = list_locks(repo)
    for lock in removed:
        repo.delete_lock(lock.name)
    return removed


def fail_on_conflict(repo, exclusive: bool, own: str | None = None) -> None:
    """Raise Locked when a live lock (other than `own`, or one this process released) conflicts
    with a lock of that kind."""
    for other in list_locks(repo):
        if other.name == own or other.name in _undeleted:
            continue
        if other.conflicts_with(exclusive) and not other.stale():
            raise Locked(f"repository is locked by {other.describe()}; "
                         "if that process is gone, run `fsbackup unlock`")


def _no_room_for_lock(command: str, error: NoSpace) -> NoSpace:
    """The error of a lock a full repository disk refused: what to run to free space."""
    if command == "prune":
        run = "`fsbackup prune --no-lock`"
    elif command == "forget":
        run = "this forget again with --no-lock added (`fsbackup forget ... --no-lock`)"
    else:
        run = "`fsbackup forget` with your keep rules and `--prune --no-lock`, or `fsbackup prune --no-lock`"
    return NoSpace(f"the lock of {command} could not be written: {error}; to free space, run {run}, only while "
                   "no other fsbackup process uses the repository (docs/maintenance.md)")


@contextmanager
def no_lock_written(repo) -> Iterator[None]:
    """For `--no-lock` (forget and prune on a full repository disk): write no lock, but fail as an
    exclusive lock would when a live lock shows another command at work. Nothing keeps another
    command from starting meanwhile: the user vouches that none will."""
    fail_on_conflict(repo, exclusive=True)
    yield


class Lock:
    """One lock on `repo`, held between acquire() and release() (or as a context manager)."""

    def __init__(self, repo, exclusive: bool, command: str):
        self.repo = repo
        now = time.time_ns()
        self.info = LockInfo(secrets.token_hex(32), socket.gethostname(), os.getpid(), command, exclusive, now, now,
                             started=_process_start(os.getpid()))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # The time in the lock last stored: wall clock, as others judge staleness by it (and a
        # monotonic clock would not count a suspended laptop's sleep).
        self._written_ns = 0

    @property
    def name(self) -> str:
        return self.info.name

    def acquire(self) -> "Lock":
        for name in list(_undeleted):
            try:
                self.repo.delete_lock(name)
                _undeleted.discard(name)
            except FsbackupError:
                pass
        self._fail_on_conflict()
        try:
            self._write()
        except NoSpace as e:
            raise _no_room_for_lock(self.info.command, e) from None
        try:
            self._fail_on_conflict()     # another process may have written its lock since we looked
        except BaseException:
            self.repo.delete_lock(self.name)
            raise
        self._thread = threading.Thread(target=self._keep_fresh, name="fsbackup-lock", daemon=True)
        self._thread.start()
        return self

    def _fail_on_conflict(self) -> None:
        fail_on_conflict(self.repo, self.info.exclusive, own=self.name)

    def _write(self) -> None:
        self.info.time_ns = time.time_ns()
        self.repo.store_lock(self.name, self.info.to_doc())
        self._written_ns = self.info.time_ns

    def refresh(self) -> None:
        """Rewrite the lock with the time now, so others see its holder is alive."""
        self._write()

    def _keep_fresh(self) -> None:
        while not self._stop.wait(REFRESH_INTERVAL):
            try:
                self.refresh()
            except FsbackupError as e:   # tried again at the next interval; ensure_held() tells if too late
                log.warning("could not refresh the repository lock: %s", e)

    def ensure_held(self) -> None:
        """Raise Locked if the lock went unrefreshed so long that others may take it for stale:
        an exclusive command must not commit after another may have started."""
        if time.time_ns() - self._written_ns > (STALE_AFTER - REFRESH_INTERVAL) * 1_000_000_000:
            raise Locked("the repository lock could not be refreshed for too long (is the storage "
                         "reachable?); stopped without saving")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            self.repo.delete_lock(self.name)
        except FsbackupError as e:
            _undeleted.add(self.name)
            log.warning("could not remove the repository lock locks/%s (%s); it goes stale in %d minutes, "
                        "or remove it with `fsbackup unlock`", self.name, e, STALE_AFTER // 60)

    def __enter__(self) -> "Lock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextmanager
def repository_lock(repo, exclusive: bool, command: str) -> Iterator[Lock]:
    """Hold a lock on `repo` for the `with` block: exclusive (nothing else locked at the same
    time) or shared (only other shared locks). Raises errors.Locked at once on a conflict."""
    with Lock(repo, exclusive, command) as lock:
        yield lock


# The lock a command holds, by mode name (the command line chooses one where a command opens the
# repository: cli/repo.py `opened`).
LOCK_MODES = ("none", "shared", "append", "exclusive")


@contextmanager
def hold_lock(repo, mode: str, command: str, no_lock: bool = False) -> Iterator[Lock | None]:
    """Hold the lock of `mode` on `repo` for the `with` block, released however it ends; yields
    the Lock (None when none is written).

      none       readers (restore, mount, ls, versions): objects they use are deleted only under
                 an exclusive lock, and a backup adds its version last.
      shared     check: keeps exclusive lock holders (deleters) away, not other readers.
      append     backup: adds objects it records later. For now an exclusive lock, as backup
                 always held; a later change makes it one shared by appenders only.
      exclusive  forget, prune, repairs, backup's retention step: they delete objects.

    `no_lock` (--no-lock of forget and prune, for a full repository disk) writes no lock in place
    of an exclusive one, and only fails when a live lock shows another command at work."""
    if mode not in LOCK_MODES:
        raise ValueError(f"no lock mode {mode!r}")
    if mode == "none":
        yield None
    elif no_lock:
        if mode != "exclusive":
            raise ValueError("only an exclusive lock can be left unwritten (--no-lock)")
        with no_lock_written(repo):
            yield None
    else:
        with repository_lock(repo, exclusive=mode != "shared", command=command) as lock:
            yield lock
