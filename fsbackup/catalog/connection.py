"""The connection to the local index (`Catalog`): opening it, the WAL, the local index lock,
transactions, the facts in `meta`, and the one place SQLite's errors become domain errors.

The local index is a SQLite cache of what the remote holds, shaped for the mount's queries. The
remote is the source of truth; this file can always be rebuilt from the remote's index and
version objects (`Repository.rebuild_catalog`). Everything is recorded only after the objects it
describes are durably stored ("publish, then record").

Rows never change meaning under a reader. Version and content row ids are handed out from
counters that only grow (`allocate_ids`), so a row id a reader holds (the mount's inode numbers, a
restore's content ids) never comes to name another version or another file's bytes, even after
the row is deleted. The one operation that renumbers rows, a rebuild, needs the index to itself:
every open `Catalog` holds a shared lock on the file `<index>.lock` (flock: released by the kernel
when a process dies), and a rebuild converts its own to an exclusive one (`Catalog.exclusive`),
which fails at once while any other connection, in this process or another (a mount, a restore,
ls, check), has the index open.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
import weakref
from contextlib import contextmanager

import apsw

from ..errors import FsbackupError, LocalIndexDamaged, Locked, NoSpace, PermissionDenied
from ..private import make_private_folder
from .schema import MIGRATIONS

log = logging.getLogger("fsbackup.index")

# I/O errors SQLite reports for a failed write, where the cause may be a full disk: a write to
# the shared-memory file fails as SHMSIZE (not SQLITE_FULL), and fsync or truncation as theirs.
_WRITE_ERRORS = {apsw.mapping_extended_result_codes[name] for name in (
    "SQLITE_IOERR_WRITE", "SQLITE_IOERR_FSYNC", "SQLITE_IOERR_DIR_FSYNC", "SQLITE_IOERR_TRUNCATE",
    "SQLITE_IOERR_SHMSIZE", "SQLITE_IOERR_SHMMAP")}
_ALMOST_FULL = 1 << 20     # fewer free bytes than this, and a failed write is a full disk


def _disk_full(path: str) -> bool:
    """Whether the disk holding `path` is (almost) full, for this user: root may use the blocks
    the file system reserves for it."""
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return False
    free = st.f_bfree if os.geteuid() == 0 else st.f_bavail
    return free * st.f_frsize < _ALMOST_FULL


# Errors that mean the file is not a usable SQLite database (garbage, truncated, damaged pages).
_DAMAGE = (apsw.NotADBError, apsw.CorruptError)


def _map_errors(e: Exception, path: str) -> Exception:
    """The domain error for an SQLite error on the index at `path` (docs/exit-codes.md)."""
    if isinstance(e, apsw.FullError) or (
            isinstance(e, apsw.IOError) and getattr(e, "extendedresult", None) in _WRITE_ERRORS and _disk_full(path)):
        return NoSpace(f"no space left on the disk holding the local index {path}; free space there, "
                       "or put the index on another disk with --index")
    if isinstance(e, _DAMAGE):
        return LocalIndexDamaged(f"the local index {path} is damaged ({e}); run 'fsbackup repair', which sets "
                                 "it aside and rebuilds it from the repository")
    if isinstance(e, (apsw.CantOpenError, apsw.PermissionsError, apsw.ReadOnlyError)):
        return PermissionDenied(f"cannot open the local index {path}: {e}; check its permissions or use --index")
    return FsbackupError(f"local index {path}: {e}")


class Catalog:
    """An open local index. Use from one thread at a time (the CLI's main thread, or the mount's
    worker threads with a connection each). Holds the shared local lock while open (see above).

    A file that is not a readable index (garbage, truncated, damaged) is set aside under
    `<index>.damaged-<time>` and a new, empty one takes its place: the repository is the source
    of truth, and the caller rebuilds it."""

    def __init__(self, path: str):
        self.path = path
        folder = os.path.dirname(os.path.abspath(path))
        self._lock_fd = -1
        self._db: apsw.Connection | None = None      # None until opened, and once closed
        try:
            make_private_folder(folder)
            self._lock_fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            # Closed by close(), or when the Catalog is collected unclosed (the mount's worker threads
            # come and go with their connections): a leaked descriptor would also keep the lock.
            self._release_lock = weakref.finalize(self, os.close, self._lock_fd)
            self._take_lock(fcntl.LOCK_SH, wait=10.0)
            try:
                self._open()
            except _DAMAGE:
                self._set_aside()
                self._open()
        except apsw.Error as e:
            self.close()
            raise _map_errors(e, path) from None
        except PermissionError as e:
            self.close()
            raise PermissionDenied(f"cannot create the local index at {path}: {e.strerror}; use --index") from None
        except BaseException:
            self.close()
            raise

    @property
    def db(self) -> apsw.Connection:
        """The SQLite connection (a use after close is a bug, and says so)."""
        if self._db is None:
            raise FsbackupError(f"internal error: the local index {self.path} was used after it was closed")
        return self._db

    def _pragma(self, statement: str):
        """The value a PRAGMA statement returns (these return one row of one value)."""
        row = self.db.execute(statement).fetchone()
        if row is None:
            raise FsbackupError(f"internal error: {statement} returned nothing on the local index {self.path}")
        return row[0]

    def _open(self) -> None:
        if self._db is not None:
            self._db.close()
        old_umask = os.umask(0o077)   # the index and its -wal/-shm files: owner only
        try:
            self._db = apsw.Connection(self.path)
        finally:
            os.umask(old_umask)
        self.db.set_busy_timeout(60_000)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=OFF")
        self._migrate()
        self.db.execute("SELECT count(*) FROM meta").fetchall()    # reads a page: damage shows here
        os.chmod(self.path, 0o600)

    def set_aside_if_damaged(self) -> bool:
        """Check every page of the index (slow on a big one: repair's business) and set it aside,
        opening a new empty one, when any is damaged. Call while holding it `exclusive`."""
        try:
            ok = self._pragma("PRAGMA quick_check(1)") == "ok"
        except _DAMAGE:
            ok = False
        if not ok:
            self._set_aside(then=fcntl.LOCK_EX)
            self._open()
        return not ok

    def _set_aside(self, then: int = fcntl.LOCK_SH) -> None:
        """Move a damaged index (and its -wal/-shm files) out of the way. Only when nothing else has
        it open: another process may still be using a file that only looks damaged to us."""
        if self._db is not None:
            self._db.close()
            self._db = None
        try:
            self._take_lock(fcntl.LOCK_EX, wait=0)
        except Locked:
            raise LocalIndexDamaged(f"the local index {self.path} is damaged, and another fsbackup process on "
                                    "this machine has it open; stop it, then run 'fsbackup repair'") from None
        aside = f"{self.path}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
        for suffix in ("", "-wal", "-shm"):
            try:
                os.rename(self.path + suffix, aside + suffix)
            except FileNotFoundError:
                pass
        log.warning("the local index %s was damaged; it was set aside as %s and is rebuilt from the repository",
                    self.path, aside)
        self._take_lock(then, wait=0)

    def _take_lock(self, mode: int, wait: float) -> None:
        """Take (or convert to) the shared or exclusive local lock, waiting up to `wait` seconds."""
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(self._lock_fd, mode | fcntl.LOCK_NB)
                return
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                    if mode == fcntl.LOCK_SH:
                        raise Locked(f"the local index {self.path} is being rebuilt by another fsbackup process "
                                     "(repair); run this again when it has finished") from None
                    raise Locked(f"the local index {self.path} is in use by another fsbackup process on this "
                                 "machine (a mount, restore, ls or check); stop it or let it finish, then run "
                                 "this again") from None
            time.sleep(0.05)

    @contextmanager
    def exclusive(self):
        """Hold the index alone for the `with` block (a rebuild renumbers rows): no other connection,
        in this process or another, may have it open; raises errors.Locked at once otherwise."""
        try:
            self._take_lock(fcntl.LOCK_EX, wait=0)
        except Locked:
            # A failed conversion may have dropped the shared lock (flock converts by unlocking
            # first): take it back before saying so, or the index stays open without it.
            self._take_lock(fcntl.LOCK_SH, wait=10.0)
            raise
        try:
            yield self
        finally:
            self._take_lock(fcntl.LOCK_SH, wait=0)

    @contextmanager
    def snapshot(self):
        """Read everything in the `with` block from one consistent state of the index (an SQLite
        read transaction: in WAL mode, commits by others stay invisible until it ends)."""
        try:
            self.db.execute("BEGIN")                              # deferred: takes no write lock
            self.db.execute("SELECT 1 FROM meta LIMIT 1").fetchall()   # the read transaction starts here
        except apsw.Error as e:
            self._roll_back()
            raise _map_errors(e, self.path) from None
        try:
            yield self
        finally:
            self._roll_back()                                     # nothing was written: ending is all

    def _migrate(self) -> None:
        """Bring the schema to the newest version, one step per transaction. Each step looks at the
        version again inside its write transaction: two processes opening a new index at once
        would otherwise both create the tables."""
        version = self._pragma("PRAGMA user_version")
        if version == len(MIGRATIONS):
            return                       # (the usual case: no write lock taken to find out)
        while True:
            with self.transaction() as db:
                (version,) = db.execute("PRAGMA user_version").fetchone()
                if version > len(MIGRATIONS):
                    raise FsbackupError(f"the local index {self.path} is from a newer fsbackup; "
                                        "run 'fsbackup repair'")
                if version == len(MIGRATIONS):
                    return
                sql, finish = MIGRATIONS[version]
                db.execute(sql)
                if finish:
                    finish(db)
                db.execute(f"PRAGMA user_version={version + 1}")

    @contextmanager
    def transaction(self):
        """A write transaction (nested ones are savepoints). It starts IMMEDIATE, taking the write
        lock at once: a transaction that read first and then wrote would fail with "database is
        locked", without waiting, whenever another process committed in between."""
        try:
            if not self.db.getautocommit():          # inside another transaction: a savepoint
                with self.db:
                    yield self.db
                return
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
                self.db.execute("COMMIT")
            except BaseException:
                self._roll_back()
                raise
        except apsw.Error as e:
            raise _map_errors(e, self.path) from None

    def _roll_back(self) -> None:
        """End the open transaction, if SQLite has not ended it itself (it may, on a full disk or
        an I/O error); a failure here must not hide the error being raised."""
        if not self.db.getautocommit():
            try:
                self.db.execute("ROLLBACK")
            except apsw.Error:
                pass

    def try_journal_mode(self, mode: str) -> bool:
        """Switch the journal mode if nothing else has the index open (leaving the WAL needs the
        only connection); no waiting. Says whether the index now uses `mode`."""
        self.db.set_busy_timeout(0)
        try:
            now = self._pragma(f"PRAGMA journal_mode={mode}")
        except apsw.BusyError:
            return False
        except apsw.Error as e:
            raise _map_errors(e, self.path) from None
        finally:
            self.db.set_busy_timeout(60_000)
        return now.lower() == mode.lower()

    def rows(self, sql: str, args=()) -> list:
        """Every row `sql` gives (the catalog's modules run their queries through here)."""
        try:
            return self.db.execute(sql, args).fetchall()
        except apsw.Error as e:
            raise _map_errors(e, self.path) from None

    def row(self, sql: str, args=()):
        """The first row `sql` gives, or None."""
        rows = self.rows(sql, args)
        return rows[0] if rows else None

    def stream(self, sql: str, args=()):
        """The rows of `sql` as they are read, on a cursor of their own (other statements may run
        while it is read): for passes over a whole table that memory need not hold."""
        return self.db.cursor().execute(sql, args)

    @contextmanager
    def rebuilding(self):
        """Hold the index alone (`exclusive`), with damaged pages set aside, tuned for one bulk
        load in the `with` block: a big page cache and in-memory temporary tables while the
        b-trees grow, two sorter threads for the indexes built at the end, and a rollback journal
        instead of the WAL (pages added to the file are not journaled, where the WAL would write
        the whole new index twice; left as it is if a connection that is not fsbackup's, which
        takes no local lock, has the index open)."""
        self.db.execute("PRAGMA cache_size=-131072")       # 128 MiB while the b-trees grow
        self.db.execute("PRAGMA temp_store=MEMORY")        # the staged blocks (~60 MiB per million)
        self.db.execute("PRAGMA threads=2")                # sorts for the indexes built at the end
        with self.exclusive():            # rows are renumbered: nobody else may hold any
            self.set_aside_if_damaged()       # (a rebuild on damaged pages would fail, or keep them)
            left_wal = self.try_journal_mode("DELETE")
            try:
                yield self
            finally:
                self.db.execute("PRAGMA cache_size=-2000")
                if left_wal:
                    self.db.execute("PRAGMA journal_mode=WAL")

    def drop_secondary_indexes(self, tables: tuple[str, ...]) -> list[str]:
        """Drop the indexes on `tables` (inside the caller's transaction) and return the SQL that
        creates them again: bulk loads build them once at the end instead of row by row."""
        rows = self.rows("SELECT name, sql FROM sqlite_master WHERE type='index' AND sql IS NOT NULL AND tbl_name IN "
                      f"({','.join('?' * len(tables))})", tables)
        for name, _ in rows:
            self.db.execute(f'DROP INDEX "{name}"')
        return [sql for _, sql in rows]

    def get_meta(self, key: str) -> str | None:
        row = self.row("SELECT value FROM meta WHERE key=?", (key,))
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.rows("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def is_empty(self) -> bool:
        return self.get_meta("repository_id") is None

    def allocate_ids(self, db, table: str, count: int = 1) -> int:
        """Hand out `count` new row ids for `table` (versions or contents) that no row ever had, and
        return the first: the counter in meta only grows, so a deleted row's id is never handed
        out again (module docstring). Call inside the transaction that inserts the rows."""
        key = f"last_{table}_id"
        row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        (top,) = db.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()
        first = max(int(row[0]) if row else 0, top) + 1
        db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, str(first + count - 1)))
        return first

    def forget_meta(self, db) -> None:
        """Delete every fact in meta except the id counters, which must outlive a rebuild."""
        db.execute("DELETE FROM meta WHERE key NOT IN ('last_versions_id', 'last_contents_id')")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock_fd >= 0:
            self._release_lock()         # closes the descriptor once, releasing the local lock
            self._lock_fd = -1
