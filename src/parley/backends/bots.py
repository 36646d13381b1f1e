"""The bot role: bots (principals with credentials of their own) and their conversation
references (`BotStore`). Who may create a bot and what it may do is `core.bots`'.

Theory of operation. A bot's secret is shown once, at creation; the store keeps only its
SHA-256 (the secret is 32 random bytes: a slow hash adds nothing). A reference is what a bot
needs to speak again later in a conversation where a user talked with it: one per (bot, user,
conversation), raised to the newest offset seen, never lowered, kept across restarts.
"""

from __future__ import annotations

import abc
import builtins
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from parley.backends.lifecycle import StoreLifecycle


@dataclass(frozen=True, slots=True)
class Bot:
    app_id: str
    id: str
    name: str
    webhook_url: str | None  # where the bot receives its conversations' events
    secret_hash: str  # lowercase hex SHA-256 of the secret
    created_at: int  # ms
    disabled: bool

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "webhook_url": self.webhook_url,
            "created_at": self.created_at,
            "disabled": self.disabled,
        }


@dataclass(frozen=True, slots=True)
class Reference:
    """Where a bot can reach a user again: Bot Framework's conversation reference."""

    app_id: str
    bot_id: str
    user_id: str
    conversation_id: str
    channel: str
    last_offset: int
    updated_at: int  # ms

    def wire(self) -> dict[str, Any]:
        return {
            "bot_id": self.bot_id,
            "user_id": self.user_id,
            "conversation_id": self.conversation_id,
            "channel": self.channel,
            "last_offset": self.last_offset,
            "updated_at": self.updated_at,
        }


class BotExists(Exception):
    """A bot with that name exists in the app."""


class BotStore(StoreLifecycle, abc.ABC):
    """Implementations: `MemoryBotStore`, `SqliteBotStore`, `PostgresBotStore`. Every method
    may be called concurrently from many tasks."""

    what = "bot store"

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(clock)

    @abc.abstractmethod
    async def add(self, bot: Bot) -> None:
        """Store a new bot; BotExists when the app has one with its id or name."""

    @abc.abstractmethod
    async def get(self, app_id: str, bot_id: str) -> Bot | None: ...

    @abc.abstractmethod
    async def list(self, app_id: str) -> builtins.list[Bot]:
        """The app's bots, oldest first."""

    @abc.abstractmethod
    async def set_disabled(self, app_id: str, bot_id: str, disabled: bool) -> Bot | None:
        """None when there is no such bot."""

    @abc.abstractmethod
    async def remember(self, reference: Reference) -> None:
        """Keep `reference`: new, or an existing one's last_offset raised (never lowered) and
        updated_at set."""

    @abc.abstractmethod
    async def references(self, app_id: str, bot_id: str) -> builtins.list[Reference]:
        """The bot's references, most recently updated first."""
