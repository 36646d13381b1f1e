"""The per-channel history role: what a store must promise (`HistoryStore`), the values it
trades in, and the group commit that the durable stores share.

It knows nothing of the wire, the hub or sessions; callers validate user input before asking.

Theory of operation. Every channel has a row-like state: an epoch (a random string) and the
last offset handed out. An append takes the next offset, and the entry is acknowledged only once
it is durable, so whatever a subscriber was sent is in history. The epoch changes only when the
channel's history is deleted; offsets then restart at 1, and a client holding a position in the
old epoch learns that it cannot recover. Retention (count and age) is remembered per channel from
the latest append, and reads never show an entry beyond it, whether or not it is physically gone.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import itertools
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, TypeVar

import orjson

from parley import logs
from parley.publication import (
    Publication,
    Publisher,
    StreamPosition,
    extras_of,
)

Direction = Literal["forward", "backward"]

IDEMPOTENCY_WINDOW_S = 300.0
IDEMPOTENCY_WINDOW_MS = int(IDEMPOTENCY_WINDOW_S * 1000)
MAX_PAGE = 1000
# Stands for "no limit" in SQL columns, so queries need no NULL branches; fits in a signed
# 64-bit integer even when subtracted from a millisecond timestamp.
UNLIMITED = 2**62


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a read; `next` is the offset to pass as `after` (forward) or `before`
    (backward) to continue, None when there is nothing further in that direction."""

    channel: str
    epoch: str
    publications: list[Publication]
    next: int | None


