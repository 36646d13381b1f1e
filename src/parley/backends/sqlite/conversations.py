"""`SqliteConversationStore`: conversations in `parley_conversations` of the embedded SQLite
file, their members indexed in `parley_conversation_members`, read offsets in
`parley_conversation_reads` and blocks in `parley_blocks` (migration 5); delivered offsets
beside the read offsets and message states in `parley_message_states` (migration 7).

Each call is one short transaction on the connection thread of the process's `SqliteDb`. A
replace is an UPDATE on the stored version and the members' index in one write transaction:
SQLite takes one writer at a time across every process on the file, so of two replaces of one
version exactly one is stored, and the index never disagrees with the record.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson

from parley.backends.conversations import (
    Annotation,
    Conversation,
    ConversationStore,
    MessageState,
    Receipt,
    conversation_from_row,
    record_of,
)
from parley.backends.sqlite.db import SqliteDb

COLUMNS = "app_id, id, created_at, version, updated_at, record"
SELECT = f"SELECT {COLUMNS} FROM parley_conversations"

OF_MEMBER = """
SELECT c.app_id, c.id, c.created_at, c.version, c.updated_at, c.record
FROM parley_conversation_members m
JOIN parley_conversations c ON c.app_id = m.app_id AND c.id = m.conversation_id
WHERE m.app_id = ? AND m.kind = ? AND m.member_id = ?
ORDER BY c.created_at DESC, c.id DESC
"""

REPLACE = """
UPDATE parley_conversations SET created_at = ?, version = ?, updated_at = ?, record = ?
WHERE app_id = ? AND id = ? AND version = ?
"""

# A new offset is at least 0 (nothing read), as the memory store keeps it.
SET_READ = """
INSERT INTO parley_conversation_reads (app_id, user_id, conversation_id, read_offset)
VALUES (?, ?, ?, max(?, 0))
ON CONFLICT (app_id, user_id, conversation_id)
DO UPDATE SET read_offset = max(read_offset, excluded.read_offset)
RETURNING read_offset
"""

# A row made by a delivery has read_offset -1: nothing read yet (see migration 7), which the
# first read raises; `reads` skips it and `receipts` shows it as 0.
SET_DELIVERED = """
INSERT INTO parley_conversation_reads
    (app_id, user_id, conversation_id, read_offset, delivered_offset)
