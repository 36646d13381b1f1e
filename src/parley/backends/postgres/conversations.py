"""`PostgresConversationStore`: conversations in `parley_conversations`, shared by every node of
a cluster, their members indexed in `parley_conversation_members`, read offsets in
`parley_conversation_reads` and blocks in `parley_blocks` (migration 6); delivered offsets
beside the read offsets and message states in `parley_message_states` (migration 8).

A replace is one transaction: an UPDATE on the stored version, then the members' index. Of two
nodes replacing one version, the second's UPDATE waits for the first's row lock and then finds
the version changed: exactly one is stored. A create that finds the id taken reads the stored
conversation in a statement of its own, which sees a rival's insert once it committed. Every
call goes through `PostgresDb.fetch` or `transaction` (StoreUnavailable when the database is
away).

An annotation is one read-modify-write transaction on the message's row: the row is made if
missing (INSERT ... ON CONFLICT DO NOTHING: a row that does not exist cannot be locked), then
read FOR UPDATE, then updated. Of two nodes annotating one message, the second waits at its
SELECT for the first to commit and then applies its annotation to what the first stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from parley.backends.conversations import (
    Annotation,
    Conversation,
    ConversationStore,
    MessageState,
    Receipt,
    conversation_from_row,
    record_of,
)
from parley.backends.postgres.db import PostgresDb

COLUMNS = "app_id, id, created_at, version, updated_at, record"
SELECT = f"SELECT {COLUMNS} FROM parley_conversations"

CREATE = f"""
INSERT INTO parley_conversations ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (app_id, id) DO NOTHING RETURNING 1
"""

# $1 app id, $2 id, $3 the version replaced, then the new created_at, version, updated_at and
# record.
REPLACE = """
UPDATE parley_conversations SET created_at = $4, version = $5, updated_at = $6, record = $7
WHERE app_id = $1 AND id = $2 AND version = $3
RETURNING 1
"""

# $1 app id, $2 conversation id, $3 kinds and $4 ids of its members.
UNINDEX_GONE = """
DELETE FROM parley_conversation_members m
WHERE m.app_id = $1 AND m.conversation_id = $2 AND NOT EXISTS (
    SELECT 1 FROM unnest($3::text[], $4::text[]) AS u(kind, member_id)
    WHERE u.kind = m.kind AND u.member_id = m.member_id
)
"""
INDEX_NEW = """
INSERT INTO parley_conversation_members (app_id, conversation_id, kind, member_id)
SELECT $1, $2, u.kind, u.member_id FROM unnest($3::text[], $4::text[]) AS u(kind, member_id)
ON CONFLICT DO NOTHING
"""

# Ids in code point order (COLLATE "C"), whatever the database's collation, as in Python.
OF_MEMBER = """
SELECT c.app_id, c.id, c.created_at, c.version, c.updated_at, c.record
FROM parley_conversation_members m
JOIN parley_conversations c ON c.app_id = m.app_id AND c.id = m.conversation_id
WHERE m.app_id = $1 AND m.kind = $2 AND m.member_id = $3
ORDER BY c.created_at DESC, c.id COLLATE "C" DESC
"""

# A new offset is at least 0 (nothing read), as the memory store keeps it.
SET_READ = """
INSERT INTO parley_conversation_reads AS r (app_id, user_id, conversation_id, read_offset)
VALUES ($1, $2, $3, GREATEST($4::bigint, 0))
ON CONFLICT (app_id, user_id, conversation_id)
DO UPDATE SET read_offset = GREATEST(r.read_offset, EXCLUDED.read_offset)
RETURNING read_offset
"""

# A row made by a delivery has read_offset -1: nothing read yet (see migration 8), which the
# first read raises; `reads` skips it and `receipts` shows it as 0.
SET_DELIVERED = """
INSERT INTO parley_conversation_reads AS r
    (app_id, user_id, conversation_id, read_offset, delivered_offset)
