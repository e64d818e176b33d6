"""How big versions and the repository are, from the local index alone (`fsbackup stats`): a
version's files, folders and logical size, the plain and stored bytes of the distinct blocks it
uses, and the repository's recorded blocks and volumes."""
from __future__ import annotations

from typing import NamedTuple

from ..codec import wire
from .connection import Catalog
from .tree import ROOT_ID


class VersionStats(NamedTuple):
    files: int              # regular files (each name of a hard-linked file counts)
    folders: int            # directories, its root not counted
    logical_bytes: int      # sum of its files' sizes
    unique_bytes: int       # plain bytes of the distinct blocks its files use
    stored_bytes: int       # compressed and encrypted bytes of those blocks in their volumes
    blocks: int             # distinct blocks its files use


class RepositoryStats(NamedTuple):
    versions: int
    logical_bytes: int      # sum of the sizes of every version's files
    blocks: int             # blocks recorded in a volume
    plain_bytes: int        # their plain bytes
    stored_bytes: int       # their compressed and encrypted bytes
    volumes: int
    volume_bytes: int       # bytes of the volume objects (blocks, tables and headers)


def version_stats(catalog: Catalog, version_ids: list[int]) -> VersionStats:
    """The stats of the versions `version_ids` together (one version: its own): their files and
    folders summed, their blocks counted once however many files and versions share them. Holes
    are no data; a block recorded in no volume (lost) is not counted. Any number of versions:
    they go to a temporary table, not into the statements as parameters (SQLite takes 32766)."""
    # Temporary tables are this connection's: they take no write lock on the index.
    catalog.rows("DROP TABLE IF EXISTS temp.stats_versions")
    catalog.rows("DROP TABLE IF EXISTS temp.stats_blocks")
    catalog.rows("CREATE TEMP TABLE stats_versions(id INTEGER PRIMARY KEY)")
    catalog.rows("CREATE TEMP TABLE stats_blocks(hash BLOB NOT NULL)")
    try:
        catalog.db.cursor().executemany("INSERT OR IGNORE INTO temp.stats_versions(id) VALUES (?)",
                                        ((v,) for v in version_ids))
        files, folders, logical = catalog.row(
            "SELECT coalesce(sum(type = 'f'), 0), coalesce(sum(type = 'd' AND id != ?), 0), "
            "coalesce(sum(CASE WHEN type = 'f' THEN size END), 0) FROM nodes "
            "WHERE version IN (SELECT id FROM temp.stats_versions)", (ROOT_ID,))
        # The blocks counted once through IN: a set of them in memory could be large.
        packed = catalog.stream("SELECT extents FROM contents WHERE id IN (SELECT content FROM nodes "
                                "WHERE version IN (SELECT id FROM temp.stats_versions) AND content IS NOT NULL)")
        catalog.db.cursor().executemany(
            "INSERT INTO temp.stats_blocks(hash) VALUES (?)",
            ((block_id,) for (extents,) in packed
             for block_id, _ in wire.EXTENT.iter_unpack(extents) if block_id != wire.HOLE_ID))
        blocks, unique, stored = catalog.row(
            "SELECT count(*), coalesce(sum(plain_length), 0), coalesce(sum(stored_length), 0) FROM blocks "
            "WHERE hash IN (SELECT hash FROM temp.stats_blocks)")
    finally:
        catalog.rows("DROP TABLE temp.stats_blocks")
        catalog.rows("DROP TABLE temp.stats_versions")
    return VersionStats(files, folders, logical, unique, stored, blocks)


def repository_stats(catalog: Catalog) -> RepositoryStats:
    """What the index records of the repository's storage, used by a version or not (prune removes
    what no version uses)."""
    blocks, plain, stored = catalog.row(
        "SELECT count(*), coalesce(sum(plain_length), 0), coalesce(sum(stored_length), 0) FROM blocks")
    volumes, volume_bytes = catalog.row("SELECT count(*), coalesce(sum(size), 0) FROM volumes")
    (versions,) = catalog.row("SELECT count(*) FROM versions")
    (logical,) = catalog.row("SELECT coalesce(sum(size), 0) FROM nodes WHERE type = 'f'")
    return RepositoryStats(versions, logical, blocks, plain, stored, volumes, volume_bytes)
