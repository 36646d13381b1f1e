"""`SqliteBotStore`: bots in `parley_bots` of the embedded SQLite file and their conversation
references in `parley_bot_references` (migration 5).

Each call is one short transaction on the connection thread of the process's `SqliteDb`. The
unique keys (app_id, id) and (app_id, name) are what refuse a second bot of the same id or
name, whichever process adds it; a reference is one upsert that never lowers its offset.
"""

from __future__ import annotations

import builtins
import sqlite3
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from parley.backends.bots import Bot, BotExists, BotStore, Reference
from parley.backends.sqlite.db import SqliteDb

BOT_COLUMNS = "app_id, id, name, webhook_url, secret_hash, created_at, disabled"
REFERENCE_COLUMNS = "app_id, bot_id, user_id, conversation_id, channel, last_offset, updated_at"

# DO NOTHING on any unique key: the id's or the name's.
ADD = f"INSERT INTO parley_bots ({BOT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"

SET_DISABLED = f"""
UPDATE parley_bots SET disabled = ? WHERE app_id = ? AND id = ?
RETURNING {BOT_COLUMNS}
"""

REMEMBER = f"""
INSERT INTO parley_bot_references ({REFERENCE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (app_id, bot_id, user_id, conversation_id) DO UPDATE SET
    channel = excluded.channel,
    last_offset = max(last_offset, excluded.last_offset),
    updated_at = excluded.updated_at
"""


class SqliteBotStore(BotStore):
    def __init__(self, db: SqliteDb, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self.db = db  # opened, migrated and closed by its owner

    @property
    def _db(self) -> SqliteDb:
        self.check_running()
        return self.db

    async def add(self, bot: Bot) -> None:
        row = (
            bot.app_id,
            bot.id,
            bot.name,
            bot.webhook_url,
            bot.secret_hash,
            bot.created_at,
            int(bot.disabled),
        )
        if await self._db.write(partial(_count, ADD, row)) != 1:
            raise BotExists(f"bot {bot.name!r} exists")

    async def get(self, app_id: str, bot_id: str) -> Bot | None:
        sql = f"SELECT {BOT_COLUMNS} FROM parley_bots WHERE app_id = ? AND id = ?"
        rows = await self._db.read(partial(_rows, sql, (app_id, bot_id)))
        return _bot(rows[0]) if rows else None

    async def list(self, app_id: str) -> builtins.list[Bot]:
        sql = f"SELECT {BOT_COLUMNS} FROM parley_bots WHERE app_id = ? ORDER BY seq"
        return [_bot(r) for r in await self._db.read(partial(_rows, sql, (app_id,)))]

    async def set_disabled(self, app_id: str, bot_id: str, disabled: bool) -> Bot | None:
        rows = await self._db.write(partial(_rows, SET_DISABLED, (int(disabled), app_id, bot_id)))
        return _bot(rows[0]) if rows else None

    async def remember(self, reference: Reference) -> None:
        r = reference
        row = (r.app_id, r.bot_id, r.user_id, r.conversation_id, r.channel, r.last_offset)
        await self._db.write(partial(_count, REMEMBER, (*row, r.updated_at)))

    async def references(self, app_id: str, bot_id: str) -> builtins.list[Reference]:
        sql = (
            f"SELECT {REFERENCE_COLUMNS} FROM parley_bot_references"
            " WHERE app_id = ? AND bot_id = ? ORDER BY updated_at DESC, seq"
        )
        rows = await self._db.read(partial(_rows, sql, (app_id, bot_id)))
        return [Reference(*r) for r in rows]


def _bot(row: tuple[Any, ...]) -> Bot:
    app_id, bot_id, name, webhook_url, secret_hash, created_at, disabled = row
    return Bot(app_id, bot_id, name, webhook_url, secret_hash, created_at, bool(disabled))


def _rows(sql: str, params: tuple[Any, ...], conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute(sql, params)]


def _count(sql: str, params: tuple[Any, ...], conn: sqlite3.Connection) -> int:
    """The rows `sql` changed."""
    return conn.execute(sql, params).rowcount
