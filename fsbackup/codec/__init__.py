"""Pure codecs, no I/O: what the repository stores and how it is named (docs/format.md).

    wire.py      blocks, volumes and their tables, index and version objects, extents
    crypto.py    keys, key derivation, AEAD, keyed block ids and content hashes
    chunker.py   FastCDC cut points
    names.py     remote object names both ways: kind + id -> name, name -> kind + id

Both the repository and the catalog stand on them; they import nothing of fsbackup but errors.
"""
