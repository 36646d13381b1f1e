"""`MemoryWebhookQueue`: the webhook queue in this process (tests, `store = "memory"`); what
it holds is lost when the process ends."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from parley.backends.webhooks import DEAD_KEEP_MAX, DeadWebhook, WebhookJob, WebhookQueue


@dataclass(slots=True)
class _Queued:
    job: WebhookJob
    next_ms: int
    claimed_until: int | None = None  # a dispatcher holds it until then

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.job.app_id, self.job.url, self.job.channel)


class MemoryWebhookQueue(WebhookQueue):
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self._ids = itertools.count(1)
        self._jobs: dict[int, _Queued] = {}  # by id, so in id order
        self._dead: dict[str, list[DeadWebhook]] = {}  # app id -> dead letters, newest first

    async def enqueue(
        self, app_id: str, url: str, channel: str, events: str, *, bot_id: str = ""
    ) -> int:
        self.check_running()
        now = self.now_ms()
        job = WebhookJob(next(self._ids), app_id, url, channel, events, now, 0, None, bot_id)
        self._jobs[job.id] = _Queued(job, now)
        return job.id

    async def claim(self, limit: int, lease_ms: int) -> list[WebhookJob]:
        self.check_running()
        if lease_ms <= 0:
            raise ValueError(f"a lease of {lease_ms} ms")
        now = self.now_ms()
        seen: set[tuple[str, str, str]] = set()  # keys whose oldest job was looked at
        claimed: list[WebhookJob] = []
        for queued in self._jobs.values():
            if len(claimed) >= limit:
                break
            if queued.key in seen:
                continue
            seen.add(queued.key)
            held = queued.claimed_until is not None and queued.claimed_until > now
            if queued.next_ms <= now and not held:
                queued.claimed_until = now + lease_ms
                claimed.append(replace(queued.job, claim=queued.claimed_until))
        return claimed

    def _held_by(self, job_id: int, claim: int) -> _Queued | None:
        """The job while `claim` is its claim."""
        queued = self._jobs.get(job_id)
        if queued is None or queued.claimed_until != claim:
            return None
        return queued

    async def delivered(self, job_id: int, claim: int) -> bool:
        self.check_running()
        if self._held_by(job_id, claim) is None:
            return False
        del self._jobs[job_id]
        return True

    async def retry(self, job_id: int, claim: int, next_ms: int, error: str) -> bool:
        self.check_running()
        queued = self._held_by(job_id, claim)
        if queued is None:
            return False
        attempts = queued.job.attempts + 1
        queued.job = replace(queued.job, attempts=attempts, last_error=error)
        queued.next_ms = next_ms
        queued.claimed_until = None
        return True

    async def bury(self, job_id: int, claim: int, error: str) -> bool:
        self.check_running()
        queued = self._held_by(job_id, claim)
        if queued is None:
            return False
        del self._jobs[job_id]
        job = queued.job
        letter = DeadWebhook(
            job.id,
            job.app_id,
            job.url,
            job.channel,
            job.events,
            job.created_ms,
            self.now_ms(),
            job.attempts + 1,  # the delivery that failed last counts too
            error,
            job.bot_id,
        )
        letters = self._dead.setdefault(job.app_id, [])
        letters.append(letter)
        letters.sort(key=lambda d: (d.failed_ms, d.id), reverse=True)
        del letters[DEAD_KEEP_MAX:]
        return True

    async def dead(self, app_id: str, limit: int) -> list[DeadWebhook]:
        self.check_running()
        return self._dead.get(app_id, [])[:limit]

    async def pending(self, app_id: str) -> int:
        self.check_running()
        return sum(1 for q in self._jobs.values() if q.job.app_id == app_id)
