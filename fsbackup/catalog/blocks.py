"""Where blocks lie: the volumes the catalog records, each block's place (`BlockLocation`), and
the spare places of blocks that more than one volume holds (schema v4).

Recording and forgetting volumes keep one rule: a block some recorded volume holds is never left
recorded nowhere (`record_volume`, `unrecord_volume`, `forget_places`)."""
from __future__ import annotations

from typing import Iterable, Iterator, NamedTuple

from ..codec import wire
from ..errors import NoSuchObject
from .connection import Catalog

QUERY_BATCH = 500          # ids bound in one `IN (...)` query


class BlockLocation(NamedTuple):
    """Where a block's ciphertext lies: one range read of `stored_length` bytes at `offset` of
    volume `volume` (its name) fetches it; it decodes to `plain_length` bytes."""
    volume: str
    offset: int
    stored_length: int
    plain_length: int


def batches(items: list, size: int = QUERY_BATCH):
    """`items` in consecutive lists of at most `size` (ids bound in one `IN (...)` query)."""
    for i in range(0, len(items), size):
        yield items[i:i + size]


# ---- volumes ----------------------------------------------------------------------------------

def volume_names(catalog: Catalog) -> set[str]:
    """The names of every recorded volume."""
    return {name for (name,) in catalog.rows("SELECT name FROM volumes")}


def volume_sizes(catalog: Catalog) -> dict[str, int]:
    """Name -> size in bytes of every recorded volume."""
    return {name: size for name, size in catalog.rows("SELECT name, size FROM volumes")}


def any_volume(catalog: Catalog) -> bool:
    """Whether any volume is recorded."""
    return catalog.row("SELECT 1 FROM volumes LIMIT 1") is not None


def stored_volume_bytes(catalog: Catalog) -> int:
    """Bytes of every recorded volume together (the mount's statfs)."""
    return catalog.row("SELECT coalesce(sum(size), 0) FROM volumes")[0]


def blocks_in_volume(catalog: Catalog, volume: str) -> list[bytes]:
    """The blocks whose recorded place is in volume `volume`."""
    return [h for (h,) in catalog.rows(
        "SELECT b.hash FROM blocks b JOIN volumes v ON v.id = b.volume WHERE v.name=?", (volume,))]


def record_volume(catalog: Catalog, name: str, size: int, entries: list[wire.BlockEntry], moved: bool = False) -> None:
    """Record a volume whose volume and index objects are durably stored, with its blocks, in one
    transaction. Blocks already recorded elsewhere keep their place (this one is kept as a spare),
    unless `moved` (prune's repacking, which deletes the old volume next) moves them here."""
    rows = [(e.id, e.offset, e.stored_length, e.plain_length) for e in entries]
    with catalog.transaction() as db:
        db.execute("INSERT OR IGNORE INTO volumes(name, size, block_count) VALUES (?, ?, ?)",
                   (name, size, len(entries)))
        (vol_id,) = db.execute("SELECT id FROM volumes WHERE name=?", (name,)).fetchone()
        if moved:
            db.executemany("INSERT OR REPLACE INTO blocks(hash, volume, offset, stored_length, plain_length) "
                           f"VALUES (?, {vol_id}, ?, ?, ?)", rows)
            return
        before = db.total_changes()
        db.executemany("INSERT OR IGNORE INTO blocks(hash, volume, offset, stored_length, plain_length) "
                       f"VALUES (?, {vol_id}, ?, ?, ?)", rows)
        if db.total_changes() - before < len(rows):      # some are recorded elsewhere
            db.executemany("INSERT OR IGNORE INTO spare_blocks(hash, volume, offset, stored_length, "
                           f"plain_length) SELECT ?, {vol_id}, ?, ?, ? WHERE NOT EXISTS "
                           f"(SELECT 1 FROM blocks WHERE hash = ?1 AND volume = {vol_id})", rows)


def unrecord_volume(catalog: Catalog, name: str) -> None:
    """Forget a volume and the blocks recorded in it (before it is deleted, or once it is gone):
    a block another volume also holds moves to that spare place."""
    with catalog.transaction() as db:
        row = db.execute("SELECT id FROM volumes WHERE name=?", (name,)).fetchone()
        if row:
            _drop_places(db, row[0])
            db.execute("DELETE FROM volumes WHERE id=?", row)


def forget_places(catalog: Catalog, volume: str, block_ids: Iterable[bytes]) -> None:
    """Forget that volume `volume` holds `block_ids` (damaged there), keeping the volume: a block
    also held by another volume moves to that spare place instead of being recorded nowhere."""
    with catalog.transaction() as db:
        row = db.execute("SELECT id FROM volumes WHERE name=?", (volume,)).fetchone()
        if row:
            _drop_places(db, row[0], block_ids)


