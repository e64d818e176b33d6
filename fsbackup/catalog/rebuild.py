"""Writing the catalog afresh from the repository's index and version objects, inside the one
transaction of a rebuild (`Repository.rebuild_catalog`, under `Catalog.rebuilding`)."""
from __future__ import annotations

from .connection import Catalog

EMPTIED_TABLES = ("nodes", "versions", "contents", "blocks", "spare_blocks", "volumes")


class Refill:
    """One rebuild's writes, in order: `start` empties the tables, `add_volume` for each index
    object, `place_blocks` once they are all in, the versions (`versions.record_version`), and
    `finish`. Volume ids are given by the caller (positions in its list of volumes)."""

    def __init__(self, catalog: Catalog, db):
        self.catalog = catalog
        self.db = db
        self._dropped: list[str] = []

    def start(self) -> dict[str, int]:
        """Empty every table but meta's id counters, and return the row id of every version that
        was recorded, by name: versions keep their row ids (the mount's inode numbers), and the
        id counters keep growing (connection.py: a row id never names two things); everything else is
        renumbered. Secondary indexes are dropped, to be built once at the end (one sort each),
        and blocks are staged in arrival order (`place_blocks` then sorts them in)."""
        db = self.db
        version_ids = dict(db.execute("SELECT name, id FROM versions"))
        for table in EMPTIED_TABLES:
            db.execute(f"DELETE FROM {table}")
        self.catalog.forget_meta(db)
        self._dropped = self.catalog.drop_secondary_indexes(("nodes", "blocks"))
        db.execute("CREATE TEMP TABLE staged_blocks(hash BLOB, volume INTEGER, offset INTEGER, "
                   "stored_length INTEGER, plain_length INTEGER)")
        return version_ids

    def add_volume(self, volume_row: tuple, block_rows: list[tuple]) -> None:
        """A volume, (id, name, size, block count), and its blocks, (hash, volume id, offset,
        stored length, plain length) each."""
        self.db.execute("INSERT INTO volumes(id, name, size, block_count) VALUES (?, ?, ?, ?)", volume_row)
        self.db.executemany("INSERT INTO temp.staged_blocks VALUES (?, ?, ?, ?, ?)", block_rows)

    def place_blocks(self) -> None:
        """Move the staged blocks into the keyed table sorted by id (an append instead of a million
        random b-tree inserts); (hash, arrival) keeps the first place, the others become spares."""
        db = self.db
        db.execute("INSERT OR IGNORE INTO blocks(hash, volume, offset, stored_length, plain_length) "
                   "SELECT hash, volume, offset, stored_length, plain_length FROM temp.staged_blocks "
                   "ORDER BY hash, rowid")
        db.execute("INSERT OR IGNORE INTO spare_blocks(hash, volume, offset, stored_length, plain_length) "
                   "SELECT s.hash, s.volume, s.offset, s.stored_length, s.plain_length FROM temp.staged_blocks s "
                   "WHERE NOT EXISTS (SELECT 1 FROM blocks b WHERE b.hash = s.hash AND b.volume = s.volume)")
        db.execute("DROP TABLE temp.staged_blocks")

    def finish(self, meta: dict[str, str]) -> None:
        """Build the dropped indexes again and set the facts `meta` (key -> value)."""
        for sql in self._dropped:
            self.db.execute(sql)
        for key, value in meta.items():
            self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))
