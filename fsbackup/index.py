"""The local index's connection, now `fsbackup.catalog.index`: kept so that the command line's
imports hold until it imports from the catalog."""
from .catalog.index import Index
from .catalog.schema import MIGRATIONS, index_time, node_time

__all__ = ["MIGRATIONS", "Index", "index_time", "node_time"]
