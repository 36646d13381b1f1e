"""`SqliteWebhookQueue`: the webhook queue in `parley_webhooks` of the embedded SQLite file, and
the dead letters in `parley_webhooks_dead` (migrations 4 and 6).

Each call is one short transaction on the connection thread of the process's `SqliteDb`. A
claim picks and marks its jobs in one write transaction, and SQLite takes one writer at a time
across every process on the file, so two dispatchers never claim the same job. Delivering,
retrying and burying test the claim's token (its `claimed_until`) in the same transaction.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

from parley.backends.sqlite.db import SqliteDb
from parley.backends.webhooks import DEAD_KEEP_MAX, DeadWebhook, WebhookJob, WebhookQueue

JOB_COLUMNS = "id, app_id, url, channel, events, created_ms, attempts, last_error, bot_id"
DEAD_COLUMNS = "id, app_id, url, channel, events, created_ms, failed_ms, attempts, error, bot_id"

# Due, not held, and the oldest of its key, which no other claim holds either (:now).
CLAIMABLE = f"""
SELECT {JOB_COLUMNS} FROM parley_webhooks w
WHERE w.next_ms <= :now AND (w.claimed_until IS NULL OR w.claimed_until <= :now)
AND NOT EXISTS (
    SELECT 1 FROM parley_webhooks o
    WHERE o.app_id = w.app_id AND o.url = w.url AND o.channel = w.channel
    AND (o.id < w.id OR o.claimed_until > :now)
)
ORDER BY w.id LIMIT :limit
"""

# Only while the claim (its claimed_until) is the job's: a lease that ran out may have been
# claimed again since.
DELIVERED = "DELETE FROM parley_webhooks WHERE id = ? AND claimed_until = ?"

RETRY = """
UPDATE parley_webhooks SET next_ms = ?, attempts = attempts + 1, last_error = ?,
    claimed_until = NULL
WHERE id = ? AND claimed_until = ?
"""

BURY = f"""
INSERT INTO parley_webhooks_dead ({DEAD_COLUMNS})
SELECT id, app_id, url, channel, events, created_ms, ?, attempts + 1, ?, bot_id
FROM parley_webhooks WHERE id = ?
"""

# The app's dead letters after the newest `limit` (-1: all of them).
OLDER_DEAD = """
SELECT id FROM parley_webhooks_dead WHERE app_id = ?
ORDER BY failed_ms DESC, id DESC LIMIT -1 OFFSET ?
"""


class SqliteWebhookQueue(WebhookQueue):
    def __init__(self, db: SqliteDb, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self.db = db  # opened, migrated and closed by its owner

    @property
    def _db(self) -> SqliteDb:
        self.check_running()
        return self.db

    async def enqueue(
        self, app_id: str, url: str, channel: str, events: str, *, bot_id: str = ""
    ) -> int:
        now = self.now_ms()
        row = (app_id, url, channel, events, now, now, bot_id)
        return await self._db.write(partial(_insert, row))

    async def claim(self, limit: int, lease_ms: int) -> list[WebhookJob]:
        db = self._db
        if lease_ms <= 0:
            raise ValueError(f"a lease of {lease_ms} ms")
        return await db.write(partial(_claim, self.now_ms(), limit, lease_ms))

    async def delivered(self, job_id: int, claim: int) -> bool:
        return await self._db.write(partial(_run, DELIVERED, (job_id, claim)))

    async def retry(self, job_id: int, claim: int, next_ms: int, error: str) -> bool:
        return await self._db.write(partial(_run, RETRY, (next_ms, error, job_id, claim)))

    async def bury(self, job_id: int, claim: int, error: str) -> bool:
        return await self._db.write(partial(_bury, job_id, claim, error, self.now_ms()))

    async def dead(self, app_id: str, limit: int) -> list[DeadWebhook]:
        sql = (
            f"SELECT {DEAD_COLUMNS} FROM parley_webhooks_dead WHERE app_id = ?"
            " ORDER BY failed_ms DESC, id DESC LIMIT ?"
        )
        rows = await self._db.read(partial(_rows, sql, (app_id, limit)))
        return [DeadWebhook(*r) for r in rows]

    async def pending(self, app_id: str) -> int:
        sql = "SELECT count(*) FROM parley_webhooks WHERE app_id = ?"
        rows = await self._db.read(partial(_rows, sql, (app_id,)))
        return int(rows[0][0])


def _insert(row: tuple[Any, ...], conn: sqlite3.Connection) -> int:
    cursor = conn.execute(
        "INSERT INTO parley_webhooks"
        " (app_id, url, channel, events, created_ms, next_ms, bot_id, attempts)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
        row,
    )
    assert cursor.lastrowid is not None
    return cursor.lastrowid


def _claim(now: int, limit: int, lease_ms: int, conn: sqlite3.Connection) -> list[WebhookJob]:
    until = now + lease_ms  # the claim's token
    rows = conn.execute(CLAIMABLE, {"now": now, "limit": limit})
    jobs = [replace(WebhookJob(*r), claim=until) for r in rows]
    conn.executemany(
        "UPDATE parley_webhooks SET claimed_until = ? WHERE id = ?",
        [(until, job.id) for job in jobs],
    )
    return jobs


def _bury(job_id: int, claim: int, error: str, now: int, conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT app_id FROM parley_webhooks WHERE id = ? AND claimed_until = ?", (job_id, claim)
    ).fetchone()
    if row is None:
        return False
    conn.execute(BURY, (now, error, job_id))
    conn.execute("DELETE FROM parley_webhooks WHERE id = ?", (job_id,))
    conn.execute(
        f"DELETE FROM parley_webhooks_dead WHERE id IN ({OLDER_DEAD})", (row[0], DEAD_KEEP_MAX)
    )
    return True


def _rows(sql: str, params: tuple[Any, ...], conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute(sql, params)]


def _run(sql: str, params: tuple[Any, ...], conn: sqlite3.Connection) -> bool:
    """Whether the statement changed a row."""
    return conn.execute(sql, params).rowcount > 0
