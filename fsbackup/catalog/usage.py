"""What uses which blocks: the contents that recorded versions' files refer to, prune's marks of
the blocks still in use and what each volume holds of them, the files that use given contents
(what damage affects), and the blocks only given volumes hold."""
from __future__ import annotations

from typing import Iterator, NamedTuple

from ..codec import wire
from .blocks import BlockLocation, batches
from .connection import Catalog


def used_extents(catalog: Catalog) -> Iterator[bytes]:
    """The packed extents of every content a recorded node refers to (each once), streamed: one
    pass over the files' layouts, however many versions and hard links share them."""
    for (extents,) in catalog.stream(
            "SELECT extents FROM contents WHERE id IN (SELECT content FROM nodes WHERE content IS NOT NULL)"):
        yield extents


def content_extents(catalog: Catalog) -> list[tuple[int, bytes]]:
    """(id, packed extents) of every recorded content, used or not."""
    return catalog.rows("SELECT id, extents FROM contents")


def nodes_using(catalog: Catalog, content_ids: list[int]) -> dict[int, list[int]]:
    """version id -> node ids (in order) of the files whose content is one of `content_ids`."""
    out: dict[int, list[int]] = {}
    if not content_ids:
        return out
    with catalog.transaction() as db:
        db.execute("CREATE TEMP TABLE IF NOT EXISTS hit(id INTEGER PRIMARY KEY)")
        db.execute("DELETE FROM temp.hit")
        db.executemany("INSERT OR IGNORE INTO temp.hit(id) VALUES (?)", [(c,) for c in content_ids])
        for vid, nid in db.execute("SELECT n.version, n.id FROM nodes n JOIN temp.hit h ON n.content = h.id "
                                   "ORDER BY n.version, n.id"):
            out.setdefault(vid, []).append(nid)
    return out


def blocks_only_in(catalog: Catalog, volumes: set[str]) -> dict[bytes, str]:
    """The blocks whose recorded place is in one of `volumes` and that no other volume holds as
    a spare, each with the name of its volume."""
    sole: dict[bytes, str] = {}
    for part in batches(sorted(volumes)):
        sole.update(catalog.rows(
            "SELECT b.hash, v.name FROM blocks b JOIN volumes v ON v.id = b.volume "
            f"WHERE v.name IN ({','.join('?' * len(part))}) AND NOT EXISTS "
            "(SELECT 1 FROM spare_blocks s WHERE s.hash = b.hash AND s.volume != b.volume)", part))
    return sole


# ---- prune's marks: the temporary table used_blocks ------------------------------------------

# A block is live when a remaining version's file uses it (used_blocks is filled by mark_used_blocks).
LIVE = "EXISTS (SELECT 1 FROM temp.used_blocks u WHERE u.hash = b.hash)"


def mark_used_blocks(catalog: Catalog) -> None:
    """Fill the temporary table used_blocks (this connection's) with every block a remaining
    version's file uses: one pass over the distinct contents that nodes refer to. Ids are appended
    as found and indexed once at the end, which is about twice as fast as keeping a unique key
    while inserting; a block shared by several contents is listed more than once, hence EXISTS
    (never a join) in the queries that read the marks."""
    with catalog.transaction() as db:
        db.execute("DROP TABLE IF EXISTS temp.used_blocks")
        db.execute("CREATE TEMP TABLE used_blocks(hash BLOB NOT NULL)")
        db.cursor().executemany("INSERT INTO temp.used_blocks(hash) VALUES (?)",
                                ((block_id,) for extents in used_extents(catalog)
                                 for block_id, _ in wire.EXTENT.iter_unpack(extents) if block_id != wire.HOLE_ID))
        db.execute("CREATE INDEX temp.used_blocks_by_hash ON used_blocks(hash)")


class VolumeUsage(NamedTuple):
    """How much of a recorded volume the marked blocks use."""
    name: str
    size: int
    live_blocks: int
    live_bytes: int
    # Stored bytes of blocks recorded in it that no version uses, and of the spare copies it
    # holds of blocks recorded in another volume (two backups running at once both stored
    # them): repacking it keeps only its live blocks, and the other copy serves the rest.
    dead_bytes: int


def volume_usage(catalog: Catalog) -> list[VolumeUsage]:
    """The usage of every recorded volume, by name (after `mark_used_blocks`)."""
    return [VolumeUsage._make(row) for row in catalog.rows(
        "SELECT v.name, v.size, coalesce(sum(b.live), 0), "
        "       coalesce(sum(CASE WHEN b.live THEN b.stored_length END), 0), "
        "       coalesce(sum(CASE WHEN NOT b.live THEN b.stored_length END), 0) "
        "       + (SELECT coalesce(sum(s.stored_length), 0) FROM spare_blocks s WHERE s.volume = v.id) "
        f"FROM volumes v LEFT JOIN (SELECT b.volume, b.stored_length, {LIVE} AS live FROM blocks b) b "
        "ON b.volume = v.id GROUP BY v.id ORDER BY v.name")]


def live_blocks(catalog: Catalog, volume: str) -> list[tuple[bytes, BlockLocation]]:
    """(block id, location) of the marked blocks whose recorded place is in `volume`, by offset."""
    return [(block_id, BlockLocation(volume, *place)) for block_id, *place in catalog.rows(
        "SELECT b.hash, b.offset, b.stored_length, b.plain_length FROM blocks b "
        f"JOIN volumes v ON v.id = b.volume WHERE v.name = ? AND {LIVE} ORDER BY b.offset", (volume,))]


def any_needed_unrecorded(catalog: Catalog, block_ids: list[bytes]) -> bool:
    """Whether one of `block_ids` is marked used and recorded in no volume."""
    needed = ("SELECT 1 FROM temp.used_blocks u WHERE u.hash IN ({}) "
              "AND NOT EXISTS (SELECT 1 FROM blocks b WHERE b.hash = u.hash) LIMIT 1")
    return any(catalog.rows(needed.format(",".join("?" * len(part))), part) for part in batches(block_ids))
