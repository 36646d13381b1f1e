"""`PostgresWebhookQueue`: the webhook queue in `parley_webhooks`, shared by every node of a
cluster, and the dead letters in `parley_webhooks_dead` (migrations 5 and 7).

A claim is one statement: it locks the due jobs it picks FOR UPDATE SKIP LOCKED and marks them
claimed, so dispatchers on many nodes claiming at once never get the same job, and none waits
for another's. A job being claimed elsewhere is skipped, and the younger jobs of its key are
not claimable while it exists. Its own lease is tested on the locked row itself, so a claim
that commits while another statement runs is seen by that statement. Burying is one
transaction: the job moves to the dead letters and the app's oldest beyond `DEAD_KEEP_MAX` go.
Delivering, retrying and burying are one statement each that tests the claim's token (its
`claimed_until`) on the row it changes: against a claim that runs at once, the row lock orders
them, and a statement that waited re-reads the row, so it sees the new claim.
Every call goes through `PostgresDb.fetch` or `transaction`: a database that is away raises
StoreUnavailable, which the dispatcher waits out (a claimed job's lease then runs out).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from parley.backends.postgres.db import PostgresDb
from parley.backends.webhooks import DEAD_KEEP_MAX, DeadWebhook, WebhookJob, WebhookQueue

DEAD_COLUMNS = "id, app_id, url, channel, events, created_ms, failed_ms, attempts, error, bot_id"

# $1 app id, $2 url, $3 channel, $4 events, $5 now: due at once, $6 bot id.
ENQUEUE = """
INSERT INTO parley_webhooks (app_id, url, channel, events, created_ms, next_ms, attempts, bot_id)
VALUES ($1, $2, $3, $4, $5, $5, 0, $6) RETURNING id
"""

# $1 now, $2 limit, $3 lease_ms. Due, not held, and the oldest of its key, which no other
# claim holds either (a younger job can be committed after an older one: ids are given at
# insert, not at commit).
CLAIM = """
WITH picked AS (
    SELECT w.id FROM parley_webhooks w
    WHERE w.next_ms <= $1 AND (w.claimed_until IS NULL OR w.claimed_until <= $1)
    AND NOT EXISTS (
        SELECT 1 FROM parley_webhooks o
        WHERE o.app_id = w.app_id AND o.url = w.url AND o.channel = w.channel
        AND (o.id < w.id OR o.claimed_until > $1)
    )
    ORDER BY w.id LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE parley_webhooks j SET claimed_until = $1 + $3 FROM picked WHERE j.id = picked.id
RETURNING j.id, j.app_id, j.url, j.channel, j.events, j.created_ms, j.attempts, j.last_error,
    j.bot_id, j.claimed_until
"""

# $1 job id, $2 claim: only while the claim (its claimed_until) is the job's.
DELIVERED = "DELETE FROM parley_webhooks WHERE id = $1 AND claimed_until = $2 RETURNING id"

# $1 job id, $2 claim, $3 next_ms, $4 error.
RETRY = """
UPDATE parley_webhooks SET next_ms = $3, attempts = attempts + 1, last_error = $4,
    claimed_until = NULL
WHERE id = $1 AND claimed_until = $2
RETURNING id
"""

# $1 job id, $2 now, $3 error, $4 claim: the app id when there was such a job so claimed.
BURY = f"""
WITH gone AS (DELETE FROM parley_webhooks WHERE id = $1 AND claimed_until = $4 RETURNING *)
INSERT INTO parley_webhooks_dead ({DEAD_COLUMNS})
SELECT id, app_id, url, channel, events, created_ms, $2, attempts + 1, $3, bot_id FROM gone
RETURNING app_id
"""

# $1 app id, $2 how many to keep.
TRIM = """
DELETE FROM parley_webhooks_dead WHERE id IN (
    SELECT id FROM parley_webhooks_dead WHERE app_id = $1
    ORDER BY failed_ms DESC, id DESC OFFSET $2
)
"""


class PostgresWebhookQueue(WebhookQueue):
    def __init__(self, db: PostgresDb, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self.db = db  # opened, migrated and closed by its owner

    async def _fetch(self, query: str, *args: Any) -> list[Any]:
        """The rows of one statement; StoreUnavailable when the database is away (what the
        dispatcher waits out)."""
        self.check_running()
        return await self.db.fetch(query, *args)

    async def enqueue(
        self, app_id: str, url: str, channel: str, events: str, *, bot_id: str = ""
    ) -> int:
        rows = await self._fetch(ENQUEUE, app_id, url, channel, events, self.now_ms(), bot_id)
        return int(rows[0][0])

    async def claim(self, limit: int, lease_ms: int) -> list[WebhookJob]:
        self.check_running()
        if lease_ms <= 0:
            raise ValueError(f"a lease of {lease_ms} ms")
        rows = await self._fetch(CLAIM, self.now_ms(), limit, lease_ms)
        return sorted((WebhookJob(*r) for r in rows), key=lambda job: job.id)

    async def delivered(self, job_id: int, claim: int) -> bool:
        return bool(await self._fetch(DELIVERED, job_id, claim))

    async def retry(self, job_id: int, claim: int, next_ms: int, error: str) -> bool:
        return bool(await self._fetch(RETRY, job_id, claim, next_ms, error))

    async def bury(self, job_id: int, claim: int, error: str) -> bool:
        self.check_running()
        return await self.db.transaction(_bury, job_id, claim, error, self.now_ms())

    async def dead(self, app_id: str, limit: int) -> list[DeadWebhook]:
        rows = await self._fetch(
            f"SELECT {DEAD_COLUMNS} FROM parley_webhooks_dead WHERE app_id = $1"
            " ORDER BY failed_ms DESC, id DESC LIMIT $2",
            app_id,
            limit,
        )
        return [DeadWebhook(*r) for r in rows]

    async def pending(self, app_id: str) -> int:
        rows = await self._fetch("SELECT count(*) FROM parley_webhooks WHERE app_id = $1", app_id)
        return int(rows[0][0])


async def _bury(conn: Any, job_id: int, claim: int, error: str, now: int) -> bool:
    app_id = await conn.fetchval(BURY, job_id, now, error, claim)
    if app_id is None:
        return False
    await conn.execute(TRIM, app_id, DEAD_KEEP_MAX)
    return True
