"""The WebhookQueue contract, on memory, SQLite and PostgreSQL: jobs handed out oldest first and
one at a time per (app, url, channel), held by one claim until its lease runs out, retried
later, delivered, or dead-lettered (the newest kept) only by the claim that holds it now;
dispatchers on two processes claiming at once never get the same job; a durable queue outlives
the process.

Time is the store's clock, a FakeClock moved by the tests. PostgreSQL's queue is shared with
whatever else uses the database: what a test claims is filtered to its own app."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import ModuleType

import pytest

from parley.backends.memory import webhooks as memory_webhooks
from parley.backends.memory.webhooks import MemoryWebhookQueue
from parley.backends.sqlite import webhooks as sqlite_webhooks
from parley.backends.sqlite.webhooks import SqliteWebhookQueue
from parley.backends.webhooks import DeadWebhook, WebhookJob, WebhookQueue
from tests.support.stores import DURABLE_KINDS, StoreBackend, StoreKinds, new_app_id, store_fixture

URL = "https://hooks.example/parley"
OTHER_URL = "https://other.example/hook"
LEASE_MS = 30_000
EVENTS = '[{"name":"channel_occupied","channel":"room"}]'


@dataclass
class Backend(StoreBackend[WebhookQueue]):
    stores = StoreKinds(
        MemoryWebhookQueue,
        SqliteWebhookQueue,
        "parley.backends.postgres.webhooks:PostgresWebhookQueue",
    )
    tables = ("parley_webhooks", "parley_webhooks_dead")
    app_id: str = field(default_factory=new_app_id("w"))

    def module(self) -> ModuleType:
        """The module of this kind's queue (for its DEAD_KEEP_MAX)."""
        if self.kind == "memory":
            return memory_webhooks
        if self.kind == "sqlite":
            return sqlite_webhooks
        from parley.backends.postgres import webhooks

        return webhooks

    async def claim(self, store: WebhookQueue, limit: int = 100) -> list[WebhookJob]:
        """What `store` claims of this test's app (a shared PostgreSQL may hold others')."""
        return [j for j in await store.claim(limit, LEASE_MS) if j.app_id == self.app_id]


backend = store_fixture(Backend)
durable = store_fixture(Backend, DURABLE_KINDS)


def ids(jobs: list[WebhookJob]) -> list[int]:
    return [job.id for job in jobs]


def claims(jobs: list[WebhookJob]) -> dict[int, int]:
    """Each job's claim token, by job id (in claim order)."""
    return {job.id: job.claim for job in jobs}


async def test_a_queued_job_is_claimed_with_its_fields(backend: Backend) -> None:
    store, app = await backend.open(), backend.app_id
    now = store.now_ms()
    job_id = await store.enqueue(app, URL, "", EVENTS)
    assert await store.pending(app) == 1
    claim = now + LEASE_MS  # the token: claimed until then
    job = WebhookJob(job_id, app, URL, "", EVENTS, now, 0, None, claim=claim)
    assert await backend.claim(store) == [job]
    assert await store.pending(app) == 1  # claimed is still queued
    assert await store.pending(f"{app}-other") == 0


async def test_a_key_is_delivered_in_order_and_other_keys_meanwhile(backend: Backend) -> None:
    store, app = await backend.open(), backend.app_id
    first = await store.enqueue(app, URL, "room", EVENTS)
    second = await store.enqueue(app, URL, "room", EVENTS)
    lobby = await store.enqueue(app, URL, "lobby", EVENTS)
    elsewhere = await store.enqueue(app, OTHER_URL, "room", EVENTS)
    assert first < second < lobby < elsewhere
    held = claims(await backend.claim(store))
    assert list(held) == [first, lobby, elsewhere]
    assert await backend.claim(store) == []  # `second` waits for `first`
    assert await store.delivered(lobby, held[lobby])
    third = await store.enqueue(app, URL, "lobby", EVENTS)
    assert ids(await backend.claim(store)) == [third]
    assert await store.delivered(first, held[first])
    assert ids(await backend.claim(store)) == [second]


async def test_claim_takes_at_most_its_limit_oldest_first(backend: Backend) -> None:
    store, app = await backend.open(), backend.app_id
    queued = [await store.enqueue(app, URL, f"c{i}", EVENTS) for i in range(5)]
    if backend.kind == "postgres":  # others' jobs may come first: only the order is ours
        assert ids(await backend.claim(store)) == queued
        return
    assert ids(await store.claim(2, LEASE_MS)) == queued[:2]
    assert ids(await store.claim(10, LEASE_MS)) == queued[2:]