@dataclass(frozen=True, slots=True)
class Retention:
    """How much of a channel's history is kept; None means no limit on that axis."""

    max_count: int | None = 1000
    max_age_s: float | None = 7 * 86400
    # (max_count, max_age_ms) as stored, UNLIMITED standing for None: asked per append
    count_and_age_ms: tuple[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_count is not None and self.max_count < 1:
            raise ValueError("Retention.max_count must be at least 1 (or None)")
        if self.max_age_s is not None and self.max_age_s <= 0:
            raise ValueError("Retention.max_age_s must be positive (or None)")
        object.__setattr__(
            self, "count_and_age_ms", (self.count_or_unlimited, self.age_ms_or_unlimited)
        )

    @property
    def count_or_unlimited(self) -> int:
        return UNLIMITED if self.max_count is None else self.max_count

    @property
    def age_ms_or_unlimited(self) -> int:
        return UNLIMITED if self.max_age_s is None else int(self.max_age_s * 1000)


# init=False: the __init__ below is compiled by mypyc; a dataclass-made one is not (5x slower)
@dataclass(slots=True, init=False)  # not frozen: built per message, and frozen __init__ is slower
class Append:
    """One append of `append_many`: a publication for a channel of an app, and the channel's
    retention from now on."""

    app_id: str
    publication: Publication
    retention: Retention

    def __init__(self, app_id: str, publication: Publication, retention: Retention) -> None:
        self.app_id = app_id
        self.publication = publication
        self.retention = retention


# init=False: the __init__ below is compiled by mypyc; a dataclass-made one is not (5x slower)
@dataclass(slots=True, init=False)  # not frozen: built per message, and frozen __init__ is slower
class Stored:
    """What an append gives back: the publication as stored, stamped with its position, ts and
    id; or, when `duplicate`, the publication first stored under the same idempotency key (it
    was stored and delivered before, so the caller must not fan it out again)."""

    publication: Publication
    duplicate: bool

    def __init__(self, publication: Publication, duplicate: bool = False) -> None:
        self.publication = publication
        self.duplicate = duplicate


class HistoryStore(abc.ABC):
    """Append-only, per-channel history with (offset, epoch) positions.

    Channels are keyed by (app_id, channel). Every method may be called concurrently from many
    tasks. Implementations: `MemoryHistoryStore`, `SqliteHistoryStore`, `PostgresHistoryStore`.
    """

    engine: ClassVar[str]  # as /readyz names it: "memory", "sqlite", "postgres"

    @abc.abstractmethod
    async def start(self) -> None:
        """Start background work (and any connections of its own). A durable store's tables
        are its technology's migrations', applied by the owner of the database handle."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish every append already submitted, then release everything.

        Nothing acknowledged is ever lost; appends submitted after `close` raise RuntimeError.
        """

    @abc.abstractmethod
    async def append(self, app_id: str, publication: Publication, retention: Retention) -> Stored:
        """Store `publication` on its channel with the channel's next offset; durable when it
        returns. The store stamps the publication itself (`position`, `ts`, `id`), so that the
        caller makes its frame with what it has already encoded, and keeps a copy of its own
        (`Publication.kept`).

        Concurrent appends to one channel get strictly increasing, gapless offsets in the order
        they were called, and return in that order. Many appends share one commit. If
        `publication.idempotency_key` was seen on this channel (in this epoch) within 5
        minutes, the first publication is returned again with `duplicate=True` and nothing is
        stored. `retention` becomes the channel's retention; publications beyond it are trimmed
        or hidden from then on. A cancelled append may still be stored.
        """

    async def append_many(self, items: Sequence[Append]) -> list[Stored]:
        """Several appends, in order, with one await: the same result as calling `append` for
        each in turn, so a caller that fans out in batches pays for one wake-up, not one per
        publication."""
        return list(
            await asyncio.gather(
                *(self.append(i.app_id, i.publication, i.retention) for i in items)
            )
        )

    @abc.abstractmethod
    async def read(
        self,
        app_id: str,
        channel: str,
        *,
        after: int | None = None,
        before: int | None = None,
        limit: int = 100,
        direction: Direction = "forward",
    ) -> Page:
        """A page of publications with `after < offset < before` (both exclusive, both
        optional), each with its extras (not its idempotency key).

        Forward pages run oldest first from just after `after` (or the oldest kept entry);
        backward pages run newest first from just before `before` (or the newest). `limit` is
        1..1000 (ValueError otherwise). A channel never written reads as empty, with its epoch.
        """

    @abc.abstractmethod
    async def position(self, app_id: str, channel: str) -> StreamPosition:
        """The last offset handed out (0 if none) and the epoch. Asking fixes the epoch of a
        channel never written."""

    @abc.abstractmethod
    async def delete(self, app_id: str, channel: str) -> str:
        """Remove the channel's history (entries and idempotency keys) and return its new
        epoch, which differs from the old one; offsets restart at 1."""

    @abc.abstractmethod
    async def since(
        self, app_id: str, channel: str, position: StreamPosition, limit: int
    ) -> list[Publication] | None:
        """Recovery: every publication after `position`, in order (empty when nothing was
        missed).

        None when it cannot be done: its epoch is not the channel's epoch, its offset is ahead
        of the channel, the publication at offset + 1 is no longer kept, or more than `limit`
        would be needed.
        """

    @abc.abstractmethod
    async def check(self) -> None:
        """Readiness: one real round trip to the database (none for memory); raise, saying
        why, when it fails."""

    @abc.abstractmethod
    async def sweep(self) -> int:
        """Physically remove entries past their age and expired idempotency keys; return how
        many rows went. Stores call it periodically themselves; reads never depend on it."""


def new_epoch(old: str | None = None) -> str:
    """A fresh random epoch, never equal to `old`."""
    while True:
        epoch = secrets.token_urlsafe(6)
        if epoch != old:
            return epoch


# Ids count up from a random 64-bit prefix per process (ids of different processes never
# collide) over a 64-bit counter started at 2**60, so that every id is hex() of one int with
# 32 digits: no formatting per message.
_IDS = itertools.count((secrets.randbits(64) | 1 << 63) << 64 | 1 << 60)


def new_message_id() -> str:
    """A unique message id (32 hex digits) without a system call per message."""
    return hex(next(_IDS))[2:]


def check_read_args(after: int | None, before: int | None, limit: int, direction: str) -> None:
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    if direction not in ("forward", "backward"):
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r}")
    if after is not None and after < 0:
        raise ValueError("after must not be negative")
    if before is not None and before < 0:
        raise ValueError("before must not be negative")


