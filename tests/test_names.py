"""Object names, both ways (fsbackup/codec/names.py): every kind round-trips, anything else is refused."""
from __future__ import annotations

import pytest

from fsbackup.codec.names import CONFIG, Kind, object_name, parse_object_name

ID = "ab" + "0123456789abcdef" * 3 + "0123456789abcd"


def test_every_kind_round_trips():
    assert object_name(Kind.VOLUME, ID) == f"data/ab/{ID}"
    assert object_name(Kind.INDEX, ID) == f"index/{ID}"
    for kind in Kind:
        name = object_name(kind, ID)
        assert name.startswith(kind.folder) and parse_object_name(name) == (kind, ID)


@pytest.mark.parametrize("name", [
    CONFIG, "", "data/", f"data/{ID}", f"data/cd/{ID}", f"data/ab/ab/{ID}", f"index/{ID.upper()}",
    f"index/{ID[:-1]}", f"index/{ID}0", f"index/.tmp-{ID[:59]}", f"versions/{ID}/x", f"snapshots/{ID}",
    f"/index/{ID}", "data/zz/notes.txt", f"keys/{ID[:-1]}g",
])
def test_anything_else_is_refused(name):
    with pytest.raises(ValueError):
        parse_object_name(name)


@pytest.mark.parametrize("bad_id", ["", "x", ID[:-1], ID.upper(), "../" + ID[3:], ID[:-1] + "/"])
def test_a_name_is_built_only_from_an_id(bad_id):
    with pytest.raises(ValueError):
        object_name(Kind.VERSION, bad_id)