async def test_a_claimed_job_is_held_until_its_lease_runs_out(backend: Backend) -> None:
    store, app = await backend.open(), backend.app_id
    job_id = await store.enqueue(app, URL, "room", EVENTS)
    assert ids(await backend.claim(store)) == [job_id]
    backend.clock.advance(LEASE_MS / 1000 - 0.001)
    assert await backend.claim(store) == []
    backend.clock.advance(0.001)  # the dispatcher died: another may take it
    (again,) = await backend.claim(store)
    assert (again.id, again.attempts) == (job_id, 0)
    assert await backend.claim(store) == []  # held again, by the new claim


async def test_a_lease_that_ran_out_still_acts_until_another_claim(backend: Backend) -> None:
    store, app = await backend.open(), backend.app_id
    job_id = await store.enqueue(app, URL, "room", EVENTS)
    (job,) = await backend.claim(store)
    backend.clock.advance(LEASE_MS)  # slow, but nobody took it meanwhile
    assert await store.delivered(job_id, job.claim)
    assert await store.pending(app) == 0


async def test_a_claim_taken_over_after_its_lease_changes_nothing(backend: Backend) -> None:
    store, app = await backend.open(), backend.app_id
    job_id = await store.enqueue(app, URL, "room", EVENTS)
    younger = await store.enqueue(app, URL, "room", EVENTS)
    (stale,) = await backend.claim(store)
    backend.clock.advance(LEASE_MS / 1000)  # the first dispatcher is slow: another takes it
    (current,) = await backend.claim(store)
    assert current.id == job_id
    assert current.claim > stale.claim
    assert not await store.delivered(job_id, stale.claim)
    assert not await store.retry(job_id, stale.claim, store.now_ms(), "late")
    assert not await store.bury(job_id, stale.claim, "late")
    assert await store.pending(app) == 2
    assert await store.dead(app, 10) == []
    backend.clock.advance(LEASE_MS / 1000 - 0.001)
    assert await backend.claim(store) == []  # still held by the current claim, not released
    assert await store.retry(job_id, current.claim, store.now_ms(), "HTTP 500")
    assert not await store.retry(job_id, current.claim, store.now_ms(), "again")  # released
    (again,) = await backend.claim(store)
    assert (again.id, again.attempts, again.last_error) == (job_id, 1, "HTTP 500")
    assert again.claim != current.claim
    assert not await store.delivered(job_id, current.claim)
    assert not await store.bury(job_id, current.claim, "late")
    assert await store.bury(job_id, again.claim, "HTTP 503")
    assert [(d.id, d.attempts, d.error) for d in await store.dead(app, 10)] == [
        (job_id, 2, "HTTP 503")
    ]
    assert not await store.delivered(job_id, again.claim)  # gone
    assert not await store.retry(job_id, again.claim, store.now_ms(), "gone")
    assert not await store.bury(job_id, again.claim, "gone")
    (last,) = await backend.claim(store)
    assert last.id == younger
    assert await store.delivered(younger, last.claim)
    assert await store.pending(app) == 0
    assert len(await store.dead(app, 10)) == 1


async def test_a_claim_needs_a_lease(backend: Backend) -> None:
    store, app = await backend.open(), backend.app_id
    await store.enqueue(app, URL, "room", EVENTS)
    with pytest.raises(ValueError):
        await store.claim(1, 0)
    assert ids(await backend.claim(store)) != []


async def test_a_retried_job_is_due_later_with_its_error(backend: Backend) -> None:
    store, app = await backend.open(), backend.app_id
    job_id = await store.enqueue(app, URL, "room", EVENTS)
    younger = await store.enqueue(app, URL, "room", EVENTS)
    (held,) = await backend.claim(store)
    due = store.now_ms() + 10_000
    assert await store.retry(job_id, held.claim, due, "HTTP 500")
    assert await backend.claim(store) == []  # neither it nor the younger job of its key
    backend.clock.advance(9.999)
    assert await backend.claim(store) == []
    backend.clock.advance(0.001)
    (job,) = await backend.claim(store)
    assert (job.id, job.attempts, job.last_error) == (job_id, 1, "HTTP 500")
    assert await store.retry(job_id, job.claim, store.now_ms(), "timed out")
    (job,) = await backend.claim(store)
    assert (job.id, job.attempts, job.last_error) == (job_id, 2, "timed out")
    assert await store.delivered(job_id, job.claim)
    assert ids(await backend.claim(store)) == [younger]


async def test_delivered_jobs_leave_the_queue(backend: Backend) -> None:
    store, app = await backend.open(), backend.app_id
    queued = [await store.enqueue(app, URL, f"c{i}", EVENTS) for i in range(3)]
    held = claims(await backend.claim(store))
    assert await store.delivered(queued[1], held[queued[1]])
    assert await store.pending(app) == 2
    assert not await store.delivered(queued[1], held[queued[1]])  # twice: nothing more
    assert await store.delivered(queued[0], held[queued[0]])
    assert await store.delivered(queued[2], held[queued[2]])
    assert await store.pending(app) == 0
    backend.clock.advance(LEASE_MS)
    assert await backend.claim(store) == []
    assert await store.dead(app, 10) == []


