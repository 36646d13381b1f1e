"""Bots: principals of an app with credentials of their own, members of conversations
(docs/protocol.md, "Bots").

A bot is made with `parley bots add` or a signed `POST /apps/{id}/bots`; its secret is shown
once. It acts with `Authorization: Bearer <secret>` on its own routes only, and speaks only
into conversations it is a member of, stamped `{"type": "bot", "id": …}`: never as a user.

It hears its conversations through webhooks: every event stored on a conversation channel
where it is a member (but its own) is queued for its `webhook_url` in the webhook queue, and
delivered, retried and dead-lettered like the app's (`core.webhooks`), signed with the bot's
id as `X-Pusher-Key` and its webhook secret (the lowercase hex SHA-256 of its secret, which
is what the store keeps) as the HMAC key: the official SDKs' `validate_webhook` checks it with
`key=bot id, secret=webhook secret`.

For each (bot, user, conversation) that has talked, a reference is kept with the newest offset
(Bot Framework's conversation reference): a bot lists them and sends into any later, after
restarts; an offline user finds the message in the conversation's history.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from parley import logs
from parley.backends.bots import Bot, BotExists, BotStore, Reference
from parley.backends.conversations import Conversation
from parley.backends.webhooks import WebhookQueue
from parley.core.conversations import Conversations
from parley.core.events import ConversationChanged
from parley.errors import Conflict, InvalidArgument, NotAllowed, StoreUnavailable
from parley.publication import Publication, Publisher
from parley.settings import AppConfig

if TYPE_CHECKING:
    from parley.core.node import Node

NAME_RULE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
URL_RULE = re.compile(r"https?://[^\s/]+(/\S*)?")
EVENT_RULE = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
WEBHOOK_EVENT = "conversation_event"
ENQUEUE_RETRY_S = 1.0


def secret_hash(secret: str) -> str:
    """What the store keeps of a bot's secret, and the key its webhooks are signed with."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class NewBot:
    """A bot just made, with the secret shown this once."""

    bot: Bot
    secret: str

    def wire(self) -> dict[str, Any]:
        return {**self.bot.wire(), "secret": self.secret, "webhook_secret": self.bot.secret_hash}


def new_bot(app: AppConfig, name: Any, webhook_url: Any, now_ms: int) -> NewBot:
    """A new bot of `app` with a fresh id and secret, its fields checked; not stored yet."""
    if not isinstance(name, str) or not NAME_RULE.fullmatch(name):
        raise InvalidArgument("'name' must be 1-64 of [A-Za-z0-9_.-]")
    if webhook_url is not None and (
        not isinstance(webhook_url, str) or not URL_RULE.fullmatch(webhook_url)
    ):
        raise InvalidArgument("'webhook_url' must be an http:// or https:// URL")
    secret = secrets.token_urlsafe(32)
    bot_id = "b_" + secrets.token_urlsafe(12)
    return NewBot(
        Bot(app.id, bot_id, name, webhook_url, secret_hash(secret), now_ms, False), secret
    )


async def add_to(store: BotStore, made: NewBot) -> None:
    """Store a new bot (the API's and `parley bots add`'s one way); 409 for a taken name."""
    try:
        await store.add(made.bot)
    except BotExists:
        raise Conflict(f"App {made.bot.app_id} has a bot named {made.bot.name!r}") from None
    logs.info("bot added", app_id=made.bot.app_id, bot_id=made.bot.id, name=made.bot.name)


@dataclass(frozen=True, slots=True)
class Sent:
    """A bot's message, stored."""

    conversation_id: str
    channel: str
    offset: int
    id: str


