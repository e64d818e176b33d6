"""The repository: the only door to the storage (the only package that imports backends/).

    repository.py   the facade: opening and creating, keys, storing and fetching objects (encrypted and
                    authenticated), keeping the catalog in step with what is stored, rebuilding it
    volumes.py      writing a volume and its index object (backup and prune fill them)
    blockcache.py   decoded blocks in memory, each loaded once however many readers want it
    fetching.py     a file's blocks fetched ahead of its reader (restore, dump)
    locks.py        repository locks: none, shared, append, exclusive

The layers above import the facade's names from here.
"""
from ..codec.names import Kind, index_object, parse_object_name, tag_object, version_object, volume_object
from .repository import REREAD_FILES, FetchedBlock, Repository, block_runs, open_storage, unfinished_forget

__all__ = ["REREAD_FILES", "FetchedBlock", "Kind", "Repository", "block_runs", "index_object", "open_storage",
           "parse_object_name", "tag_object", "unfinished_forget", "version_object", "volume_object"]