def page_of(channel: str, epoch: str, rows: list[Publication], limit: int) -> Page:
    """Build a page from up to `limit + 1` publications fetched in the page's direction."""
    if len(rows) > limit:
        rows = rows[:limit]
        return Page(channel, epoch, rows, rows[-1].position.offset)
    return Page(channel, epoch, rows, None)


def recovered(rows: Sequence[Publication], offset: int, last: int) -> list[Publication] | None:
    """The answer to `since` given the kept publications after `offset` (in order, up to
    `last`): all of them when they are exactly offset+1..last, None when any is missing."""
    if len(rows) != last - offset or (rows and rows[0].position.offset != offset + 1):
        return None
    return list(rows)


def publication_from_row(channel: str, epoch: str, row: Sequence[Any]) -> Publication:
    """A publication from the columns seq, ts, id, event, data, publisher, extras."""
    seq, ts, id_, event, data, publisher, extras = row
    return Publication(
        channel,
        event,
        orjson.loads(data),
        Publisher.from_wire(orjson.loads(publisher)),
        StreamPosition(seq, epoch),
        ts,
        id_,
        extras_of(extras),
    )


# -- shared by the durable stores ---------------------------------------------------------------


# init=False: the __init__ below is compiled by mypyc; a dataclass-made one is not (5x slower)
@dataclass(slots=True, init=False)  # not frozen: built per message, and frozen __init__ is slower
class PendingAppend:
    """An append as queued for a batch: named and serialized on the caller's task, so a
    publication that is not JSON fails its own caller and never the batch. Its `ts` and `id`
    go to the publication once the batch stores it."""

    app_id: str
    publication: Publication
    retention: Retention
    ts: int
    id: str
    data_json: str
    publisher_json: str
    extras_json: str | None

    def __init__(
        self, app_id: str, publication: Publication, retention: Retention, now_ms: int
    ) -> None:
        self.app_id = app_id
        self.publication = publication
        self.retention = retention
        self.ts = now_ms
        self.id = new_message_id()
        self.data_json = publication.data_bytes().decode()
        self.publisher_json = publication.publisher.json().decode()
        self.extras_json = publication.extras_json()

    @property
    def expires_ms(self) -> int:
        return self.ts + self.retention.age_ms_or_unlimited


@dataclass(slots=True)
class ChannelCursor:
    """A channel's state inside a batch's transaction, its row locked."""

    epoch: str
    last: int
    retention: Retention = field(default_factory=Retention)


ChannelKey = tuple[str, str]  # (app_id, channel)
IdempotencyKey = tuple[str, str, str]  # (app_id, channel, key)


@dataclass(slots=True)
class BatchPlan:
    """What one batch stores."""

    results: list[Stored]  # one per submitted append, in order
    stored: list[PendingAppend]  # the appends stored, in order, their publications stamped


def plan_batch(
    items: Sequence[PendingAppend],
    channels: dict[ChannelKey, ChannelCursor],
    firsts: dict[IdempotencyKey, Publication],
) -> BatchPlan:
    """Give each append its offset, in order, or its first publication when its idempotency
    key was seen within the window. `channels` (every channel of the batch, locked) and
    `firsts` (the stored publications of the batch's keys) are updated as the batch goes.
    Planning a batch again (after a rollback) stamps its publications again, alike."""
    plan = BatchPlan([], [])
    for item in items:
        publication = item.publication
        where = (item.app_id, publication.channel)
        cursor = channels[where]
        cursor.retention = item.retention
        key = publication.idempotency_key
        if key is not None:
            first = firsts.get((*where, key))
            if first is not None and first.ts >= item.ts - IDEMPOTENCY_WINDOW_MS:
                plan.results.append(Stored(first, True))
                continue
        cursor.last += 1
        publication.position = StreamPosition(cursor.last, cursor.epoch)
        publication.ts = item.ts
        publication.id = item.id
        plan.results.append(Stored(publication))
        plan.stored.append(item)
        if key is not None:
            firsts[(*where, key)] = publication
    return plan


T = TypeVar("T")
R = TypeVar("R")