async def test_a_buried_job_is_a_dead_letter_newest_first(backend: Backend) -> None:
    store, app = await backend.open(), backend.app_id
    created = store.now_ms()
    first = await store.enqueue(app, URL, "room", EVENTS)
    second = await store.enqueue(app, OTHER_URL, "", "[]")
    younger = await store.enqueue(app, URL, "room", EVENTS)
    held = claims(await backend.claim(store))
    assert await store.retry(first, held[first], store.now_ms(), "HTTP 502")
    again = claims(await backend.claim(store))
    assert await store.bury(first, again[first], "HTTP 503")
    buried = store.now_ms()
    backend.clock.advance(1)
    assert await store.bury(second, held[second], "connection refused")
    assert await store.dead(app, 10) == [
        DeadWebhook(
            second, app, OTHER_URL, "", "[]", created, buried + 1000, 1, "connection refused"
        ),
        DeadWebhook(first, app, URL, "room", EVENTS, created, buried, 2, "HTTP 503"),
    ]
    assert ids(await backend.claim(store)) == [younger]  # its key goes on
    assert await store.pending(app) == 1
    assert [d.id for d in await store.dead(app, 1)] == [second]
    assert await store.dead(f"{app}-other", 10) == []


async def test_dead_letters_keep_the_newest(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backend.module(), "DEAD_KEEP_MAX", 3)
    store, app = await backend.open(), backend.app_id
    other = f"{app}-other"
    backend.apps.append(other)
    kept_elsewhere = await store.enqueue(other, URL, "", EVENTS)
    queued = [await store.enqueue(app, URL, f"c{i}", EVENTS) for i in range(5)]
    held = claims([j for j in await store.claim(100, LEASE_MS) if j.app_id in (app, other)])
    assert list(held) == [kept_elsewhere, *queued]
    assert await store.bury(kept_elsewhere, held[kept_elsewhere], "gone")
    for job_id in queued:
        backend.clock.advance(0.001)
        assert await store.bury(job_id, held[job_id], f"failed {job_id}")
    assert [d.id for d in await store.dead(app, 10)] == queued[:1:-1]
    assert [d.id for d in await store.dead(other, 10)] == [kept_elsewhere]


async def test_two_processes_claiming_at_once_never_share_a_job(durable: Backend) -> None:
    one, two = await durable.open(), await durable.open()
    app = durable.app_id
    queued = [await one.enqueue(app, URL, f"c{i % 8}", EVENTS) for i in range(16)]
    claims = await asyncio.gather(*(durable.claim(s, 3) for s in (one, two, one, two)))
    claimed = [job.id for jobs in claims for job in jobs]
    assert len(claimed) == len(set(claimed))
    assert set(claimed) <= set(queued[:8])  # the oldest of each channel, never the younger
    rest = await asyncio.gather(durable.claim(one), durable.claim(two))
    claimed += [job.id for jobs in rest for job in jobs]
    assert sorted(claimed) == queued[:8]


async def test_a_durable_queue_outlives_the_process(durable: Backend) -> None:
    store, app = await durable.open(), durable.app_id
    held = await store.enqueue(app, URL, "room", EVENTS)
    assert ids(await durable.claim(store)) == [held]
    waiting = await store.enqueue(app, URL, "lobby", EVENTS)
    await store.close()
    await store.db.close()  # type: ignore[attr-defined]
    again = await durable.open()
    assert await again.pending(app) == 2
    (job,) = await durable.claim(again)
    assert job.id == waiting  # the lease was kept too
    assert await again.delivered(waiting, job.claim)
    durable.clock.advance(LEASE_MS / 1000)
    assert ids(await durable.claim(again)) == [held]
    assert await again.enqueue(app, URL, "lobby", EVENTS) > waiting  # ids are never reused


async def test_a_closed_queue_refuses(backend: Backend) -> None:
    store, app = await backend.open(), backend.app_id
    job_id = await store.enqueue(app, URL, "", EVENTS)
    await store.close()
    calls = [
        store.enqueue(app, URL, "", EVENTS),
        store.claim(1, LEASE_MS),
        store.delivered(job_id, 0),
        store.retry(job_id, 0, 0, "x"),
        store.bury(job_id, 0, "x"),
        store.dead(app, 1),
        store.pending(app),
    ]
    for call in calls:
        with pytest.raises(RuntimeError, match="webhook queue is not running"):
            await call
