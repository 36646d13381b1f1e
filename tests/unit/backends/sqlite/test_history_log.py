"""The SQLite history's log: the record an append is written as, and the segment files."""

from __future__ import annotations

from pathlib import Path

import orjson

from parley.backends.sqlite.history_log import HistoryLog, entry_line, publication_of
from parley.publication import Publication, Publisher, StreamPosition


def test_an_entry_line_keeps_the_format_the_index_already_holds() -> None:
    """Chunks in existing databases hold these lines as they were logged: the fields never
    move, and `publication_of` gives back the publication that was logged."""
    publication = Publication(
        "room",
        "e",
        {"i": 0},
        Publisher("user", "ann"),
        StreamPosition(1, "ep0ch"),
        1_700_000_000_000,
        "id-1",
        idempotency_key="k0",
        extras={"sig": "s0"},
    )
    line = entry_line("app", publication, 1_700_604_800_000, 1000, 604_800_000)
    assert line == (
        b'["E","app","room","ep0ch",1,1700000000000,1700604800000,"id-1","e",{"i":0},'
        b'{"type":"user","id":"ann"},"ann","k0",1000,604800000,{"sig":"s0"}]'
    )
    assert publication_of(orjson.loads(line), "ep0ch") == publication.kept()
    plain = Publication("room", "e", "x", Publisher("server", "1"), StreamPosition(2, "ep0ch"))
    plain_line = entry_line("app", plain, 0, 1, 1)
    assert len(orjson.loads(plain_line)) == 15  # no extras: no 16th field
    assert publication_of(orjson.loads(plain_line), "ep0ch").extras == {}


def test_segments_roll_over_and_go_once_the_index_holds_them(tmp_path: Path) -> None:
    log = HistoryLog(tmp_path / "log", segment_bytes=10)
    log.open(after=[])
    log.write(b'["c",1]\n', 1)  # 8 bytes: the segment stays open
    log.write(b'["c",2]\n["c",3]\n', 2)  # past 10 bytes: closed, a new one opened
    log.write(b'["c",4]\n["c",5]\n', 2)
    assert log.logged == 5
    assert [p.name for p in log.segments()] == [
        "00000000.jsonl",
        "00000001.jsonl",
        "00000002.jsonl",
    ]
    log.release(2)  # the first segment ends at the third operation: kept
    assert len(log.segments()) == 3
    log.release(3)
    assert [p.name for p in log.segments()] == ["00000001.jsonl", "00000002.jsonl"]
    log.release(5)  # the open segment is never released
    assert [p.name for p in log.segments()] == ["00000002.jsonl"]
    log.close(indexed=False)
    assert [p.name for p in log.segments()] == ["00000002.jsonl"]

    again = HistoryLog(tmp_path / "log")
    replayed = again.segments()
    again.open(after=replayed)  # numbered after what was there
    assert [p.name for p in again.segments()] == ["00000002.jsonl", "00000003.jsonl"]
    again.close(indexed=True)
    assert again.segments() == []


def test_reading_a_segment_skips_what_a_crash_tore_or_damaged(tmp_path: Path) -> None:
    segment = tmp_path / "00000000.jsonl"
    segment.write_bytes(
        b'["c","1","a","e1",10,60]\n'
        b"not json\n"
        b'{"an": "object"}\n'
        b'["x","unknown kind"]\n'
        b'["d","1","a","e2"]\n'
        b'["d","1","b",'  # the last write, cut short: never acknowledged
    )
    assert HistoryLog.read(segment) == [
        (("c", "1", "a", "e1", 10, 60), b'["c","1","a","e1",10,60]'),
        (("d", "1", "a", "e2"), b'["d","1","a","e2"]'),
    ]
