"""The conversation role: conversations with their members and request state, each member's
read offset, and who blocks whom (`ConversationStore`). What a conversation may become (a
request accepted, a member removed) and who may ask is `core.conversations`'.

Theory of operation. A conversation is one record with a `version`. Every change is a
compare-and-set: `replace(old, new)` stores `new` only while the stored version is still
`old.version`, so two nodes changing one conversation at once never lose a change: the loser
reads again and retries. `create` is idempotent on the id (a one-to-one conversation's id is
derived from its pair: two creations of the same pair leave one). `changed_since` is the feed
other nodes follow to learn of new members, removals and accepted requests.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import orjson

from parley.backends.lifecycle import StoreLifecycle

Kind = Literal["direct", "group"]
State = Literal["accepted", "pending", "declined"]


@dataclass(frozen=True, slots=True)
class Conversation:
    app_id: str
    id: str
    channel: str
    kind: Kind
    members: tuple[str, ...]  # user ids, in the order they became members
    bots: tuple[str, ...]  # bot ids that are members
    created_by: str | None  # the user who created it; None: the app's backend
    created_at: int  # ms
    state: State  # a group is always accepted; a direct one waits for its recipient
    requested_by: str | None  # direct: the user whose request is pending or was declined
    pending_sent: int  # messages the requester sent while the request was pending
    blocked_by: tuple[str, ...]  # direct: the members who block the other one
    version: int  # 1 at creation, +1 at each change
    updated_at: int  # ms

    @classmethod
    def new(
        cls,
        app_id: str,
        conversation_id: str,
        channel: str,
        kind: Kind,
        members: tuple[str, ...],
        bots: tuple[str, ...],
        created_by: str | None,
        now_ms: int,
        state: State = "accepted",
    ) -> Conversation:
        """A conversation as created: version 1; a pending one is `created_by`'s request."""
        requested_by = created_by if state == "pending" else None
        return cls(
            app_id,
            conversation_id,
            channel,
            kind,
            members,
            bots,
            created_by,
            now_ms,
            state,
            requested_by,
            0,
            (),
            1,
            now_ms,
        )

    def changed(self, now_ms: int, **fields: Any) -> Conversation:
        """A copy with `fields` changed, the next version, stamped `now_ms`."""
        return replace(self, **fields, version=self.version + 1, updated_at=now_ms)

    def wire(self) -> dict[str, Any]:
        """As the HTTP API shows it (times in ms)."""
        return {
            "id": self.id,
            "channel": self.channel,
            "kind": self.kind,
            "members": list(self.members),
            "bots": list(self.bots),
            "created_by": self.created_by,
            "created_at": self.created_at,
            "state": self.state,
            "requested_by": self.requested_by,
            "blocked": bool(self.blocked_by),
        }


AnnotationKind = Literal["edit", "delete", "react", "unreact"]


@dataclass(frozen=True, slots=True)
class Annotation:
    """One later event's effect on a message: an edit or delete by its sender, a reaction
    added or taken back by a member. `at_offset` is the offset of the event that made it."""

    kind: AnnotationKind
    user_id: str
    at_offset: int
    data: Any = None  # edit: the new data
    reaction: str = ""  # react, unreact


@dataclass(frozen=True, slots=True)
class MessageState:
    """What later events made of the message at `offset`. Applying an annotation twice, or
    edits in any order, ends in the same state (the edit of the highest offset wins)."""

    offset: int
    data: Any = None  # the data of the last edit, when edited_at
    edited_at: int = 0  # offset of the last edit; 0: never edited
    deleted_at: int = 0  # offset of the delete; 0: not deleted
    reactions: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (reaction, users), in order

    def apply(self, a: Annotation) -> MessageState:
        if a.kind == "edit":
            if self.deleted_at or a.at_offset <= self.edited_at:
                return self
            return replace(self, data=a.data, edited_at=a.at_offset)
        if a.kind == "delete":
            if self.deleted_at:
                return self
            return replace(self, data=None, deleted_at=a.at_offset)
        reactions = {name: list(users) for name, users in self.reactions}
        users = reactions.setdefault(a.reaction, [])
        if a.kind == "react" and a.user_id not in users:
            users.append(a.user_id)
        elif a.kind == "unreact" and a.user_id in users:
            users.remove(a.user_id)
        kept = tuple((name, tuple(u)) for name, u in reactions.items() if u)
        return replace(self, reactions=kept)

    def encoded(self) -> str:
        return orjson.dumps(
            {
                "data": self.data,
                "edited_at": self.edited_at,
                "deleted_at": self.deleted_at,
                "reactions": [[name, list(users)] for name, users in self.reactions],
            }
        ).decode()

    @classmethod
    def decoded(cls, offset: int, text: str | bytes) -> MessageState:
        raw = orjson.loads(text)
        reactions = tuple((name, tuple(users)) for name, users in raw["reactions"])
        return cls(offset, raw["data"], raw["edited_at"], raw["deleted_at"], reactions)


