"""Names of repository objects, both ways: the one place that builds and parses them
(docs/format.md, "Objects").

Every object but `config` is of a `Kind` and has a 64-hex-digit id:

  keys/<id>  data/<id[:2]>/<id>  index/<id>  versions/<id>  locks/<id>  forgotten/<id>  tags/<id>

`object_name(kind, id)` builds a name and `parse_object_name(name)` gives (kind, id) back; each
refuses (ValueError) anything that the other would not produce, so a stray file in a repository
folder is never taken for an object, nor an id for a path.
"""
from __future__ import annotations

import enum

CONFIG = "config"          # the one object that has no kind and no id
ID_LENGTH = 64
_HEX = frozenset("0123456789abcdef")


class Kind(enum.Enum):
    """A kind of object; its value is the folder that holds the objects of that kind."""
    KEY = "keys"
    VOLUME = "data"
    INDEX = "index"
    VERSION = "versions"
    LOCK = "locks"
    FORGOTTEN = "forgotten"
    TAGS = "tags"

    @property
    def folder(self) -> str:
        """The prefix every name of this kind starts with ('data/'): what to list."""
        return self.value + "/"


_BY_FOLDER = {kind.value: kind for kind in Kind}


def is_object_id(text: str) -> bool:
    """Whether `text` is an object id: 64 lowercase hex digits."""
    return len(text) == ID_LENGTH and _HEX.issuperset(text)


def object_name(kind: Kind, object_id: str) -> str:
    """The name of the object of `kind` with id `object_id`; ValueError when that is no id."""
    if not is_object_id(object_id):
        raise ValueError(f"not an object id: {object_id!r}")
    if kind is Kind.VOLUME:            # volumes fan out over 256 folders: no folder grows huge
        return f"{kind.value}/{object_id[:2]}/{object_id}"
    return f"{kind.value}/{object_id}"


def parse_object_name(name: str) -> tuple[Kind, str]:
    """(kind, id) of an object's name; ValueError for any name `object_name` does not make
    (config, temporaries, a stray file, a volume in the wrong folder)."""
    folder, _, object_id = name.rpartition("/")
    kind = _BY_FOLDER.get(folder.split("/", 1)[0])
    if kind is None or not is_object_id(object_id) or object_name(kind, object_id) != name:
        raise ValueError(f"not the name of a repository object: {name!r}")
    return kind, object_id


def volume_object(object_id: str) -> str:
    return object_name(Kind.VOLUME, object_id)


def index_object(object_id: str) -> str:
    return object_name(Kind.INDEX, object_id)


def version_object(object_id: str) -> str:
    return object_name(Kind.VERSION, object_id)


def lock_object(object_id: str) -> str:
    return object_name(Kind.LOCK, object_id)


def forgotten_object(object_id: str) -> str:
    return object_name(Kind.FORGOTTEN, object_id)


def tag_object(object_id: str) -> str:
    return object_name(Kind.TAGS, object_id)


def key_object(object_id: str) -> str:
    return object_name(Kind.KEY, object_id)
