"""`PostgresBotStore`: bots in `parley_bots`, shared by every node of a cluster, and their
conversation references in `parley_bot_references` (migration 6).

Each call is one statement through `PostgresDb.fetch` (StoreUnavailable when the database is
away). The unique keys (app_id, id) and (app_id, name) are what refuse a second bot of the same
id or name, whichever node adds it; a reference is one upsert that never lowers its offset.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable
from typing import Any

from parley.backends.bots import Bot, BotExists, BotStore, Reference
from parley.backends.postgres.db import PostgresDb

BOT_COLUMNS = "app_id, id, name, webhook_url, secret_hash, created_at, disabled"
REFERENCE_COLUMNS = "app_id, bot_id, user_id, conversation_id, channel, last_offset, updated_at"

# DO NOTHING on any unique key: the id's or the name's.
ADD = f"""
INSERT INTO parley_bots ({BOT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT DO NOTHING RETURNING 1
"""

SET_DISABLED = f"""
UPDATE parley_bots SET disabled = $3 WHERE app_id = $1 AND id = $2
RETURNING {BOT_COLUMNS}
"""

REMEMBER = f"""
INSERT INTO parley_bot_references AS r ({REFERENCE_COLUMNS})
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (app_id, bot_id, user_id, conversation_id) DO UPDATE SET
    channel = EXCLUDED.channel,
    last_offset = GREATEST(r.last_offset, EXCLUDED.last_offset),
    updated_at = EXCLUDED.updated_at
"""


class PostgresBotStore(BotStore):
    def __init__(self, db: PostgresDb, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self.db = db  # opened, migrated and closed by its owner

    async def _fetch(self, query: str, *args: Any) -> builtins.list[Any]:
        self.check_running()
        return await self.db.fetch(query, *args)

    async def add(self, bot: Bot) -> None:
        b = bot
        row = (b.app_id, b.id, b.name, b.webhook_url, b.secret_hash, b.created_at, b.disabled)
        if not await self._fetch(ADD, *row):
            raise BotExists(f"bot {bot.name!r} exists")

    async def get(self, app_id: str, bot_id: str) -> Bot | None:
        rows = await self._fetch(
            f"SELECT {BOT_COLUMNS} FROM parley_bots WHERE app_id = $1 AND id = $2", app_id, bot_id
        )
        return Bot(*rows[0]) if rows else None

    async def list(self, app_id: str) -> builtins.list[Bot]:
        rows = await self._fetch(
            f"SELECT {BOT_COLUMNS} FROM parley_bots WHERE app_id = $1 ORDER BY seq", app_id
        )
        return [Bot(*r) for r in rows]

    async def set_disabled(self, app_id: str, bot_id: str, disabled: bool) -> Bot | None:
        rows = await self._fetch(SET_DISABLED, app_id, bot_id, disabled)
        return Bot(*rows[0]) if rows else None

    async def remember(self, reference: Reference) -> None:
        r = reference
        await self._fetch(
            REMEMBER,
            r.app_id,
            r.bot_id,
            r.user_id,
            r.conversation_id,
            r.channel,
            r.last_offset,
            r.updated_at,
        )

    async def references(self, app_id: str, bot_id: str) -> builtins.list[Reference]:
        rows = await self._fetch(
            f"SELECT {REFERENCE_COLUMNS} FROM parley_bot_references"
            " WHERE app_id = $1 AND bot_id = $2 ORDER BY updated_at DESC, seq",
            app_id,
            bot_id,
        )
        return [Reference(*r) for r in rows]