@dataclass(frozen=True, slots=True)
class Receipt:
    """How far one member of a conversation has had its events delivered and has read."""

    delivered: int
    read: int


# How the durable stores keep a conversation: these fields in columns of their own, the others
# as one JSON object (`record_of`), read back with `conversation_from_row`.
COLUMN_FIELDS = ("app_id", "id", "created_at", "version", "updated_at")
RECORD_FIELDS = tuple(
    f.name for f in dataclasses.fields(Conversation) if f.name not in COLUMN_FIELDS
)


def record_of(conversation: Conversation) -> str:
    return orjson.dumps({name: getattr(conversation, name) for name in RECORD_FIELDS}).decode()


def conversation_from_row(row: Any) -> Conversation:
    """A conversation from (app_id, id, created_at, version, updated_at, record)."""
    app_id, conversation_id, created_at, version, updated_at, record = row
    fields: dict[str, Any] = orjson.loads(record)
    # JSON arrays are the record's tuples
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    return Conversation(
        app_id=app_id,
        id=conversation_id,
        created_at=int(created_at),
        version=int(version),
        updated_at=int(updated_at),
        **fields,
    )


class ConversationStore(StoreLifecycle, abc.ABC):
    """Implementations: `MemoryConversationStore`, `SqliteConversationStore`,
    `PostgresConversationStore`. Every method may be called concurrently from many tasks."""

    what = "conversation store"

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(clock)

    @abc.abstractmethod
    async def create(self, conversation: Conversation) -> Conversation:
        """Store `conversation` unless one with its (app_id, id) exists; the stored one."""

    @abc.abstractmethod
    async def get(self, app_id: str, conversation_id: str) -> Conversation | None: ...

    @abc.abstractmethod
    async def replace(self, old: Conversation, new: Conversation) -> bool:
        """Store `new` (same app and id, `new.version` > `old.version`) only if the stored
        version is `old.version`; False, changing nothing, otherwise."""

    @abc.abstractmethod
    async def of_user(self, app_id: str, user_id: str) -> list[Conversation]:
        """The conversations `user_id` is a member of, newest first (by created_at, id)."""

    @abc.abstractmethod
    async def of_bot(self, app_id: str, bot_id: str) -> list[Conversation]:
        """The conversations bot `bot_id` is a member of, newest first."""

    @abc.abstractmethod
    async def changed_since(self, since_ms: int) -> list[Conversation]:
        """Every app's conversations created or changed at `since_ms` or later, oldest change
        first."""

    @abc.abstractmethod
    async def set_read(self, app_id: str, conversation_id: str, user_id: str, offset: int) -> int:
        """Raise `user_id`'s read offset in the conversation to `offset` (never lower it); the
        offset now stored."""

    @abc.abstractmethod
    async def reads(self, app_id: str, user_id: str) -> dict[str, int]:
        """`user_id`'s read offsets: conversation id -> offset (absent: nothing read)."""

    @abc.abstractmethod
    async def set_delivered(
        self, app_id: str, conversation_id: str, user_id: str, offset: int
    ) -> int:
        """Raise `user_id`'s delivered offset in the conversation (never lower it); the
        offset now stored."""

    @abc.abstractmethod
    async def receipts(self, app_id: str, conversation_id: str) -> dict[str, Receipt]:
        """Every member's delivered and read offsets that were ever set (0 for the one of
        the two never set), by user id."""

    @abc.abstractmethod
    async def annotate(
        self, app_id: str, conversation_id: str, offset: int, annotation: Annotation
    ) -> MessageState:
        """Apply `annotation` to the state of the message at `offset` (a new state when it
        has none) in one atomic step; the state stored."""

    @abc.abstractmethod
    async def states(
        self, app_id: str, conversation_id: str, offsets: list[int]
    ) -> dict[int, MessageState]:
        """The states of those of `offsets` that have one."""

    @abc.abstractmethod
    async def block(self, app_id: str, blocker: str, blocked: str) -> None:
        """`blocker` blocks `blocked` (again: nothing changes)."""

    @abc.abstractmethod
    async def unblock(self, app_id: str, blocker: str, blocked: str) -> bool:
        """False when there was no such block."""

    @abc.abstractmethod
    async def blocks(self, app_id: str, blocker: str) -> list[str]:
        """Whom `blocker` blocks, oldest block first."""

    @abc.abstractmethod
    async def is_blocked(self, app_id: str, blocker: str, blocked: str) -> bool: ...
