"""The catalog's schema: one commented schema and its ordered migrations (`MIGRATIONS[i]` takes
an index from user_version i to i+1), and how the nodes table holds times."""
from __future__ import annotations

# One schema, commented. Each entry of MIGRATIONS takes the schema from user_version i to i+1.
SCHEMA_V1 = """
-- Key/value facts about the repository this index caches (repository id, format version).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Volumes stored on the remote: data/<name[:2]>/<name> with index object index/<name>.
-- A row exists only once both objects are durably stored.
CREATE TABLE volumes (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,     -- 64 hex digits, random
    size        INTEGER NOT NULL,         -- bytes of the volume object (check compares it)
    block_count INTEGER NOT NULL
);

-- Every stored block: its keyed id and where its ciphertext lies. One row per id: a block that
-- happens to be stored twice (after a crash) keeps the first place recorded.
CREATE TABLE blocks (
    hash          BLOB PRIMARY KEY,       -- keyed BLAKE3 of the plaintext (32 bytes)
    volume        INTEGER NOT NULL REFERENCES volumes(id),
    offset        INTEGER NOT NULL,       -- byte offset of the ciphertext in the volume
    stored_length INTEGER NOT NULL,       -- ciphertext length: one range read fetches it
    plain_length  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX blocks_by_volume ON blocks(volume);

-- File contents, shared by every version (and hard link) with the same layout.
CREATE TABLE contents (
    id      INTEGER PRIMARY KEY,
    layout  BLOB NOT NULL UNIQUE,         -- BLAKE3 of `extents`: equal layouts share a row
    hash    BLOB NOT NULL,                -- keyed BLAKE3 of the whole content, checked on restore
    size    INTEGER NOT NULL,
    extents BLOB NOT NULL                 -- packed (block id, length) pairs; an all-zero id is a hole
    -- (v3 adds `stored`, below)
);

-- Backup versions (one per versions/<name> object).
CREATE TABLE versions (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,     -- 64 hex digits; users see a prefix
    time_ns     INTEGER NOT NULL,         -- when the backup started (UTC, ns since the epoch)
    host        TEXT NOT NULL,
    paths       TEXT NOT NULL,            -- JSON list of the absolute paths backed up
    tags        TEXT NOT NULL,            -- JSON list
    file_count  INTEGER NOT NULL,
    total_size  INTEGER NOT NULL,         -- bytes of regular file content in the version
    bytes_added INTEGER NOT NULL          -- bytes this backup stored after dedup and compression
);

-- The file tree of every version. Node 1 is the version's root directory ("/"); a node's
-- parent has a smaller id (0 for the root). The mount looks names up, lists directories
-- (ordered by name, resumable) and reads files through the indexes below.
CREATE TABLE nodes (
    version  INTEGER NOT NULL REFERENCES versions(id),
    id       INTEGER NOT NULL,
    parent   INTEGER NOT NULL,
    name     BLOB NOT NULL,               -- raw bytes: names need not be UTF-8
    type     TEXT NOT NULL,               -- f file, d dir, l symlink, p fifo, c/b char/block device
    mode     INTEGER NOT NULL,            -- st_mode (type and permission bits)
    uid      INTEGER NOT NULL,
    gid      INTEGER NOT NULL,
    user     TEXT,                        -- owner names at backup time (NULL when unknown)
    grp      TEXT,
    mtime_ns INTEGER NOT NULL,            -- times: ns since the epoch (v4: see `catalog_time`)
    atime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,            -- source ctime: change detection only
    size     INTEGER NOT NULL,
    ino      INTEGER NOT NULL,            -- source inode and device: change detection, hard links
    dev      INTEGER NOT NULL,
    nlink    INTEGER NOT NULL,
    rdev     INTEGER NOT NULL,
    target   BLOB,                        -- symlink target, verbatim
    xattrs   BLOB,                        -- msgpack map name -> value, NULL when none
    content  INTEGER REFERENCES contents(id),   -- regular files only
    PRIMARY KEY (version, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX nodes_by_name ON nodes(version, parent, name);
"""

# v2: the mount gives every name of a hard-linked file one inode (the smallest node id of its
# (dev, ino) group), found through this partial index.
SCHEMA_V2 = """
CREATE INDEX nodes_by_source_inode ON nodes(version, dev, ino) WHERE nlink > 1;
"""

# v3: bytes in a content's data extents (its size less holes), for the mount's st_blocks without
# reading the extents. Existing rows are filled in from their extents.
SCHEMA_V3 = """
ALTER TABLE contents ADD COLUMN stored INTEGER NOT NULL DEFAULT -1;
"""


def _fill_stored(db) -> None:
    from ..codec.wire import HOLE_ID, unpack_extents
    rows = db.execute("SELECT id, extents FROM contents WHERE stored = -1").fetchall()
    db.executemany("UPDATE contents SET stored=? WHERE id=?",
                   [(sum(n for bid, n in unpack_extents(extents) if bid != HOLE_ID), cid) for cid, extents in rows])


