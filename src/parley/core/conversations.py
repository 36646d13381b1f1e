"""Conversations: one-to-one and group chat as a stored resource, with requests, blocks, read
offsets and the `parley:welcome` a subscriber gets (docs/protocol.md, "Conversations").

A conversation's channel is `private-conv-{id}`. Only its members may subscribe or send there,
in every app mode: the server decides from the connection's user (a token or `pusher:signin`),
whatever a channel signature says. A one-to-one ("direct") conversation's id is derived from
its pair (`direct_id`), so creating it again, in either order, finds the same one.

A direct conversation created by a user is a request until the other member accepts it: the
other gets `chat-request` on their notification channels (`private-user-{id}` and
`#server-to-user-{id}`), the requester `chat-accepted` or `chat-declined` later. Until then
the requester may send the app's `conversation_request_messages` (default 1). One created by
the app's backend is accepted at once. A block (either way) refuses a direct conversation's
creation and its messages.

Decisions on a live connection must be quick: conversations are kept in a bounded cache,
loaded on first use, and other nodes' changes arrive through the store's change feed (polled
every half second). A change that takes someone's right away (removed, declined, blocked) ends
their live subscription with `parley:revoked`, here at once and on other nodes within a second.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from parley import logs
from parley.backends.conversations import (
    Annotation,
    Conversation,
    ConversationStore,
    MessageState,
)
from parley.core.events import ConversationChanged
from parley.errors import Conflict, InvalidArgument, NotAllowed, RateLimited, UnknownResource
from parley.publication import Publication, StreamPosition
from parley.settings import AppConfig

if TYPE_CHECKING:
    from parley.backends.bots import BotStore
    from parley.backends.users import UserStore
    from parley.core.node import Node

CHANNEL_PREFIX = "private-conv-"
USER_CHANNEL_PREFIX = "private-user-"
CACHE_MAX = 100_000
POLL_INTERVAL_S = 0.5
CAS_ATTEMPTS = 20  # tries of a compare-and-set against concurrent changes before giving up


def direct_id(a: str, b: str) -> str:
    """The id of the one-to-one conversation of users `a` and `b`, whatever their order:
    "d_" + the first 22 characters of base64url(SHA-256(JSON ["parley-direct-v1", lo, hi])),
    lo and hi being the two ids sorted by code point."""
    lo, hi = sorted((a, b))
    digest = hashlib.sha256(orjson.dumps(["parley-direct-v1", lo, hi])).digest()
    return "d_" + base64.urlsafe_b64encode(digest).decode()[:22]


def bot_direct_id(user_id: str, bot_id: str) -> str:
    """The id of the one-to-one conversation of a user and a bot: as `direct_id`, over
    JSON ["parley-bot-v1", user id, bot id]."""
    digest = hashlib.sha256(orjson.dumps(["parley-bot-v1", user_id, bot_id])).digest()
    return "d_" + base64.urlsafe_b64encode(digest).decode()[:22]


def new_group_id() -> str:
    return "g_" + secrets.token_urlsafe(16)[:22]


def channel_of(conversation_id: str) -> str:
    return CHANNEL_PREFIX + conversation_id


def is_conversation_channel(channel: str) -> bool:
    return channel.startswith(CHANNEL_PREFIX)


def id_of(channel: str) -> str:
    return channel[len(CHANNEL_PREFIX) :]


Change = Callable[[Conversation], dict[str, Any]]


def adding(field: str, value: str) -> Change:
    """A change that appends `value` to the tuple `field` (none when it is there already)."""

    def change(c: Conversation) -> dict[str, Any]:
        items: tuple[str, ...] = getattr(c, field)
        return {} if value in items else {field: (*items, value)}

    return change


def removing(field: str, value: str) -> Change:
    """A change that takes `value` out of the tuple `field` (none when it is not there)."""

    def change(c: Conversation) -> dict[str, Any]:
        items: tuple[str, ...] = getattr(c, field)
        return {field: tuple(i for i in items if i != value)} if value in items else {}

    return change


def member_problem(conversation: Conversation, user_id: str | None) -> str | None:
    """Why `user_id` may not subscribe to the conversation's channel now, or None."""
    if user_id is None:
        return (
            f"{conversation.channel} is a conversation: subscribing needs a signed-in "
            "connection (a token or pusher:signin)"
        )
    if user_id not in conversation.members:
        return f"{user_id!r} is not a member of conversation {conversation.id}"
    if conversation.state == "declined":
        return f"The request for conversation {conversation.id} was declined"
    return None


