"""Repository locks: which commands may run together on one repository.

A lock is a small encrypted object `locks/<id>` naming its holder: host, pid, command, its mode,
when it was taken and when last refreshed (docs/format.md). It has one of three modes:

  append     backup: adds objects it records later. Any number of appenders, on any machines, run
             together: each only adds volumes, index objects and finally its version, and none of
             them deletes anything, so they cannot harm one another's work.
  shared     check: reads everything and judges what it sees; a backup's volume stored before its
             index object would look damaged to it, so it keeps appenders away too, but not other
             checks.
  exclusive  forget, prune, repairs: they delete objects others may rely on (a running backup's
             uploads look exactly like a stopped backup's leftovers), so nothing else runs beside them.

Locks of one mode, append or shared, go together; every other pair conflicts. Reading commands
(restore, mount, ls, versions) take none: a backup only adds objects, and adds its version last,
so what they read stays whole while it runs.

Taking a lock: list the locks; while a live one conflicts, wait, listing them again after a backoff
(1 s, doubling up to 30 s, each randomly shortened by up to half so that many waiters do not poll in
step), until no live conflict is left or the caller's bound has passed (`errors.Locked`, naming
the holder). Then write ours, list again, and when a conflicting lock appeared meanwhile (two
processes raced past the first look), remove ours, and wait again (or fail once the bound has
passed): of two racers both may withdraw, never both go on. An exclusive waiter holds no lock
while it waits, so a stream of appenders that never pauses keeps it waiting until its bound: run
forget and prune in a quiet hour.

While held, a daemon thread rewrites the lock every REFRESH_INTERVAL with the time. A lock not
refreshed for STALE_AFTER, or whose holder ran on this host and whose process is gone, is stale:
it binds no one, and `fsbackup unlock` removes it.

An append lock is stored with `exclusive` true as well as its mode: a fsbackup that knows no
append mode takes it for an exclusive lock, so it stays out of the way.

A full repository disk has no room for a lock object: taking a lock then fails with
`errors.NoSpace` saying to free space with `forget` or `prune --no-lock`, which hold
`no_lock_written` instead (the first look only: the user vouches that no other process starts).
"""
from __future__ import annotations

import datetime
import logging
import math
import os
import random
import secrets
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

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

# How long a leftover (a volume no recorded version uses, a volume without its index object, an
# index object without its volume, a partial upload) must have lain since it was written before
# prune or repair removes it, under the exclusive lock. Since backups share their lock, a running
# backup's uploads look exactly like a stopped one's leftovers; the exclusive lock keeps running
# backups away, except one whose lock went stale while it still ran (a machine suspended midway),
# and such a backup never stores a version after its lock went stale (`Lock.ensure_held`). The age
# is the same as for partial uploads, for the same reason, and leaves a stopped backup's volumes
# to the next backup, which reuses their blocks (docs/design.md, "Crash safety").
LEFTOVER_AGE = PARTIAL_UPLOAD_AGE
# For tests only: this many seconds, when fewer than LEFTOVER_AGE, take its place (a test cannot
# wait half an hour, and B2's upload times cannot be set back). It can only shorten the age.
LEFTOVER_AGE_FOR_TESTS = "FSBACKUP_LEFTOVER_AGE_FOR_TESTS"

# How long a command waits for conflicting locks when the user says nothing (--retry-lock sets
# it, --no-wait makes it 0): long enough for a night's backups of a few machines to end, and for
# the lock of a crashed holder on another host (not refreshed any more) to go stale; short enough
# that a job scheduled every night does not pile up behind a lock nobody removes.
DEFAULT_WAIT = 60 * 60
FIRST_POLL = 1.0                   # seconds before the first look again; doubled after each look...
MAX_POLL = 30.0                    # ...up to this
# The lock a command holds, by mode name (the command line chooses one where a command opens the
# repository: cli/repo.py `opened`; `hold_lock` says which command holds which).
LOCK_MODES = ("none", "shared", "append", "exclusive")
_SHARING_MODES = ("shared", "append")   # locks of one of these modes go together


