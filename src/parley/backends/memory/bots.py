"""`MemoryBotStore`: bots and their references in this process (tests, `store = "memory"`);
what it holds is lost when the process ends."""

from __future__ import annotations

import builtins
import dataclasses
import time
from collections.abc import Callable

from parley.backends.bots import Bot, BotExists, BotStore, Reference


class MemoryBotStore(BotStore):
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self._bots: dict[tuple[str, str], Bot] = {}  # (app, id), in creation order
        self._references: dict[tuple[str, str, str, str], Reference] = {}

    async def add(self, bot: Bot) -> None:
        self.check_running()
        taken = any(
            b.app_id == bot.app_id and (b.id == bot.id or b.name == bot.name)
            for b in self._bots.values()
        )
        if taken:
            raise BotExists(f"bot {bot.name!r} exists")
        self._bots[(bot.app_id, bot.id)] = bot

    async def get(self, app_id: str, bot_id: str) -> Bot | None:
        self.check_running()
        return self._bots.get((app_id, bot_id))

    async def list(self, app_id: str) -> builtins.list[Bot]:
        self.check_running()
        return [b for b in self._bots.values() if b.app_id == app_id]

    async def set_disabled(self, app_id: str, bot_id: str, disabled: bool) -> Bot | None:
        self.check_running()
        bot = self._bots.get((app_id, bot_id))
        if bot is None:
            return None
        bot = self._bots[(app_id, bot_id)] = dataclasses.replace(bot, disabled=disabled)
        return bot

    async def remember(self, reference: Reference) -> None:
        self.check_running()
        key = (reference.app_id, reference.bot_id, reference.user_id, reference.conversation_id)
        old = self._references.get(key)
        if old is not None and old.last_offset > reference.last_offset:
            reference = dataclasses.replace(reference, last_offset=old.last_offset)
        self._references[key] = reference

    async def references(self, app_id: str, bot_id: str) -> builtins.list[Reference]:
        self.check_running()
        found = [r for r in self._references.values() if r.app_id == app_id and r.bot_id == bot_id]
        return sorted(found, key=lambda r: r.updated_at, reverse=True)
