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

Each claim has a token, `WebhookJob.claim`: the `claimed_until` it wrote (ms). Delivering,
retrying and burying name it and act only while it is still the job's claim, so a dispatcher
whose lease ran out (a slow receiver, a paused process) cannot undo what the dispatcher that
claimed the job since does. Another claim writes a larger value: it takes the job only once
`claimed_until <= now`, and writes `now + lease_ms` with `lease_ms > 0`. The one way a value
comes back is after `retry` released the claim (`claimed_until` NULL) and a claim in the same
ms writes the same `now + lease_ms`; the released claim has acted then, and a dispatcher acts
once per claim. A claim whose lease ran out still acts while no one else has claimed the job.
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
    claim: int = 0  # the token of the claim that handed it out: its `claimed_until` (ms)


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
        until now + `lease_ms` (> 0: ValueError otherwise), that value its `claim` token."""

    @abc.abstractmethod
    async def delivered(self, job_id: int, claim: int) -> bool:
        """Remove a delivered job. Only while `claim` is still its claim: False, and nothing
        done, when the job is gone or was claimed again since (a lease that ran out)."""

    @abc.abstractmethod
    async def retry(self, job_id: int, claim: int, next_ms: int, error: str) -> bool:
        """Release a job that failed: due again at `next_ms`, one more attempt counted. Only
        while `claim` is still its claim: False, and nothing done, when the job is gone or
        was claimed again since."""

    @abc.abstractmethod
    async def bury(self, job_id: int, claim: int, error: str) -> bool:
        """Move a job that failed for too long to the dead letters (the newest
        `DEAD_KEEP_MAX` per app are kept). Only while `claim` is still its claim: False, and
        nothing done, when the job is gone or was claimed again since."""

    @abc.abstractmethod
    async def dead(self, app_id: str, limit: int) -> list[DeadWebhook]:
        """The app's dead letters, newest first."""

    @abc.abstractmethod
    async def pending(self, app_id: str) -> int:
        """How many jobs of the app are queued (claimed or not)."""
