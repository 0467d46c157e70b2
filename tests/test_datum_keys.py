"""The join_on / group_by key each part of a datum carries, for the worker's
PACH_DATUM_<name>_JOIN_ON / _GROUP_BY (and that it changes neither id nor hash)."""

from __future__ import annotations

from dataclasses import replace

from shared.pipeline.datums import Datum, datum_id, plan_datums
from shared.pipeline.spec import GroupInput, JoinInput, PfsInput
from shared.storage.chunking import FileEntry, hash_bytes


def entry(data: bytes) -> FileEntry:
    return FileEntry(len(data), hash_bytes(data), ())


LABS = [
    ("/T1-PATID1-A.txt", entry(b"a")),
    ("/T2-PATID1-B.txt", entry(b"b")),
    ("/T3-PATID2-C.txt", entry(b"c")),
]


def keys(datum: Datum) -> list[tuple[str, str, str | None, str | None]]:
    return [(part.input, part.match, part.join_on, part.group_by) for part in datum.inputs]


def test_a_group_of_one_input_gives_one_datum_with_a_part_per_match_and_its_key() -> None:
    group = GroupInput((PfsInput("labresults", "labresults", "/*-PATID(*)-*.txt", group_by="$1"),))
    datums = plan_datums(group, {"labresults": LABS}, {"labresults": "c1"})
    by_key = sorted((keys(d) for d in datums), key=len)
    assert by_key == [
        [("labresults", "/T3-PATID2-C.txt", None, "2")],
        [
            ("labresults", "/T1-PATID1-A.txt", None, "1"),
            ("labresults", "/T2-PATID1-B.txt", None, "1"),
        ],
    ]


def test_joined_parts_carry_their_join_key() -> None:
    join = JoinInput(
        (
            PfsInput("readings", "readings", "/(*).csv", join_on="$1"),
            PfsInput("parts", "parts", "/(*).json", join_on="$1"),
        )
    )
    listings = {"readings": [("/7.csv", entry(b"r"))], "parts": [("/7.json", entry(b"p"))]}
    (datum,) = plan_datums(join, listings, {"readings": "c1", "parts": "c2"})
    assert keys(datum) == [("readings", "/7.csv", "7", None), ("parts", "/7.json", "7", None)]


def test_the_key_is_in_neither_the_id_nor_the_hash() -> None:
    group = GroupInput((PfsInput("labresults", "labresults", "/*-PATID(*)-*.txt", group_by="$1"),))
    for datum in plan_datums(group, {"labresults": LABS}, {"labresults": "c1"}):
        bare = Datum(datum.id, tuple(replace(p, group_by=None) for p in datum.inputs))
        assert bare.hash("t") == datum.hash("t")
        assert datum.id == datum_id([(p.input, p.repo, p.branch, p.match) for p in datum.inputs])
