"""The SQLite history's log: what an append is written as, and the segment files it goes to.

Owns the record format (one JSON array per line, see `Op`) and `HistoryLog`, the append-only
segment files `<db>.history-log/<n>.jsonl` of one history. `HistoryLog.write` puts a batch's
lines in the open segment with one write() on the caller's thread, which is what makes an
append durable (the store's docstring says against what); a segment is closed after
SEGMENT_BYTES and deleted once the index holds everything in it (`release`). Reading a segment
back skips a torn or damaged line: a write cut short by a crash, so never acknowledged.

It knows nothing of SQLite: `history_index` applies these records to the index.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import orjson

from parley import logs
from parley.publication import (
    NO_EXTRAS,
    Publication,
    Publisher,
    StreamPosition,
    extras_of,
)

# Logged operations, as JSON arrays (tuples in memory, the same to the indexer):
#   ("E", app_id, channel, epoch, seq, ts, expires_ms, id, event, data, publisher, user_id,
#    idempotency_key, max_count, max_age_ms[, extras])          an appended publication
#   ("c", app_id, channel, epoch, max_count, max_age_ms)        a channel's first epoch
#   ("d", app_id, channel, new_epoch)                           its history deleted
# "E" holds `data`, `publisher` and `extras` (only when there are any) as JSON values, written
# from the bytes the node encoded once per message; `user_id` is the publisher's, not read but
# kept where it is: the index holds these lines as they were logged, so the fields never move.
# `entry_line` writes an "E" record and `publication_of` reads one: the fields by name.
Op = tuple[Any, ...]
Logged = tuple[Op, bytes]  # an operation and its line in the log (JSON, no newline)
KINDS = ("E", "c", "d")
# the fields of an entry record
KIND: Final = 0
APP_ID: Final = 1
CHANNEL: Final = 2
EPOCH: Final = 3
SEQ: Final = 4
TS: Final = 5
EXPIRES: Final = 6
ID: Final = 7
EVENT: Final = 8
DATA: Final = 9
PUBLISHER: Final = 10
IDEMPOTENCY_KEY: Final = 12
MAX_COUNT: Final = 13
MAX_AGE_MS: Final = 14
EXTRAS: Final = 15  # absent when there are none

SEGMENT_BYTES = 16 * 1024 * 1024  # a new log segment after this many bytes


def entry_line(
    app_id: str, publication: Publication, expires_ms: int, max_count: int, max_age_ms: int
) -> bytes:
    """The log line of an appended publication: its data, publisher and extras embedded as the
    JSON already encoded."""
    fragment = orjson.Fragment
    position = publication.position
    publisher = publication.publisher
    record: tuple[Any, ...] = (
        "E",
        app_id,
        publication.channel,
        position.epoch,
        position.offset,
        publication.ts,
        expires_ms,
        publication.id,
        publication.event,
        fragment(publication.data_bytes()),
        fragment(publisher.json()),
        publisher.user_id,
        publication.idempotency_key,
        max_count,
        max_age_ms,
    )
    if publication.extras:
        record += (publication.extras,)
    return orjson.dumps(record)


def publication_of(op: Sequence[Any], epoch: str) -> Publication:
    """The publication of a decoded entry record."""
    return Publication(
        op[CHANNEL],
        op[EVENT],
        op[DATA],
        Publisher.from_wire(op[PUBLISHER]),
        StreamPosition(op[SEQ], epoch),
        op[TS],
        op[ID],
        extras_of(op[EXTRAS]) if len(op) > EXTRAS else NO_EXTRAS,
    )


def log_dir_for(path: str | Path) -> Path:
    """Where the history log of the database at `path` lives."""
    return Path(str(path) + ".history-log")


class HistoryLog:
    """The segment files of one history, written by one process.

    `logged` counts the operations written since `open`; a closed segment is remembered with
    the count it ends at, so `release(indexed)` deletes exactly those the index holds."""

    def __init__(self, directory: Path, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self.logged = 0
        self._segment_bytes = segment_bytes
        self._fd: int | None = None
        self._number = 0
        self._bytes = 0  # in the open segment
        self._closed: deque[tuple[int, Path]] = deque()  # (logged at its end, its path)

    def segments(self) -> list[Path]:
        """The segment files there are, oldest first."""
        found = [p for p in self.directory.glob("*.jsonl") if p.stem.isdigit()]
        return sorted(found, key=lambda p: int(p.stem))

    @staticmethod
    def read(path: Path) -> list[Logged]:
        """The operations of a segment; a torn or damaged line (a write cut short by a crash,
        never acknowledged) is skipped."""
        ops: list[Logged] = []
        for line in path.read_bytes().split(b"\n"):
            if not line:
                continue
            try:
                op = orjson.loads(line)
            except orjson.JSONDecodeError:
                logs.warning("history log line skipped", segment=path.name, bytes=len(line))
                continue
            if isinstance(op, list) and op and op[0] in KINDS:
                ops.append((tuple(op), line))
        return ops

    def open(self, after: Sequence[Path]) -> None:
        """Start writing a new segment, numbered after `after` (the segments just replayed)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._number = max((int(p.stem) for p in after), default=-1) + 1
        self._open_segment()

    def _open_segment(self) -> None:
        path = self.directory / f"{self._number:08d}.jsonl"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._bytes = 0

    def write(self, data: bytes, count: int) -> None:
        """Make `count` operations durable: their lines (`data`, each ending in a newline) in
        one write(). Raises on an I/O error, having counted nothing."""
        if self._fd is None:
            raise RuntimeError("history store is not running")
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._bytes += len(data)
        self.logged += count
        if self._bytes >= self._segment_bytes:
            os.close(self._fd)
            self._closed.append((self.logged, self.directory / f"{self._number:08d}.jsonl"))
            self._number += 1
            self._open_segment()

    def release(self, indexed: int) -> None:
        """Delete the closed segments whose operations are all among the first `indexed`."""
        while self._closed and self._closed[0][0] <= indexed:
            _, path = self._closed.popleft()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def close(self, *, indexed: bool) -> None:
        """Stop writing; when `indexed` (everything logged is in the index), delete every
        segment, since none is needed any more."""
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
        if indexed:
            for segment in self.segments():
                segment.unlink()