class _Waiter(Generic[R]):
    """The caller of one `submit`/`submit_many`: one future for all of its items."""

    __slots__ = ("count", "future", "results")

    def __init__(self, future: asyncio.Future[list[R]], count: int) -> None:
        self.future = future
        self.results: list[R] = []
        self.count = count


class GroupCommit(Generic[T, R]):
    """Hands items submitted by many tasks to `commit` in batches, in submission order.

    There is no timer: while one batch is being committed the next one collects, so an idle
    store commits a lone append at once and a busy one commits up to `max_batch` per round.
    `commit` returns one result per item, in order; the submitters are woken in that order,
    each once (one future per call, not per item).
    """

    def __init__(
        self, commit: Callable[[list[T]], Awaitable[list[R]]], *, max_batch: int = 512
    ) -> None:
        self._commit = commit
        self._max_batch = max_batch
        self._pending: list[tuple[T, _Waiter[R]]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="parley-history-group-commit")

    async def submit(self, item: T) -> R:
        return (await self.submit_many((item,)))[0]

    async def submit_many(self, items: Sequence[T]) -> list[R]:
        """Submit several items at once, in order; their results in the same order."""
        if self._closing or self._task is None:
            raise RuntimeError("history store is not running")
        if not items:
            return []
        waiter = _Waiter[R](asyncio.get_running_loop().create_future(), len(items))
        self._pending.extend((item, waiter) for item in items)
        self._wake.set()
        return await waiter.future

    async def close(self) -> None:
        """Commit everything submitted so far, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                results = await self._commit([item for item, _ in batch])
            except asyncio.CancelledError:
                for _, waiter in batch + self._pending:
                    waiter.future.cancel()  # no submitter waits forever on a store torn down
                raise
            except Exception as exc:
                # The batch may or may not have been committed; each caller learns it failed.
                for _, waiter in batch:
                    if not waiter.future.done():
                        waiter.future.set_exception(exc)
                continue
            for (_, waiter), result in zip(batch, results, strict=True):
                waiter.results.append(result)
                if len(waiter.results) == waiter.count and not waiter.future.done():
                    waiter.future.set_result(waiter.results)


class SweepingHistoryStore(HistoryStore):
    """A durable store that removes expired rows itself, every `_sweep_interval_s`."""

    _clock: Callable[[], float]
    _sweep_interval_s: float
    _sweeper: asyncio.Task[None] | None

    def _start_sweeping(self) -> None:
        if self._sweep_interval_s > 0:
            self._sweeper = asyncio.create_task(self._sweep_loop(), name="parley-history-sweep")

    async def _stop_sweeping(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval_s)
            try:
                await self.sweep()
            except Exception:
                logs.error("history_sweep_failed", store=type(self).__name__)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)


class BatchedHistoryStore(SweepingHistoryStore):
    """The shared append path of the stores that commit in transactions (PostgreSQL): every
    append is stamped on the caller's task and handed to a `GroupCommit`, which commits what
    has collected in one transaction."""

    _commits: GroupCommit[PendingAppend, Stored] | None
    _max_batch: int

    def _start_batching(self) -> None:
        """Start the group commit and, if asked for, the periodic sweep (end of `start`)."""
        self._commits = GroupCommit(self._commit, max_batch=self._max_batch)
        self._commits.start()
        self._start_sweeping()

    async def _stop_batching(self) -> None:
        """Stop sweeping and commit everything submitted (start of `close`)."""
        await self._stop_sweeping()
        if self._commits is not None:
            await self._commits.close()
            self._commits = None

    @abc.abstractmethod
    async def _commit(self, items: list[PendingAppend]) -> list[Stored]:
        """Write one batch in one transaction; one result per item, in order."""

    async def append(self, app_id: str, publication: Publication, retention: Retention) -> Stored:
        return (await self.append_many((Append(app_id, publication, retention),)))[0]

    async def append_many(self, items: Sequence[Append]) -> list[Stored]:
        if self._commits is None:
            raise RuntimeError("history store is not running")
        now_ms = self._now_ms()
        return await self._commits.submit_many(
            [PendingAppend(i.app_id, i.publication, i.retention, now_ms) for i in items]
        )