# v4: other places of blocks already recorded elsewhere. A volume recorded while another one holds
# its blocks (another machine's prune copied them into it and has not yet deleted the old one) adds
# its places here; when a volume is forgotten, the blocks it held move to a spare place, so they are
# never left recorded nowhere while a volume still holds them.
SCHEMA_V4 = """
CREATE TABLE spare_blocks (
    hash          BLOB NOT NULL,
    volume        INTEGER NOT NULL REFERENCES volumes(id),
    offset        INTEGER NOT NULL,
    stored_length INTEGER NOT NULL,
    plain_length  INTEGER NOT NULL,
    PRIMARY KEY (hash, volume)
) WITHOUT ROWID;
CREATE INDEX spare_blocks_by_volume ON spare_blocks(volume);
"""

# v5: a node's time outside SQLite's integers (before 1677 or after 2262) is stored as a BLOB
# (`catalog_time`). No row changes: every time recorded before fitted. The step only keeps an older
# fsbackup, which would take such a BLOB for a number, from opening the index.
SCHEMA_V5 = """
-- nodes.mtime_ns, atime_ns and ctime_ns may hold a BLOB: the time's decimal digits
"""


# v6: this machine's memory of versions that vanished from the repository without a record that
# they were forgotten (forgotten/<name>): deleted behind fsbackup's back, or lost. Kept across
# rebuilds (a rebuild reads only the remote, which no longer tells), until the user accepts it.
SCHEMA_V6 = """
CREATE TABLE vanished_versions (
    name       TEXT PRIMARY KEY,          -- the version object's name
    time_ns    INTEGER,                   -- when that version was made (NULL when unknown)
    noticed_ns INTEGER NOT NULL           -- when this machine noticed
);
"""

# v7: for the mount's per-file speed. A read that misses fetches the blocks lying after its own in
# the same volume with one range read (the files of a directory were stored side by side, and are
# read in the same order): `blocks_by_place` finds them without reading the table (it holds every
# column that query needs: a run's 256 rows cost no random page reads), and serves the by-volume
# lookups `blocks_by_volume` served. An xattr request (two per entry of `ls -l`) is answered without a
# query in a version where `nodes_with_xattrs` finds no node with any.
SCHEMA_V7 = """
DROP INDEX blocks_by_volume;
CREATE INDEX blocks_by_place ON blocks(volume, offset, stored_length, plain_length);
CREATE INDEX nodes_with_xattrs ON nodes(version) WHERE xattrs IS NOT NULL;
"""

# v8: choosing versions (docs/machines.md). A version's description (its header's, NULL when it has
# none); the tag records of the repository (tags/<name>, docs/format.md "Tag records"), mirrored as
# listed: a version's tags are those of its newest record, else its header's (`versions.tags`
# stays the header's); and `versions_by_host`, where 'latest' (the newest version of a host) is
# the last entry of that host's range.
SCHEMA_V8 = """
ALTER TABLE versions ADD COLUMN description TEXT;
CREATE TABLE tag_records (
    name       TEXT PRIMARY KEY,          -- the record's object id (64 hex digits)
    version    TEXT NOT NULL,             -- the name of the version it tags (which may not be recorded)
    generation INTEGER NOT NULL,          -- the newest record of a version has the largest
    time_ns    INTEGER NOT NULL,          -- (generation, time_ns, name) orders a version's records
    tags       TEXT NOT NULL              -- JSON list: the version's whole set of tags
);
CREATE INDEX tag_records_by_version ON tag_records(version, generation, time_ns, name);
CREATE INDEX versions_by_host ON versions(host, time_ns, name);
"""

# Each step is SQL, or SQL and a function that finishes the step inside the same transaction.
MIGRATIONS = [(SCHEMA_V1, None), (SCHEMA_V2, None), (SCHEMA_V3, _fill_stored), (SCHEMA_V4, None),
              (SCHEMA_V5, None), (SCHEMA_V6, None), (SCHEMA_V7, None), (SCHEMA_V8, None)]

_INT64_MIN, _INT64_MAX = -2**63, 2**63 - 1


def catalog_time(ns: int) -> int | bytes:
    """A time (ns since the epoch, any size the kernel can give: signed 64-bit seconds) as the
    nodes table holds it: an INTEGER when it fits one, else a BLOB of its decimal digits (a
    BLOB, because SQLite would turn a TEXT too long for an INTEGER column into an inexact REAL)."""
    return ns if _INT64_MIN <= ns <= _INT64_MAX else str(ns).encode()


def node_time(value: int | bytes) -> int:
    """The time `catalog_time` stored."""
    return value if type(value) is int else int(value)