def leftover_age() -> float:
    """LEFTOVER_AGE, or the shorter age of LEFTOVER_AGE_FOR_TESTS when set."""
    try:
        shorter = float(os.environ.get(LEFTOVER_AGE_FOR_TESTS, "inf"))
    except ValueError:
        shorter = math.inf
    return max(0.0, min(float(LEFTOVER_AGE), shorter))

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
    """What a lock object says about its holder; `damage` is set when it could not be read.
    `mode` is one of "shared", "append" and "exclusive"; left empty, `exclusive` tells which of
    the first and the last it is (locks written before the append mode had no mode)."""
    name: str
    host: str = "?"
    pid: int = 0
    command: str = "?"
    exclusive: bool = True
    created_ns: int = 0
    time_ns: int = 0
    damage: str | None = None
    started: int | None = None       # the holder's process start time, when known (_process_start)
    mode: str = ""

    def __post_init__(self) -> None:
        if not self.mode:
            self.mode = "exclusive" if self.exclusive else "shared"

    @classmethod
    def from_doc(cls, name: str, doc: dict) -> "LockInfo":
        try:
            started = doc.get("started")
            mode = doc.get("mode") or ""
            if mode not in ("", *_SHARING_MODES, "exclusive"):
                mode = "exclusive"       # a mode of a later fsbackup: kept away from everything
            return cls(name, str(doc["host"]), int(doc["pid"]), str(doc["command"]), bool(doc["exclusive"]),
                       int(doc["created_ns"]), int(doc["time_ns"]), started=int(started) if started else None,
                       mode=mode)
        except (KeyError, ValueError, TypeError, AttributeError):
            return cls(name, damage="lock object lacks its fields")

    def to_doc(self) -> dict:
        # An append lock says exclusive too: a fsbackup that knows no modes then keeps away from it.
        return {"host": self.host, "pid": self.pid, "command": self.command, "exclusive": self.mode != "shared",
                "mode": self.mode, "created_ns": self.created_ns, "time_ns": self.time_ns, "started": self.started}

    def stale(self) -> bool:
        """A damaged lock is not stale: nobody can tell it is not held (`unlock` removes it)."""
        if self.damage:
            return False
        if time.time_ns() - self.time_ns > STALE_AFTER * 1_000_000_000:
            return True
        return self.host == socket.gethostname() and _process_gone(self.pid, self.started)

    def conflicts_with(self, mode: str) -> bool:
        """Whether this lock keeps a lock of `mode` away (a damaged one keeps every lock away)."""
        return self.damage is not None or not (mode == self.mode and mode in _SHARING_MODES)

    def describe(self) -> str:
        if self.damage:
            return f"an unreadable lock object locks/{self.name} ({self.damage})"
        since = datetime.datetime.fromtimestamp(self.created_ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")
        kind = "" if self.mode == "exclusive" else f" ({self.mode})"
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


def find_conflict(repo, mode: str, own: str | None = None) -> LockInfo | None:
    """A live lock (other than `own`, or one this process released) that conflicts with a lock of
    `mode`, or None."""
    for other in list_locks(repo):
        if other.name == own or other.name in _undeleted:
            continue
        if other.conflicts_with(mode) and not other.stale():
            return other
    return None


def duration_text(seconds: float) -> str:
    """A wait as people say it: 45 s, 5 min, 1 h 30 min."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    hours, minutes = divmod(seconds // 60, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


def _locked(holder: LockInfo, waited: float | None) -> Locked:
    """The error of a lock not had: who holds the repository, and what the user can do."""
    if waited is None:
        return Locked(f"repository is locked by {holder.describe()}; to wait for it, use --retry-lock DURATION "
                      "(e.g. --retry-lock 30m); if that process is gone, run `fsbackup unlock`")
    return Locked(f"repository is still locked by {holder.describe()} after waiting {duration_text(waited)}; "
                  "to wait longer, use --retry-lock DURATION (e.g. --retry-lock 2h); if that process is gone, "
                  "run `fsbackup unlock`")


# Waiting: the clock, the sleep and the jitter, replaceable by tests.
_clock: Callable[[], float] = time.monotonic
_sleep: Callable[[float], None] = time.sleep
_rng = random.Random()

Waiting = Callable[[LockInfo, float], None]
"""Told once, when a command starts to wait: the lock it waits for and for how long at most."""


class _Wait:
    """The wait of one lock taker: until `deadline` (by `_clock`), looking again after a backoff."""

    def __init__(self, bound: float, waiting: Waiting | None):
        self.bound = bound
        self.started = _clock()
        self.waiting = waiting
        self.poll = FIRST_POLL

    def until_free(self, repo, mode: str, own: str | None = None) -> None:
        """Return once no live lock conflicts with `mode`; raise Locked when the bound has passed."""
        while True:
            holder = find_conflict(repo, mode, own)
            if holder is None:
                return
            self.after(holder)

    def after(self, holder: LockInfo) -> None:
        """`holder` stands in the way: sleep a backoff, or raise Locked once the bound has passed."""
        remaining = self.started + self.bound - _clock()
        if remaining <= 0:
            raise _locked(holder, None if self.bound <= 0 else _clock() - self.started)
        if self.waiting is not None:
            self.waiting(holder, self.bound)
            self.waiting = None
        _sleep(min(remaining, self.poll * _rng.uniform(0.5, 1.0)))
        self.poll = min(MAX_POLL, 2 * self.poll)


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
def no_lock_written(repo, wait: float = 0.0, waiting: Waiting | None = None) -> Iterator[None]:
    """For `--no-lock` (forget and prune on a full repository disk): write no lock, but wait (up
    to `wait` seconds) and fail as an exclusive lock would while a live lock shows another command
    at work. Nothing keeps another command from starting meanwhile: the user vouches that none will."""
    _Wait(wait, waiting).until_free(repo, "exclusive")
    yield


class Lock:
    """One lock on `repo`, held between acquire() and release() (or as a context manager)."""

    def __init__(self, repo, mode: str, command: str):
        if mode not in LOCK_MODES[1:]:
            raise ValueError(f"no lock mode {mode!r}")
        self.repo = repo
        now = time.time_ns()
        self.info = LockInfo(secrets.token_hex(32), socket.gethostname(), os.getpid(), command, mode != "shared",
                             now, now, started=_process_start(os.getpid()), mode=mode)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # The time in the lock last stored: wall clock, as others judge staleness by it (and a
        # monotonic clock would not count a suspended laptop's sleep).
        self._written_ns = 0

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def mode(self) -> str:
        return self.info.mode

    def acquire(self, wait: float = 0.0, waiting: Waiting | None = None) -> "Lock":
        """Take the lock, waiting up to `wait` seconds while live locks conflict (`waiting` is
        told when the wait begins); errors.Locked, naming a holder, when it could not be had."""
        for name in list(_undeleted):
            try:
                self.repo.delete_lock(name)
                _undeleted.discard(name)
            except FsbackupError:
                pass
        patience = _Wait(wait, waiting)
        while True:
            patience.until_free(self.repo, self.mode, own=self.name)
            try:
                self._write()
            except NoSpace as e:
                raise _no_room_for_lock(self.info.command, e) from None
            try:
                rival = find_conflict(self.repo, self.mode, own=self.name)
            except BaseException:
                self.repo.delete_lock(self.name)
                raise
            if rival is None:
                break
            # Another process wrote its lock since we looked: ours goes, and the wait goes on
            # (with a random backoff, so that two racers do not meet again).
            self.repo.delete_lock(self.name)
            patience.after(rival)
        self._thread = threading.Thread(target=self._keep_fresh, name="fsbackup-lock", daemon=True)
        self._thread.start()
        return self

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
def repository_lock(repo, mode: str, command: str, wait: float = 0.0,
                    waiting: Waiting | None = None) -> Iterator[Lock]:
    """Hold a lock of `mode` ("shared", "append" or "exclusive": the module's docstring) on `repo`
    for the `with` block, waiting up to `wait` seconds for conflicting locks to go (`Lock.acquire`)."""
    lock = Lock(repo, mode, command).acquire(wait, waiting)
    try:
        yield lock
    finally:
        lock.release()


@contextmanager
def hold_lock(repo, mode: str, command: str, no_lock: bool = False, wait: float = 0.0,
              waiting: Waiting | None = None) -> Iterator[Lock | None]:
    """Hold the lock of `mode` on `repo` for the `with` block, released however it ends; yields
    the Lock (None when none is written). Conflicting locks are waited for up to `wait` seconds
    (the command line's --retry-lock and --no-wait), `waiting` told when a wait begins.

      none       readers (restore, mount, ls, versions): objects they use are deleted only under
                 an exclusive lock, and a backup adds its version last.
      shared     check: keeps exclusive lock holders (deleters) and appenders away, not other checks.
      append     backup: adds objects it records later; shared by any number of appenders.
      exclusive  forget, prune, repairs, backup's retention step: they delete objects.

    `no_lock` (--no-lock of forget and prune, for a full repository disk) writes no lock in place
    of an exclusive one, and only waits or fails while a live lock shows another command at work."""
    if mode not in LOCK_MODES:
        raise ValueError(f"no lock mode {mode!r}")
    if mode == "none":
        yield None
    elif no_lock:
        if mode != "exclusive":
            raise ValueError("only an exclusive lock can be left unwritten (--no-lock)")
        with no_lock_written(repo, wait, waiting):
            yield None
    else:
        with repository_lock(repo, mode, command, wait, waiting) as lock:
            yield lock