def _drop_places(db, vol_id: int, block_ids: Iterable[bytes] | None = None) -> None:
    """Forget where volume `vol_id` holds blocks (all of them, or `block_ids`), inside the
    caller's transaction, each moving to a spare place when it has one."""
    if block_ids is None:
        db.execute("INSERT OR REPLACE INTO blocks(hash, volume, offset, stored_length, plain_length) "
                   "SELECT s.hash, s.volume, s.offset, s.stored_length, s.plain_length FROM spare_blocks s "
                   "JOIN blocks b ON b.hash = s.hash WHERE b.volume = ? AND s.volume != ? GROUP BY s.hash",
                   (vol_id, vol_id))
        db.execute("DELETE FROM blocks WHERE volume=?", (vol_id,))
        db.execute("DELETE FROM spare_blocks WHERE volume=?", (vol_id,))
    else:
        for block_id in block_ids:
            spare = db.execute("SELECT volume, offset, stored_length, plain_length FROM spare_blocks "
                               "WHERE hash=? AND volume != ? LIMIT 1", (block_id, vol_id)).fetchone()
            if spare is not None and db.execute("SELECT 1 FROM blocks WHERE hash=? AND volume=?",
                                                (block_id, vol_id)).fetchone():
                db.execute("UPDATE blocks SET volume=?, offset=?, stored_length=?, plain_length=? "
                           "WHERE hash=?", (*spare, block_id))
            else:
                db.execute("DELETE FROM blocks WHERE hash=? AND volume=?", (block_id, vol_id))
            db.execute("DELETE FROM spare_blocks WHERE hash=? AND volume=?", (block_id, vol_id))
    # A spare that has just become the block's place is no spare any more.
    db.execute("DELETE FROM spare_blocks WHERE EXISTS (SELECT 1 FROM blocks b "
               "WHERE b.hash = spare_blocks.hash AND b.volume = spare_blocks.volume)")


# ---- blocks -----------------------------------------------------------------------------------

def known_blocks(catalog: Catalog, block_ids: list[bytes]) -> set[bytes]:
    """The ones among `block_ids` recorded as stored (at most a few hundred at once: one query)."""
    if not block_ids:
        return set()
    rows = catalog.rows(f"SELECT hash FROM blocks WHERE hash IN ({','.join('?' * len(block_ids))})", block_ids)
    return {row[0] for row in rows}


def block_location(catalog: Catalog, block_id: bytes) -> BlockLocation:
    """Where a stored block lies; NoSuchObject when no recorded volume holds it."""
    row = catalog.row("SELECT v.name, b.offset, b.stored_length, b.plain_length FROM blocks b "
                    "JOIN volumes v ON v.id = b.volume WHERE b.hash=?", (block_id,))
    if row is None:
        raise NoSuchObject(f"block {block_id.hex()[:16]} (not in any stored volume)")
    return BlockLocation._make(row)


def block_locations(catalog: Catalog, block_ids: Iterable[bytes]) -> dict[bytes, BlockLocation]:
    """`block_location` of many blocks in few queries; a block in no stored volume is left out."""
    ids = list(block_ids)
    found: dict[bytes, BlockLocation] = {}
    for part in batches(ids):
        for block_id, *location in catalog.rows(
                "SELECT b.hash, v.name, b.offset, b.stored_length, b.plain_length FROM blocks b "
                f"JOIN volumes v ON v.id = b.volume WHERE b.hash IN ({','.join('?' * len(part))})", part):
            found[block_id] = BlockLocation._make(location)
    return found


def volume_holding(catalog: Catalog, block_id: bytes) -> str | None:
    """The name of the volume recorded as the block's place, or None."""
    row = catalog.row("SELECT v.name FROM blocks b JOIN volumes v ON v.id = b.volume WHERE b.hash=?", (block_id,))
    return row[0] if row is not None else None


def blocks_after(catalog: Catalog, block_id: bytes, location: BlockLocation, max_bytes: int,
                 max_blocks: int) -> list[tuple[bytes, BlockLocation]]:
    """(block id, location) of the blocks after `block_id` (at `location`) in its volume, by offset,
    that end within `max_bytes` of its start: at most `max_blocks`, in one query that
    `blocks_by_place` covers (the mount's runs: no random page reads)."""
    volume, offset = location.volume, location.offset
    end = offset + max_bytes
    found = []
    for bid, where, length, plain in catalog.rows(
            "SELECT hash, offset, stored_length, plain_length FROM blocks "
            "WHERE volume = (SELECT volume FROM blocks WHERE hash=?) AND offset > ? AND offset < ? "
            "ORDER BY offset LIMIT ?", (block_id, offset, end, max_blocks)):
        if where + length > end:
            break
        found.append((bid, BlockLocation(volume, where, length, plain)))
    return found


def block_ids_in_order(catalog: Catalog) -> Iterator[bytes]:
    """Every recorded block id, in key order, streamed (check merges it with the ids in use)."""
    for (block_id,) in catalog.stream("SELECT hash FROM blocks ORDER BY hash"):
        yield block_id
