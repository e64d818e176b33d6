"""The catalog: the local index (a SQLite file on this machine, caching what the repository
holds) behind named functions. No SQL runs and no module imports apsw outside this package
(tests/test_layers.py).

The package is cut by what the rows are about, so that a caller's imports say which part of
the catalog it uses:

  schema.py    the one commented schema and its ordered migrations; how nodes hold times
  connection.py `Catalog`: the connection (opening, WAL, the local index lock, transactions, the
               facts in `meta`, SQLite's errors as domain errors); only this package runs its SQL
  versions.py  the versions: listing, choosing (`VersionFilter`, 'latest') and grouping them,
               recording a version's tree and its contents, forgetting one, the tag records,
               versions that vanished without a forget
  tree.py      one version's file tree (`VersionTree`: lookups, listings, a file's extents, a
               node's path) and the mount's questions about nodes
  blocks.py    volumes and where blocks lie (`BlockLocation`), with their spare places:
               recording and forgetting volumes, looking blocks up
  search.py    questions across versions: `find` (entries by name, place, time, size) and
               `diff` (what changed between two versions), each one statement
  usage.py     what uses which blocks: the contents files refer to, prune's marks of the live
               blocks, the files damaged blocks affect
  rebuild.py   writing the whole catalog afresh from the repository's objects (`Refill`)
  history.py   what one path held across all versions (the mount's history/ folders)

Every function takes the `Catalog` to read through (one connection per thread: the mount's
threads each open their own) and returns named types, not bare rows.
"""
from .blocks import BlockLocation
from .connection import Catalog

__all__ = ["BlockLocation", "Catalog"]