def send_problem(conversation: Conversation, user_id: str | None) -> str | None:
    """Why a message from `user_id` is refused, or None; a pending request's allowance is
    `Conversations.write_problem`'s (it counts in the store)."""
    problem = member_problem(conversation, user_id)
    if problem is not None:
        return problem
    if conversation.blocked_by:
        return f"Conversation {conversation.id} is blocked"
    if conversation.state == "pending" and user_id != conversation.requested_by:
        return f"Accept the request for conversation {conversation.id} before writing there"
    return None


# Client events that act on an earlier message of the conversation (its offset: `ref`), or
# say how far a member has received or read (docs/protocol.md, "Messages").
EDIT, DELETE, REACTION, RECEIPT = (
    "client-parley-edit",
    "client-parley-delete",
    "client-parley-reaction",
    "client-parley-receipt",
)
ACTS = (EDIT, DELETE, REACTION, RECEIPT)
ACT_PREFIX = "client-parley-"  # every event of ACTS; others with it are refused
REACTION_MAX = 32

Listener = Callable[[str, Publication, Conversation], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Act:
    """A parsed edit, delete, reaction or receipt: what it does and to which offset."""

    kind: str  # edit, delete, react, unreact, delivered, read
    offset: int  # ref (the message acted on), or the receipt's offset
    data: Any = None
    reaction: str = ""


def parse_act(event: str, data: Any) -> Act:
    """The act an event of `ACTS` carries; InvalidArgument naming what is wrong (an unknown
    event with ACT_PREFIX too: the prefix is kept for Parley's acts)."""
    if event not in ACTS:
        raise InvalidArgument(
            f"{event}: unknown; the events of {ACT_PREFIX}* are {', '.join(ACTS)}"
        )
    if isinstance(data, str):
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError:
            data = None
    if not isinstance(data, dict):
        raise InvalidArgument(f"{event}: data must be a JSON object")

    def offset(name: str, least: int) -> int:
        value = data.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InvalidArgument(f"{event}: '{name}' must be an offset >= {least}")
        return value

    if event == RECEIPT:
        kind = data.get("type")
        if kind not in ("delivered", "read"):
            raise InvalidArgument(f"{event}: 'type' must be 'delivered' or 'read'")
        return Act(kind, offset("offset", 0))
    ref = offset("ref", 1)
    if event == EDIT:
        if "data" not in data:
            raise InvalidArgument(f"{event}: 'data' (the new content) is missing")
        return Act("edit", ref, data["data"])
    if event == DELETE:
        return Act("delete", ref)
    reaction = data.get("reaction")
    if (
        not isinstance(reaction, str)
        or not 0 < len(reaction) <= REACTION_MAX
        or any(ord(c) < 32 for c in reaction)
    ):
        raise InvalidArgument(f"{event}: 'reaction' must be 1-{REACTION_MAX} printable characters")
    remove = data.get("remove", False)
    if not isinstance(remove, bool):
        raise InvalidArgument(f"{event}: 'remove' must be true or false")
    return Act("unreact" if remove else "react", ref, reaction=reaction)


class Conversations:
    def __init__(
        self,
        node: Node,
        store: ConversationStore,
        users: UserStore,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self.store = store
        self.users = users
        self.bot_store: BotStore | None = None  # set by the composition root
        self.apps = {app.id: app for app in node.apps}
        self._clock = clock
        self._cache: OrderedDict[tuple[str, str], Conversation] = OrderedDict()  # (app, id)
        self._task: asyncio.Task[None] | None = None
        self._since_ms = self._now_ms()
        self._stored: asyncio.Queue[tuple[str, Publication]] = asyncio.Queue()
        self._stored_task: asyncio.Task[None] | None = None
        self._listeners: list[Listener] = []

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._follow())
        self._stored_task = loop.create_task(self._follow_stored())
        self.node.delivery.on_conversation_event = self.stored
        self.node.recovery.fold = self.fold
        self.node.recovery.fold_prefix = CHANNEL_PREFIX

    def listen(self, listener: Listener) -> None:
        """Call `listener` with each event stored in a conversation (on the node that took
        it), in order, after the event's own effect (an edit, a receipt) is recorded."""
        self._listeners.append(listener)

    async def close(self) -> None:
        """Finish what stored events wait for (bounded by the shutdown grace), then stop."""
        self.node.delivery.on_conversation_event = None
        if self._task is not None:
            self._task.cancel()
        if self._stored_task is None:
            return
        try:
            async with asyncio.timeout(self.node.settings.shutdown_grace_s):
                await self._stored.join()
        except TimeoutError:
            logs.warning("conversation events not handled at shutdown", events=self._stored.qsize())
        self._stored_task.cancel()
        await asyncio.wait([self._stored_task], timeout=self.node.settings.shutdown_grace_s)

    # -- the cache ---------------------------------------------------------------------------

    def cached(self, app_id: str, conversation_id: str) -> Conversation | None:
        return self._cache.get((app_id, conversation_id))

    def _keep(self, conversation: Conversation) -> Conversation:
        """Cache `conversation` unless the cache holds a newer version; the newest known."""
        key = (conversation.app_id, conversation.id)
        known = self._cache.get(key)
        if known is not None and known.version > conversation.version:
            return known
        self._cache[key] = conversation
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_MAX:
            self._cache.popitem(last=False)
        return conversation

    async def load(self, app_id: str, conversation_id: str) -> Conversation | None:
        known = self.cached(app_id, conversation_id)
        if known is not None:
            return known
        stored = await self.store.get(app_id, conversation_id)
        return self._keep(stored) if stored is not None else None

    async def _changed(self, app: AppConfig, old: Conversation, change: Change) -> Conversation:
        """Store the fields `change` makes of the stored version (compare-and-set: when another
        change came first, `change` is asked again of the newer version, so nothing it did is
        undone); the stored result, applied here. An empty change stores nothing."""
        current = old
        for _ in range(CAS_ATTEMPTS):
            fields = change(current)
            if not fields:
                return current
            new = current.changed(self._now_ms(), **fields)
            if await self.store.replace(current, new):
                self._applied(app, new)
                return new
            fresh = await self.store.get(app.id, old.id)
            if fresh is None:
                raise UnknownResource(f"No conversation {old.id}")
            current = self._keep(fresh)
        raise Conflict(f"Conversation {old.id} keeps changing: try again")

    def _applied(self, app: AppConfig, conversation: Conversation) -> None:
        """A new version is known: cache it and end live subscriptions it no longer allows."""
        conversation = self._keep(conversation)
        channel = self.node.hubs[app.id].channels.get(conversation.channel)
        if channel is None:
            return
        for session in list(channel.subscribers):
            problem = member_problem(conversation, session.user_id)
            if problem is not None:
                self.node.revoke(session, conversation.channel, problem)

    # -- decisions for live connections --------------------------------------------------------

    async def subscribe_problem(
        self, app: AppConfig, user_id: str | None, channel: str
    ) -> tuple[str | None, Conversation | None]:
        """Why `user_id` may not subscribe to `channel` (a conversation channel), or None
        with the conversation."""
        conversation = await self.load(app.id, id_of(channel))
        if conversation is None:
            return f"No conversation {id_of(channel)}", None
        return member_problem(conversation, user_id), conversation

    def may_write(self, app: AppConfig, user_id: str | None, channel: str) -> bool:
        """The quick answer for a client event: True when the cache alone allows it (an
        accepted, unblocked conversation with `user_id` a member); False: ask `write_problem`."""
        conversation = self._cache.get((app.id, id_of(channel)))
        return (
            conversation is not None
            and conversation.state == "accepted"
            and send_problem(conversation, user_id) is None
        )

    async def write_problem(self, app: AppConfig, user_id: str | None, channel: str) -> str | None:
        """Why a client event from `user_id` on `channel` is refused, or None; a requester's
        message while the request is pending uses one of the app's allowance."""
        conversation = await self.load(app.id, id_of(channel))
        if conversation is None:
            return f"No conversation {id_of(channel)}"
        problem = send_problem(conversation, user_id)
        if problem is not None or conversation.state != "pending":
            return problem
        allowance = app.conversation_request_messages
        for _ in range(CAS_ATTEMPTS):
            if conversation.pending_sent >= allowance:
                return (
                    f"Conversation {conversation.id} waits for its request to be accepted: "
                    f"{allowance} message(s) may be sent before"
                )
            new = conversation.changed(self._now_ms(), pending_sent=conversation.pending_sent + 1)
            if await self.store.replace(conversation, new):
                self._keep(new)
                return None
            fresh = await self.store.get(app.id, conversation.id)
            if fresh is None:
                return f"No conversation {conversation.id}"
            conversation = self._keep(fresh)
            problem = send_problem(conversation, user_id)
            if problem is not None or conversation.state != "pending":
                return problem
        return f"Conversation {conversation.id} keeps changing: try again"

    async def welcome(self, app: AppConfig, conversation: Conversation) -> dict[str, Any]:
        """The `parley:welcome` a new subscriber gets."""
        position = await self.node.history.position(app.id, conversation.channel)
        return {
            "conversation_id": conversation.id,
            "members": list(conversation.members),
            "bots": list(conversation.bots),
            "state": conversation.state,
            "last_offset": position.offset,
            "epoch": position.epoch,
            "receipts": await self.receipts(app, conversation),
        }

    async def receipts(self, app: AppConfig, conversation: Conversation) -> dict[str, Any]:
        """Who has received and read up to where: user id -> {delivered, read}."""
        found = await self.store.receipts(app.id, conversation.id)
        return {u: {"delivered": r.delivered, "read": r.read} for u, r in found.items()}

    # -- edits, deletes, reactions, receipts ---------------------------------------------------

    async def act_problem(
        self, app: AppConfig, user_id: str | None, channel: str, event: str, data: Any
    ) -> str | None:
        """Why an edit, delete, reaction or receipt from `user_id` is refused, or None: the
        offset it names must be in the conversation; only a message's sender edits or
        deletes it; an edit, a delete or another act is no message to act on."""
        try:
            act = parse_act(event, data)
        except InvalidArgument as exc:
            return exc.message
        last = (await self.node.history.position(app.id, channel)).offset
        if act.offset > last:
            return f"{event}: offset {act.offset} is past the conversation's last ({last})"
        if act.kind in ("delivered", "read"):
            return None
        page = await self.node.history.read(app.id, channel, after=act.offset - 1, limit=1)
        target = page.publications[0] if page.publications else None
        if target is None or target.position.offset != act.offset:
            return f"{event}: no message at offset {act.offset} (no longer kept?)"
        if target.event in ACTS:
            return f"{event}: offset {act.offset} is an {target.event}, not a message"
        if act.kind in ("edit", "delete") and target.publisher.user_id != user_id:
            return f"{event}: only the sender of the message at offset {act.offset} may do that"
        states = await self.store.states(app.id, id_of(channel), [act.offset])
        state = states.get(act.offset)
        if state is not None and state.deleted_at:
            return f"{event}: the message at offset {act.offset} was deleted"
        return None

    async def fold(self, app: AppConfig, channel: str, page: dict[str, Any]) -> None:
        """Show the current state of each message of a history page: its last edit's data
        (`parley.edited`), its deletion (`data` null, `parley.deleted`), its reactions."""
        events = page["events"]
        offsets = [e["parley"]["offset"] for e in events if e["event"] not in ACTS]
        if not offsets:
            return
        states = await self.store.states(app.id, id_of(channel), offsets)
        for item in events:
            state = states.get(item["parley"].get("offset", 0))
            if state is not None:
                shown(item, state)

    async def settled(self) -> None:
        """Return once every conversation event stored so far is followed up (its effect
        recorded, the bots told)."""
        await self._stored.join()

    def stored(self, app_id: str, publication: Publication) -> None:
        """`Delivery`'s word that an event of a conversation channel is stored (this node took
        it): handled in order by one task."""
        self._stored.put_nowait((app_id, publication))

    async def _follow_stored(self) -> None:
        while True:
            app_id, publication = await self._stored.get()
            try:
                await self._after_stored(app_id, publication)
            except Exception:
                logs.error("a stored conversation event was not followed up", app_id=app_id)
            finally:
                self._stored.task_done()

    async def _after_stored(self, app_id: str, publication: Publication) -> None:
        conversation = await self.load(app_id, id_of(publication.channel))
        if conversation is None:
            return
        user_id = publication.publisher.user_id
        if publication.event in ACTS and user_id is not None:
            act = parse_act(publication.event, publication.data)  # checked before it was sent
            if act.kind == "delivered":
                await self.store.set_delivered(app_id, conversation.id, user_id, act.offset)
            elif act.kind == "read":
                await self.store.set_read(app_id, conversation.id, user_id, act.offset)
            else:
                annotation = Annotation(
                    act.kind,  # type: ignore[arg-type]  # edit, delete, react or unreact
                    user_id,
                    publication.position.offset,
                    act.data,
                    act.reaction,
                )
                await self.store.annotate(app_id, conversation.id, act.offset, annotation)
        for listener in self._listeners:
            await listener(app_id, publication, conversation)

    # -- operations (the HTTP API's) ---------------------------------------------------------

    async def create(
        self, app: AppConfig, members: Any, by: str | None, bots: Any = None
    ) -> tuple[Conversation, bool]:
        """A conversation of `members` (and `bots`) created by user `by` (None: the app's
        backend): a new one, or the pair's existing one (then False). A direct one of two users
        created by a user is a request (below); one of a user and a bot needs none."""
        bot_ids = await self._bots(app, [] if bots is None else bots)
        ids = await self._members(app, members, at_least=2 - min(len(bot_ids), 1))
        if by is not None and by not in ids:
            raise NotAllowed(f"{by!r} may only create conversations they are a member of")
        now = self._now_ms()
        if len(ids) == 1 and len(bot_ids) == 1:
            with_bot = bot_direct_id(ids[0], bot_ids[0])
            direct = Conversation.new(
                app.id,
                with_bot,
                channel_of(with_bot),
                "direct",
                tuple(ids),
                tuple(bot_ids),
                by,
                now,
            )
            stored = self._keep(await self.store.create(direct))
            if stored == direct:
                self._happened(app, "created", stored, by=by)
            return stored, stored == direct
        if len(ids) + len(bot_ids) > 2:
            group_id = new_group_id()
            group = Conversation.new(
                app.id, group_id, channel_of(group_id), "group", tuple(ids), tuple(bot_ids), by, now
            )
            stored = self._keep(await self.store.create(group))
            self._happened(app, "created", stored, by=by)
            return stored, True
        a, b = ids
        if by is not None:  # a user asking: the other's blocks refuse it, and their own
            other = b if by == a else a
            if await self.store.is_blocked(app.id, other, by):
                raise NotAllowed(f"{other!r} has blocked {by!r}")
            if await self.store.is_blocked(app.id, by, other):
                raise NotAllowed(f"{by!r} has blocked {other!r}: unblock them first")
        conversation_id = direct_id(a, b)
        if by is not None:
            await self._may_ask(app, by, conversation_id)
        direct = Conversation.new(
            app.id,
            conversation_id,
            channel_of(conversation_id),
            "direct",
            (a, b),
            (),
            by,
            now,
            "accepted" if by is None else "pending",
        )
        stored = self._keep(await self.store.create(direct))
        if stored == direct:  # new (a concurrent creation returns the winner's)
            self._happened(app, "created", stored, by=by)
            if stored.state == "pending":
                await self._request(app, stored)
            return stored, True
        return await self._again(app, stored, by), False

    async def _again(self, app: AppConfig, stored: Conversation, by: str | None) -> Conversation:
        """A direct conversation created again: by the backend, accepted; by the one a request
        waits on, accepted; by a declined requester, asked again."""
        if stored.state == "accepted":
            return stored
        if by is None or (stored.state == "pending" and by != stored.requested_by):
            return await self._settle(app, stored, "accepted")
        if stored.state == "declined" and by == stored.requested_by:
            asked = await self._changed(
                app, stored, lambda c: {"state": "pending", "pending_sent": 0}
            )
            await self._request(app, asked)
            return asked
        if stored.state == "declined":  # the one who declined changes their mind
            return await self._settle(app, stored, "accepted")
        return stored  # the requester again, while pending

    async def _may_ask(self, app: AppConfig, user_id: str, conversation_id: str) -> None:
        """RateLimited when `user_id` already waits on `max_pending_requests` answers (a new
        request, or asking again, would notify someone else once more)."""
        existing = await self.store.get(app.id, conversation_id)
        if existing is not None and existing.state == "accepted":
            return  # nothing to ask
        waiting = sum(
            1
            for c in await self.store.of_user(app.id, user_id)
            if c.state == "pending" and c.requested_by == user_id and c.id != conversation_id
        )
        if waiting >= app.max_pending_requests:
            raise RateLimited(
                f"{user_id!r} has {waiting} requests waiting for an answer "
                f"(max_pending_requests = {app.max_pending_requests})"
            )

    async def _request(self, app: AppConfig, conversation: Conversation) -> None:
        requester = conversation.requested_by
        assert requester is not None
        (recipient,) = (m for m in conversation.members if m != requester)
        data = {
            "conversation_id": conversation.id,
            "channel": conversation.channel,
            "requester": requester,
            "members": list(conversation.members),
        }
        self._happened(app, "requested", conversation, user_id=recipient, by=requester)
        await self._notify(app, recipient, "chat-request", data)

    async def answer(
        self, app: AppConfig, conversation_id: str, by: str | None, accept: bool
    ) -> Conversation:
        """Accept or decline a pending request: by its recipient (or the app's backend)."""
        conversation = await self._get(app, conversation_id)
        if conversation.kind != "direct" or conversation.state == "accepted":
            raise Conflict(f"Conversation {conversation_id} has no request waiting")
        if by is not None and (by not in conversation.members or by == conversation.requested_by):
            raise NotAllowed(f"Only the recipient of the request may answer it, not {by!r}")
        if conversation.state == "declined" and not accept:
            return conversation
        return await self._settle(app, conversation, "accepted" if accept else "declined")

    async def _settle(self, app: AppConfig, conversation: Conversation, state: str) -> Conversation:
        settled = await self._changed(app, conversation, lambda c: {"state": state})
        self._happened(app, state, settled, user_id=conversation.requested_by)
        requester = conversation.requested_by
        if requester is not None:
            event = "chat-accepted" if state == "accepted" else "chat-declined"
            (recipient,) = (m for m in conversation.members if m != requester)
            data = {"conversation_id": conversation.id, "channel": conversation.channel}
            await self._notify(app, requester, event, {**data, "by": recipient})
        return settled

    async def add_member(
        self, app: AppConfig, conversation_id: str, user_id: str, by: str | None
    ) -> Conversation:
        """Add `user_id` to a group (by a member or the app's backend)."""
        conversation = await self._group(app, conversation_id, by)
        (user_id,) = await self._members(app, [user_id], at_least=1)
        if user_id in conversation.members:
            return conversation
        if len(conversation.members) >= app.max_conversation_members:
            raise Conflict(
                f"Conversation {conversation_id} has {app.max_conversation_members} members "
                "(max_conversation_members)"
            )
        added = await self._changed(
            app,
            conversation,
            adding("members", user_id),
        )
        self._happened(app, "member_added", added, user_id=user_id, by=by)
        await self._notify(
            app,
            user_id,
            "chat-added",
            {"conversation_id": added.id, "channel": added.channel, "by": by},
        )
        return added

    async def remove_member(
        self, app: AppConfig, conversation_id: str, user_id: str, by: str | None
    ) -> Conversation:
        """Remove `user_id` from a group: themselves, its creator, or the app's backend. Their
        live subscriptions end."""
        conversation = await self._group(app, conversation_id, by)
        if by is not None and by not in (user_id, conversation.created_by):
            raise NotAllowed(f"Only {user_id!r} or the conversation's creator may remove them")
        if user_id not in conversation.members:
            raise UnknownResource(f"{user_id!r} is not a member of conversation {conversation_id}")
        removed = await self._changed(
            app,
            conversation,
            removing("members", user_id),
        )
        self._happened(app, "member_removed", removed, user_id=user_id, by=by)
        return removed

    async def _group(self, app: AppConfig, conversation_id: str, by: str | None) -> Conversation:
        conversation = await self._get(app, conversation_id, by)
        if conversation.kind != "group":
            raise Conflict(f"Conversation {conversation_id} is one-to-one: its members are fixed")
        return conversation

    async def get(self, app: AppConfig, conversation_id: str, by: str | None) -> Conversation:
        return await self._get(app, conversation_id, by)

    async def _get(
        self, app: AppConfig, conversation_id: str, by: str | None = None
    ) -> Conversation:
        """The conversation, fresh from the store; 404 for a user who is not a member (as for
        one that does not exist: a non-member learns nothing)."""
        stored = await self.store.get(app.id, conversation_id)
        if stored is None or (by is not None and by not in stored.members):
            raise UnknownResource(f"No conversation {conversation_id}")
        return self._keep(stored)

    async def mark_read(
        self, app: AppConfig, conversation_id: str, user_id: str, offset: int | None
    ) -> int:
        """Raise `user_id`'s read offset (None: up to the newest event); the offset stored."""
        conversation = await self._get(app, conversation_id, user_id)
        last = (await self.node.history.position(app.id, conversation.channel)).offset
        if offset is None:
            offset = last
        if offset < 0 or offset > last:
            raise InvalidArgument(f"'offset' must be 0..{last} (the conversation's last offset)")
        return await self.store.set_read(app.id, conversation_id, user_id, offset)

    async def list_for(self, app: AppConfig, user_id: str) -> list[dict[str, Any]]:
        """The user's conversations, each with its last event and its unread count."""
        reads = await self.store.reads(app.id, user_id)
        out = []
        for conversation in await self.store.of_user(app.id, user_id):
            self._keep(conversation)
            page = await self.node.history.read(
                app.id, conversation.channel, limit=1, direction="backward"
            )
            last: dict[str, Any] | None = None
            position = StreamPosition(0, page.epoch)
            if page.publications:
                newest = page.publications[0]
                position = newest.position
                last = {"event": newest.event, "data": newest.data, "parley": newest.parley()}
            read = reads.get(conversation.id, 0)
            out.append(
                {
                    **conversation.wire(),
                    "last_event": last,
                    "last_offset": position.offset,
                    "read_offset": read,
                    "unread": max(0, position.offset - read),
                }
            )
        return out

    async def block(self, app: AppConfig, blocker: str, blocked: str) -> None:
        if blocker == blocked:
            raise InvalidArgument("A user cannot block themselves")
        await self.store.block(app.id, blocker, blocked)
        logs.info("user blocked", app_id=app.id, user_id=blocker, blocked=blocked)
        direct = await self.store.get(app.id, direct_id(blocker, blocked))
        if direct is not None:
            await self._changed(
                app,
                direct,
                adding("blocked_by", blocker),
            )

    async def unblock(self, app: AppConfig, blocker: str, blocked: str) -> bool:
        if not await self.store.unblock(app.id, blocker, blocked):
            return False
        direct = await self.store.get(app.id, direct_id(blocker, blocked))
        if direct is not None:
            await self._changed(
                app,
                direct,
                removing("blocked_by", blocker),
            )
        return True

    async def _members(self, app: AppConfig, members: Any, at_least: int = 2) -> list[str]:
        """`members` checked: distinct user ids, `at_least`..max_conversation_members of
        them, each an enabled user of the app's user store (for apps whose users live there)."""
        if (
            not isinstance(members, list)
            or not all(isinstance(m, str) and m for m in members)
            or len(set(members)) != len(members)
        ):
            raise InvalidArgument("'members' must be a list of distinct, non-empty user ids")
        if not at_least <= len(members) <= app.max_conversation_members:
            raise InvalidArgument(
                f"'members' must hold {at_least}..{app.max_conversation_members} user ids"
            )
        if app.auth == "builtin":
            for name in members:
                user = await self.users.get(app.id, name)
                if user is None:
                    raise UnknownResource(f"No user {name!r}")
                if user.disabled:
                    raise NotAllowed(f"User {name!r} is disabled")
        return list(members)

    async def _bots(self, app: AppConfig, bots: Any) -> list[str]:
        """`bots` checked: distinct ids of enabled bots of the app."""
        if not isinstance(bots, list) or not all(isinstance(b, str) and b for b in bots):
            raise InvalidArgument("'bots' must be a list of bot ids")
        if len(set(bots)) != len(bots):
            raise InvalidArgument("'bots' must be distinct")
        for bot_id in bots:
            bot = await self.bot_store.get(app.id, bot_id) if self.bot_store else None
            if bot is None:
                raise UnknownResource(f"No bot {bot_id!r}")
            if bot.disabled:
                raise NotAllowed(f"Bot {bot_id!r} is disabled")
        return list(bots)

    async def add_bot(
        self, app: AppConfig, conversation_id: str, bot_id: str, by: str | None
    ) -> Conversation:
        """Add a bot to a group (by a member or the app's backend)."""
        conversation = await self._group(app, conversation_id, by)
        (bot_id,) = await self._bots(app, [bot_id])
        if bot_id in conversation.bots:
            return conversation
        added = await self._changed(app, conversation, adding("bots", bot_id))
        self._happened(app, "bot_added", added, by=by, bot_id=bot_id)
        return added

    def _happened(
        self,
        app: AppConfig,
        change: str,
        conversation: Conversation,
        *,
        user_id: str | None = None,
        by: str | None = None,
        bot_id: str | None = None,
    ) -> None:
        """One log line and one domain event (webhooks follow it) for a change made here."""
        logs.info(
            f"conversation {change.replace('_', ' ')}",
            app_id=app.id,
            conversation_id=conversation.id,
            user_id=user_id,
            by=by,
            bot_id=bot_id,
        )
        self.node.events.emit(
            ConversationChanged(
                app.id, change, conversation.id, conversation.channel, user_id, by, bot_id
            )
        )

    async def _notify(self, app: AppConfig, user_id: str, event: str, data: Any) -> None:
        """An event on `user_id`'s notification channels: `private-user-{id}` (kept in history
        for when they come back) and `#server-to-user-{id}`."""
        channels = [USER_CHANNEL_PREFIX + user_id, "#server-to-user-" + user_id]
        await self.node.publish(app, event, orjson.dumps(data).decode(), channels)

    # -- other nodes' changes ------------------------------------------------------------------

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            try:
                await self._poll()
            except Exception:
                logs.error("polling conversations failed")

    async def _poll(self) -> None:
        since = self._since_ms - 2000  # overlap: applying a version twice changes nothing
        self._since_ms = self._now_ms()
        for conversation in await self.store.changed_since(since):
            app = self.apps.get(conversation.app_id)
            if app is None:
                continue
            key = (conversation.app_id, conversation.id)
            known = self._cache.get(key)
            if known is not None and known.version >= conversation.version:
                continue
            if known is not None or conversation.channel in self.node.hubs[app.id].channels:
                self._applied(app, conversation)


def shown(item: dict[str, Any], state: MessageState) -> None:
    """A history item as `state` makes it now."""
    parley = item["parley"]
    if state.deleted_at:
        item["data"] = None
        parley["deleted"] = {"offset": state.deleted_at}
    elif state.edited_at:
        item["data"] = state.data
        parley["edited"] = {"offset": state.edited_at}
    if state.reactions:
        parley["reactions"] = {name: list(users) for name, users in state.reactions}
