"""The webhook queue role: webhooks waiting to be delivered, claimed by one dispatcher at a
time, retried later, or dead-lettered (`WebhookQueue`). What goes in a webhook and when it is
sent is `core.webhooks`'.

Theory of operation. A job is one POST to one URL: a JSON array of Pusher webhook events that
share an ordering key (`channel`, "" for none). Jobs with the same (app_id, url, channel) are
delivered in id order: `claim` hands out a job only when no older job with that key is still
queued, and only one claim at a time holds a job (a lease: a dispatcher that dies leaves it to
be claimed again once the lease runs out). A delivered job is removed; a failed one is put back
with a later `next_ms`; one that failed for too long moves to the dead letters, which keep
the events and the last error for the app's operator (`GET /apps/{id}/webhooks/failed`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

from parley.backends.lifecycle import StoreLifecycle

DEAD_KEEP_MAX = 1000  # dead letters kept per app: the newest


@dataclass(frozen=True, slots=True)
class WebhookJob:
    id: int  # increasing in enqueue order, across every process on the same database
    app_id: str
    url: str
    channel: str  # the ordering key; "" when the events have none
    events: str  # JSON array of webhook events, as they go in the envelope's `events`
    created_ms: int
    attempts: int  # failed deliveries so far
    last_error: str | None
    bot_id: str = ""  # signed by this bot's credentials ("" : the app's)


@dataclass(frozen=True, slots=True)
class DeadWebhook:
    id: int
    app_id: str
    url: str
    channel: str
    events: str
    created_ms: int
    failed_ms: int
    attempts: int
    error: str
    bot_id: str = ""


class WebhookQueue(StoreLifecycle, abc.ABC):
    """Implementations: `MemoryWebhookQueue`, `SqliteWebhookQueue`, `PostgresWebhookQueue`.
    Every method may be called concurrently from many tasks and processes."""

    what = "webhook queue"

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(clock)

    @abc.abstractmethod
    async def enqueue(
        self, app_id: str, url: str, channel: str, events: str, *, bot_id: str = ""
    ) -> int:
        """Queue one job, due now, to be signed as the app or as bot `bot_id`; durable when
        it returns. Its id."""

    @abc.abstractmethod
    async def claim(self, limit: int, lease_ms: int) -> list[WebhookJob]:
        """Up to `limit` due jobs (`next_ms` <= now), oldest first, each the oldest queued job
        of its (app_id, url, channel) and not claimed by anyone else now; each is claimed
        until now + `lease_ms`."""

    @abc.abstractmethod
    async def delivered(self, job_id: int) -> None:
        """Remove a delivered job."""

    @abc.abstractmethod
    async def retry(self, job_id: int, next_ms: int, error: str) -> None:
        """Release a job that failed: due again at `next_ms`, one more attempt counted."""

    @abc.abstractmethod
    async def bury(self, job_id: int, error: str) -> None:
        """Move a job that failed for too long to the dead letters (the newest
        `DEAD_KEEP_MAX` per app are kept)."""

    @abc.abstractmethod
    async def dead(self, app_id: str, limit: int) -> list[DeadWebhook]:
        """The app's dead letters, newest first."""

    @abc.abstractmethod
    async def pending(self, app_id: str) -> int:
        """How many jobs of the app are queued (claimed or not)."""