VALUES (?, ?, ?, -1, max(?, 0))
ON CONFLICT (app_id, user_id, conversation_id)
DO UPDATE SET delivered_offset = max(delivered_offset, excluded.delivered_offset)
RETURNING delivered_offset
"""

READS = """
SELECT conversation_id, read_offset FROM parley_conversation_reads
WHERE app_id = ? AND user_id = ? AND read_offset >= 0
"""

# By user id in code point order (SQLite's BINARY collation), as the memory store sorts them.
RECEIPTS = """
SELECT user_id, delivered_offset, max(read_offset, 0) FROM parley_conversation_reads
WHERE app_id = ? AND conversation_id = ?
ORDER BY user_id
"""

STATE = """
SELECT state FROM parley_message_states
WHERE app_id = ? AND conversation_id = ? AND msg_offset = ?
"""

STORE_STATE = """
INSERT INTO parley_message_states (app_id, conversation_id, msg_offset, state)
VALUES (?, ?, ?, ?)
ON CONFLICT (app_id, conversation_id, msg_offset) DO UPDATE SET state = excluded.state
"""

# The offsets as one JSON array: no limit on how many, unlike bound parameters.
STATES = """
SELECT msg_offset, state FROM parley_message_states
WHERE app_id = ? AND conversation_id = ? AND msg_offset IN (SELECT value FROM json_each(?))
"""


class SqliteConversationStore(ConversationStore):
    def __init__(self, db: SqliteDb, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock)
        self.db = db  # opened, migrated and closed by its owner

    @property
    def _db(self) -> SqliteDb:
        self.check_running()
        return self.db

    async def create(self, conversation: Conversation) -> Conversation:
        return await self._db.write(partial(_create, conversation))

    async def get(self, app_id: str, conversation_id: str) -> Conversation | None:
        return await self._db.read(partial(_select_one, app_id, conversation_id))

    async def replace(self, old: Conversation, new: Conversation) -> bool:
        return await self._db.write(partial(_replace, old, new))

    async def of_user(self, app_id: str, user_id: str) -> list[Conversation]:
        return await self._of_member(app_id, "user", user_id)

    async def of_bot(self, app_id: str, bot_id: str) -> list[Conversation]:
        return await self._of_member(app_id, "bot", bot_id)

    async def _of_member(self, app_id: str, kind: str, member_id: str) -> list[Conversation]:
        rows = await self._db.read(partial(_rows, OF_MEMBER, (app_id, kind, member_id)))
        return [conversation_from_row(r) for r in rows]

    async def changed_since(self, since_ms: int) -> list[Conversation]:
        sql = f"{SELECT} WHERE updated_at >= ? ORDER BY updated_at, seq"
        rows = await self._db.read(partial(_rows, sql, (since_ms,)))
        return [conversation_from_row(r) for r in rows]

    async def set_read(self, app_id: str, conversation_id: str, user_id: str, offset: int) -> int:
        rows = await self._db.write(
            partial(_rows, SET_READ, (app_id, user_id, conversation_id, offset))
        )
        return int(rows[0][0])

    async def reads(self, app_id: str, user_id: str) -> dict[str, int]:
        rows = await self._db.read(partial(_rows, READS, (app_id, user_id)))
        return {r[0]: int(r[1]) for r in rows}

    async def set_delivered(
        self, app_id: str, conversation_id: str, user_id: str, offset: int
    ) -> int:
        rows = await self._db.write(
            partial(_rows, SET_DELIVERED, (app_id, user_id, conversation_id, offset))
        )
        return int(rows[0][0])

    async def receipts(self, app_id: str, conversation_id: str) -> dict[str, Receipt]:
        rows = await self._db.read(partial(_rows, RECEIPTS, (app_id, conversation_id)))
        return {r[0]: Receipt(int(r[1]), int(r[2])) for r in rows}

    async def annotate(
        self, app_id: str, conversation_id: str, offset: int, annotation: Annotation
    ) -> MessageState:
        return await self._db.write(partial(_annotate, app_id, conversation_id, offset, annotation))

    async def states(
        self, app_id: str, conversation_id: str, offsets: list[int]
    ) -> dict[int, MessageState]:
        if not offsets:
            self.check_running()
            return {}
        params = (app_id, conversation_id, orjson.dumps(offsets).decode())
        rows = await self._db.read(partial(_rows, STATES, params))
        found = {int(r[0]): r[1] for r in rows}
        # in the order asked, as the memory store gives them
        return {o: MessageState.decoded(o, found[o]) for o in offsets if o in found}

    async def block(self, app_id: str, blocker: str, blocked: str) -> None:
        sql = (
            "INSERT INTO parley_blocks (app_id, blocker, blocked, created_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (app_id, blocker, blocked) DO NOTHING"
        )
        await self._db.write(partial(_count, sql, (app_id, blocker, blocked, self.now_ms())))

    async def unblock(self, app_id: str, blocker: str, blocked: str) -> bool:
        sql = "DELETE FROM parley_blocks WHERE app_id = ? AND blocker = ? AND blocked = ?"
        return await self._db.write(partial(_count, sql, (app_id, blocker, blocked))) == 1

    async def blocks(self, app_id: str, blocker: str) -> list[str]:
        sql = "SELECT blocked FROM parley_blocks WHERE app_id = ? AND blocker = ? ORDER BY seq"
        return [r[0] for r in await self._db.read(partial(_rows, sql, (app_id, blocker)))]

    async def is_blocked(self, app_id: str, blocker: str, blocked: str) -> bool:
        sql = "SELECT 1 FROM parley_blocks WHERE app_id = ? AND blocker = ? AND blocked = ?"
        return bool(await self._db.read(partial(_rows, sql, (app_id, blocker, blocked))))


def _members(conversation: Conversation) -> set[tuple[str, str]]:
    """(kind, member id) of every member of `conversation`."""
    return {("user", u) for u in conversation.members} | {("bot", b) for b in conversation.bots}


def _create(conversation: Conversation, conn: sqlite3.Connection) -> Conversation:
    c = conversation
    cursor = conn.execute(
        f"INSERT INTO parley_conversations ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (app_id, id) DO NOTHING",
        (c.app_id, c.id, c.created_at, c.version, c.updated_at, record_of(c)),
    )
    if cursor.rowcount != 1:
        stored = _select_one(c.app_id, c.id, conn)
        assert stored is not None  # conversations are never removed
        return stored
    _index_members(c.app_id, c.id, _members(c), conn)
    return c


def _select_one(app_id: str, conversation_id: str, conn: sqlite3.Connection) -> Conversation | None:
    row = conn.execute(f"{SELECT} WHERE app_id = ? AND id = ?", (app_id, conversation_id))
    found = row.fetchone()
    return None if found is None else conversation_from_row(tuple(found))


def _replace(old: Conversation, new: Conversation, conn: sqlite3.Connection) -> bool:
    cursor = conn.execute(
        REPLACE,
        (
            new.created_at,
            new.version,
            new.updated_at,
            record_of(new),
            old.app_id,
            old.id,
            old.version,
        ),
    )
    if cursor.rowcount != 1:
        return False
    _index_members(old.app_id, old.id, _members(new), conn)
    return True


def _index_members(
    app_id: str, conversation_id: str, wanted: set[tuple[str, str]], conn: sqlite3.Connection
) -> None:
    """Make the conversation's rows in the members' index `wanted`: the missing added, the
    gone removed."""
    key = (app_id, conversation_id)
    indexed = {
        (r[0], r[1])
        for r in conn.execute(
            "SELECT kind, member_id FROM parley_conversation_members"
            " WHERE app_id = ? AND conversation_id = ?",
            key,
        )
    }
    conn.executemany(
        "DELETE FROM parley_conversation_members"
        " WHERE app_id = ? AND conversation_id = ? AND kind = ? AND member_id = ?",
        [(*key, kind, member) for kind, member in sorted(indexed - wanted)],
    )
    conn.executemany(
        "INSERT INTO parley_conversation_members (app_id, conversation_id, kind, member_id)"
        " VALUES (?, ?, ?, ?)",
        [(*key, kind, member) for kind, member in sorted(wanted - indexed)],
    )


def _annotate(
    app_id: str,
    conversation_id: str,
    offset: int,
    annotation: Annotation,
    conn: sqlite3.Connection,
) -> MessageState:
    """The message's state with `annotation` applied, stored, in the caller's write
    transaction: nobody changes it between the read and the write."""
    row = conn.execute(STATE, (app_id, conversation_id, offset)).fetchone()
    state = MessageState(offset) if row is None else MessageState.decoded(offset, row[0])
    state = state.apply(annotation)
    conn.execute(STORE_STATE, (app_id, conversation_id, offset, state.encoded()))
    return state


def _rows(sql: str, params: tuple[Any, ...], conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute(sql, params)]


def _count(sql: str, params: tuple[Any, ...], conn: sqlite3.Connection) -> int:
    """The rows `sql` changed."""
    return conn.execute(sql, params).rowcount