class Bots:
    def __init__(
        self,
        node: Node,
        store: BotStore,
        conversations: Conversations,
        webhooks: WebhookQueue,
        wake_dispatcher: Callable[[], None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self.store = store
        self.conversations = conversations
        self.webhooks = webhooks
        self.wake_dispatcher = wake_dispatcher
        self._clock = clock

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def start(self) -> None:
        """Hear the conversations' stored events (`Conversations.listen`)."""
        self.conversations.listen(self.heard)

    # -- credentials ---------------------------------------------------------------------------

    async def add(self, app: AppConfig, name: Any, webhook_url: Any) -> NewBot:
        made = new_bot(app, name, webhook_url, self._now_ms())
        await add_to(self.store, made)
        self.node.events.emit(
            ConversationChanged(app.id, "bot_created", "", "", bot_id=made.bot.id)
        )
        return made

    async def authenticate(self, app: AppConfig, bot_id: str, authorization: str) -> Bot:
        """The bot whose secret the `Authorization: Bearer` header carries; NotAllowed for any
        other (unknown, wrong secret, disabled: one answer, nothing learnt)."""
        scheme, _, secret = authorization.partition(" ")
        bot = await self.store.get(app.id, bot_id)
        if (
            bot is None
            or scheme.lower() != "bearer"
            or not hmac.compare_digest(secret_hash(secret.strip()), bot.secret_hash)
        ):
            raise NotAllowed(
                f"Not authenticated as bot {bot_id!r}: 'Authorization: Bearer <secret>'"
            )
        if bot.disabled:
            raise NotAllowed(f"Bot {bot_id!r} is disabled")
        return bot

    # -- speaking ------------------------------------------------------------------------------

    async def send(
        self, app: AppConfig, bot: Bot, conversation_id: Any, event: Any, data: Any
    ) -> Sent:
        """Publish as `bot` into a conversation it is a member of."""
        if not isinstance(conversation_id, str) or not conversation_id:
            raise InvalidArgument("'conversation_id' must be a conversation id")
        if (
            not isinstance(event, str)
            or not EVENT_RULE.fullmatch(event)
            or event.startswith(("pusher", "client-", "parley:"))
        ):
            raise InvalidArgument(
                "'event' must be 1-200 of [A-Za-z0-9_.:-], not starting with pusher, client- "
                "or parley:"
            )
        if not isinstance(data, str):
            raise InvalidArgument("'data' must be a string (JSON text, as the events API takes)")
        if len(data.encode()) > app.max_event_bytes:
            raise InvalidArgument(f"'data' is over the app's {app.max_event_bytes} bytes")
        conversation = await self.conversations.load(app.id, conversation_id)
        if conversation is None or bot.id not in conversation.bots:
            raise NotAllowed(f"Bot {bot.id!r} is not a member of conversation {conversation_id}")
        if conversation.blocked_by or conversation.state == "declined":
            raise NotAllowed(f"Conversation {conversation_id} is closed to messages")
        stored = await self.node.publish(
            app, event, data, [conversation.channel], publisher=Publisher("bot", bot.id)
        )
        if not stored:
            raise StoreUnavailable("The message was not stored")
        publication = stored[0]
        self.node.events.emit(
            ConversationChanged(
                app.id, "bot_message", conversation.id, conversation.channel, bot_id=bot.id
            )
        )
        return Sent(
            conversation.id, conversation.channel, publication.position.offset, publication.id
        )

    async def references(self, app: AppConfig, bot: Bot) -> list[Reference]:
        return await self.store.references(app.id, bot.id)

    # -- hearing -------------------------------------------------------------------------------

    async def _enqueue(self, app_id: str, bot: Bot, channel: str, events: str) -> None:
        """Queue one webhook for `bot`, tried again every second while the queue's store is
        unavailable (the conversation's later events wait behind it, in order)."""
        assert bot.webhook_url is not None
        while True:
            try:
                await self.webhooks.enqueue(app_id, bot.webhook_url, channel, events, bot_id=bot.id)
                return
            except StoreUnavailable as exc:
                logs.warning("bot webhook not queued yet: store unavailable", reason=exc.message)
            await asyncio.sleep(ENQUEUE_RETRY_S)  # outside the except block

    async def heard(
        self, app_id: str, publication: Publication, conversation: Conversation
    ) -> None:
        """An event stored in `conversation`: queue a webhook for each of its bots (but the
        sender), and keep the references of the bots and users who talked there."""
        if not conversation.bots:
            return
        sender = publication.publisher
        offset = publication.position.offset
        now = self._now_ms()
        event: dict[str, Any] = {
            "name": WEBHOOK_EVENT,
            "channel": publication.channel,
            "conversation_id": conversation.id,
            "event": publication.event,
            "data": publication.data,
            "publisher": sender.wire(),
            "offset": offset,
            "epoch": publication.position.epoch,
            "id": publication.id,
            "ts": publication.ts,
        }
        if sender.user_id is not None:
            event["user_id"] = sender.user_id
        queued = False
        for bot_id in conversation.bots:
            if sender.user_id is not None:
                talked = [sender.user_id]
            elif sender.kind == "bot" and sender.id == bot_id:
                talked = list(conversation.members)
            else:
                talked = []
            for user_id in talked:
                reference = Reference(
                    app_id, bot_id, user_id, conversation.id, conversation.channel, offset, now
                )
                await self.store.remember(reference)
            if sender.kind == "bot" and sender.id == bot_id:
                continue  # a bot does not hear itself
            bot = await self.store.get(app_id, bot_id)
            if bot is None or bot.disabled or bot.webhook_url is None:
                continue
            await self._enqueue(app_id, bot, publication.channel, orjson.dumps([event]).decode())
            queued = True
        if queued:
            self.wake_dispatcher()