VALUES ($1, $2, $3, -1, GREATEST($4::bigint, 0))
ON CONFLICT (app_id, user_id, conversation_id)
DO UPDATE SET delivered_offset = GREATEST(r.delivered_offset, EXCLUDED.delivered_offset)
RETURNING delivered_offset
"""

READS = """
SELECT conversation_id, read_offset FROM parley_conversation_reads
WHERE app_id = $1 AND user_id = $2 AND read_offset >= 0
"""

# By user id in code point order (COLLATE "C"), as the memory store sorts them.
RECEIPTS = """
SELECT user_id, delivered_offset, GREATEST(read_offset, 0) FROM parley_conversation_reads
WHERE app_id = $1 AND conversation_id = $2
ORDER BY user_id COLLATE "C"
"""

# $1 app id, $2 conversation id, $3 the message's offset, $4 its state.
NEW_STATE = """
INSERT INTO parley_message_states (app_id, conversation_id, msg_offset, state)
VALUES ($1, $2, $3, $4)
ON CONFLICT (app_id, conversation_id, msg_offset) DO NOTHING
"""
LOCK_STATE = """
SELECT state FROM parley_message_states
WHERE app_id = $1 AND conversation_id = $2 AND msg_offset = $3
FOR UPDATE
"""
UPDATE_STATE = """
UPDATE parley_message_states SET state = $4
WHERE app_id = $1 AND conversation_id = $2 AND msg_offset = $3
"""

STATES = """
SELECT msg_offset, state FROM parley_message_states
WHERE app_id = $1 AND conversation_id = $2 AND msg_offset = ANY($3::bigint[])
"""


class PostgresConversationStore(ConversationStore):
    def __init__(self, db: PostgresDb, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self.db = db  # opened, migrated and closed by its owner

    async def _fetch(self, query: str, *args: Any) -> list[Any]:
        self.check_running()
        return await self.db.fetch(query, *args)

    async def create(self, conversation: Conversation) -> Conversation:
        self.check_running()
        return await self.db.transaction(_create, conversation)

    async def get(self, app_id: str, conversation_id: str) -> Conversation | None:
        rows = await self._fetch(f"{SELECT} WHERE app_id = $1 AND id = $2", app_id, conversation_id)
        return conversation_from_row(rows[0]) if rows else None

    async def replace(self, old: Conversation, new: Conversation) -> bool:
        self.check_running()
        return await self.db.transaction(_replace, old, new)

    async def of_user(self, app_id: str, user_id: str) -> list[Conversation]:
        return [
            conversation_from_row(r) for r in await self._fetch(OF_MEMBER, app_id, "user", user_id)
        ]

    async def of_bot(self, app_id: str, bot_id: str) -> list[Conversation]:
        return [
            conversation_from_row(r) for r in await self._fetch(OF_MEMBER, app_id, "bot", bot_id)
        ]

    async def changed_since(self, since_ms: int) -> list[Conversation]:
        rows = await self._fetch(
            f"{SELECT} WHERE updated_at >= $1 ORDER BY updated_at, seq", since_ms
        )
        return [conversation_from_row(r) for r in rows]

    async def set_read(self, app_id: str, conversation_id: str, user_id: str, offset: int) -> int:
        rows = await self._fetch(SET_READ, app_id, user_id, conversation_id, offset)
        return int(rows[0][0])

    async def reads(self, app_id: str, user_id: str) -> dict[str, int]:
        rows = await self._fetch(READS, app_id, user_id)
        return {r[0]: int(r[1]) for r in rows}

    async def set_delivered(
        self, app_id: str, conversation_id: str, user_id: str, offset: int
    ) -> int:
        rows = await self._fetch(SET_DELIVERED, app_id, user_id, conversation_id, offset)
        return int(rows[0][0])

    async def receipts(self, app_id: str, conversation_id: str) -> dict[str, Receipt]:
        rows = await self._fetch(RECEIPTS, app_id, conversation_id)
        return {r[0]: Receipt(int(r[1]), int(r[2])) for r in rows}

    async def annotate(
        self, app_id: str, conversation_id: str, offset: int, annotation: Annotation
    ) -> MessageState:
        self.check_running()
        return await self.db.transaction(_annotate, app_id, conversation_id, offset, annotation)

    async def states(
        self, app_id: str, conversation_id: str, offsets: list[int]
    ) -> dict[int, MessageState]:
        if not offsets:
            self.check_running()
            return {}
        rows = await self._fetch(STATES, app_id, conversation_id, offsets)
        found = {int(r[0]): r[1] for r in rows}
        # in the order asked, as the memory store gives them
        return {o: MessageState.decoded(o, found[o]) for o in offsets if o in found}

    async def block(self, app_id: str, blocker: str, blocked: str) -> None:
        await self._fetch(
            "INSERT INTO parley_blocks (app_id, blocker, blocked, created_at)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (app_id, blocker, blocked) DO NOTHING",
            app_id,
            blocker,
            blocked,
            self.now_ms(),
        )

    async def unblock(self, app_id: str, blocker: str, blocked: str) -> bool:
        rows = await self._fetch(
            "DELETE FROM parley_blocks WHERE app_id = $1 AND blocker = $2 AND blocked = $3"
            " RETURNING 1",
            app_id,
            blocker,
            blocked,
        )
        return bool(rows)

    async def blocks(self, app_id: str, blocker: str) -> list[str]:
        rows = await self._fetch(
            "SELECT blocked FROM parley_blocks WHERE app_id = $1 AND blocker = $2 ORDER BY seq",
            app_id,
            blocker,
        )
        return [r[0] for r in rows]

    async def is_blocked(self, app_id: str, blocker: str, blocked: str) -> bool:
        rows = await self._fetch(
            "SELECT 1 FROM parley_blocks WHERE app_id = $1 AND blocker = $2 AND blocked = $3",
            app_id,
            blocker,
            blocked,
        )
        return bool(rows)


async def _create(conn: Any, conversation: Conversation) -> Conversation:
    c = conversation
    row = (c.app_id, c.id, c.created_at, c.version, c.updated_at, record_of(c))
    if await conn.fetchval(CREATE, *row) is None:
        stored = await conn.fetchrow(f"{SELECT} WHERE app_id = $1 AND id = $2", c.app_id, c.id)
        return conversation_from_row(stored)  # conversations are never removed
    await _index_members(conn, c.app_id, c.id, c)
    return c


async def _replace(conn: Any, old: Conversation, new: Conversation) -> bool:
    n = new
    row = (n.created_at, n.version, n.updated_at, record_of(n))
    if await conn.fetchval(REPLACE, old.app_id, old.id, old.version, *row) is None:
        return False
    await _index_members(conn, old.app_id, old.id, new)
    return True


async def _annotate(
    conn: Any, app_id: str, conversation_id: str, offset: int, annotation: Annotation
) -> MessageState:
    """The message's state with `annotation` applied, stored; its row locked from the read
    to the write."""
    key = (app_id, conversation_id, offset)
    await conn.execute(NEW_STATE, *key, MessageState(offset).encoded())
    stored = await conn.fetchval(LOCK_STATE, *key)
    state = MessageState.decoded(offset, stored).apply(annotation)
    await conn.execute(UPDATE_STATE, *key, state.encoded())
    return state


async def _index_members(
    conn: Any, app_id: str, conversation_id: str, conversation: Conversation
) -> None:
    """Make the conversation's rows in the members' index `conversation`'s members."""
    members = [("user", u) for u in conversation.members] + [("bot", b) for b in conversation.bots]
    kinds = [kind for kind, _ in members]
    ids = [member for _, member in members]
    await conn.execute(UNINDEX_GONE, app_id, conversation_id, kinds, ids)
    await conn.execute(INDEX_NEW, app_id, conversation_id, kinds, ids)
