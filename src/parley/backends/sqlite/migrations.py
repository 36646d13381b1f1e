"""The schema of `<data_dir>/parley.db`, as numbered migrations, and SQLite's side of the
shared runner (`backends.database.apply_migrations`, which has the rules).

`apply` runs on one `sqlite3.Connection` (autocommit mode, transactions begun explicitly) with
no event loop: every step is synchronous, so the runner's coroutine completes without
suspending; `SqliteDb.migrate` calls it on the handle's thread. Each pending migration runs
under BEGIN IMMEDIATE, SQLite's write lock, which is what serializes two processes migrating
the same file.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

from parley.backends.database import (
    MIGRATIONS_TABLE,
    Migration,
    MigrationConnection,
    apply_migrations,
    check_migrations,
    run_without_loop,
)

# 1: the tables of the users and grants stores, exactly as those stores created them before
# migrations existed (IF NOT EXISTS: on a database from then, it changes nothing).
USERS_AND_GRANTS = """
CREATE TABLE IF NOT EXISTS parley_users (
    app_id        TEXT NOT NULL,
    name          TEXT NOT NULL,
    password_hash TEXT NOT NULL,     -- argon2id, PHC string
    info          TEXT,              -- a JSON object, or NULL
    created_at    INTEGER NOT NULL,  -- milliseconds since the Unix epoch
    updated_at    INTEGER NOT NULL,
    disabled_at   INTEGER,           -- NULL while enabled
    PRIMARY KEY (app_id, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS parley_users_disabled
    ON parley_users (disabled_at) WHERE disabled_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS parley_grants (
    id         TEXT NOT NULL,
    app_id     TEXT NOT NULL,
    subject    TEXT NOT NULL,     -- a user id, or '*'
    resource   TEXT NOT NULL,     -- a channel name, or a pattern with '*'
    operations TEXT NOT NULL,     -- sorted, comma-separated
    created_at INTEGER NOT NULL,  -- milliseconds since the Unix epoch
    expires_at INTEGER,           -- NULL: until revoked
    granted_by TEXT,
    deleted_at INTEGER,           -- set when revoked: the row is a tombstone for an hour
    PRIMARY KEY (app_id, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS parley_grants_created ON parley_grants (created_at);
CREATE INDEX IF NOT EXISTS parley_grants_deleted
    ON parley_grants (deleted_at) WHERE deleted_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS parley_grants_expires
    ON parley_grants (expires_at) WHERE expires_at IS NOT NULL;
"""

# 2: the tables of the history store (`history_index` has every statement on them), exactly
# as the store created them itself before this migration (IF NOT EXISTS: on a database from
# then, it changes nothing).
HISTORY = """
CREATE TABLE IF NOT EXISTS parley_history_channels (
    app_id     TEXT NOT NULL,
    channel    TEXT NOT NULL,
    epoch      TEXT NOT NULL,
    -- A floor of the last offset handed out in this epoch: the last offset is
    -- max(last_seq, the highest last_seq of the channel's chunks), see
    -- history_index.LAST_OFFSET. The sweep raises it before it removes a channel's newest
    -- entries.
    last_seq   INTEGER NOT NULL,
    max_count  INTEGER NOT NULL,  -- retention given by the latest append
    max_age_ms INTEGER NOT NULL,
    PRIMARY KEY (app_id, channel)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS parley_history_chunks (
    -- One row per channel per indexing round: the entries the round brought to the channel,
    -- oldest first, as a JSON array of their log lines (see history_log.Op). A round that
    -- touches 500 channels inserts 500 rows, whatever the number of entries.
    row         INTEGER PRIMARY KEY,
    app_id      TEXT NOT NULL,
    channel     TEXT NOT NULL,
    first_seq   INTEGER NOT NULL,
    last_seq    INTEGER NOT NULL,
    min_expires INTEGER NOT NULL,  -- when its oldest entry expires: the sweep looks then
    max_expires INTEGER NOT NULL,  -- when its newest does: the sweep removes the row then
    entries     BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS parley_history_chunks_position
    ON parley_history_chunks (app_id, channel, last_seq);
CREATE INDEX IF NOT EXISTS parley_history_chunks_expires
    ON parley_history_chunks (min_expires);
CREATE TABLE IF NOT EXISTS parley_history_keys (
    app_id    TEXT NOT NULL,
    channel   TEXT NOT NULL,
    key       TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    epoch     TEXT NOT NULL,
    ts        INTEGER NOT NULL,   -- when the key was first seen: the entry's ts
    id        TEXT NOT NULL,
    event     TEXT NOT NULL,
    data      TEXT NOT NULL,
    publisher TEXT NOT NULL,
    extras    TEXT,               -- JSON object of the publication's extras; NULL: none
    PRIMARY KEY (app_id, channel, key)
);
CREATE INDEX IF NOT EXISTS parley_history_keys_ts ON parley_history_keys (ts);
"""

# 3: the key directory (backends.keys): each app's append-only log of keys, each entry kept as
# its canonical encoding, and the server's own directory signing key.
KEY_DIRECTORY = """
CREATE TABLE IF NOT EXISTS parley_key_log (
    app_id  TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    kid     TEXT NOT NULL,
    entry   TEXT NOT NULL,  -- protocol.directory.KeyEntry.encoded(): what its hash covers
    PRIMARY KEY (app_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS parley_key_log_user ON parley_key_log (app_id, user_id);
CREATE TABLE IF NOT EXISTS parley_server_keys (
    name       TEXT PRIMARY KEY,
    seed       BLOB NOT NULL,     -- an Ed25519 private key's 32-byte seed
    created_at INTEGER NOT NULL
);
"""

# 4: the webhook queue (backends.webhooks): jobs waiting to be delivered, and each app's dead
# letters. AUTOINCREMENT: a job's id is never reused, even once the newest is delivered, so
# it stays unique in the dead letters too and ids keep each key's order.
WEBHOOKS = """
CREATE TABLE IF NOT EXISTS parley_webhooks (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id        TEXT NOT NULL,
    url           TEXT NOT NULL,
    channel       TEXT NOT NULL,     -- the ordering key; '' when the events have none
    events        TEXT NOT NULL,     -- JSON array of webhook events
    created_ms    INTEGER NOT NULL,  -- milliseconds since the Unix epoch
    next_ms       INTEGER NOT NULL,  -- due from then
    attempts      INTEGER NOT NULL,  -- failed deliveries so far
    last_error    TEXT,
    claimed_until INTEGER            -- a dispatcher holds it until then; NULL: nobody
);
CREATE INDEX IF NOT EXISTS parley_webhooks_key ON parley_webhooks (app_id, url, channel, id);
CREATE INDEX IF NOT EXISTS parley_webhooks_due ON parley_webhooks (next_ms);
CREATE TABLE IF NOT EXISTS parley_webhooks_dead (
    id         INTEGER PRIMARY KEY,  -- the job's
    app_id     TEXT NOT NULL,
    url        TEXT NOT NULL,
    channel    TEXT NOT NULL,
    events     TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    failed_ms  INTEGER NOT NULL,     -- when it was buried
    attempts   INTEGER NOT NULL,
    error      TEXT NOT NULL         -- the last delivery's
);
CREATE INDEX IF NOT EXISTS parley_webhooks_dead_app
    ON parley_webhooks_dead (app_id, failed_ms, id);
"""

# 5: conversations (backends.conversations) with an index of their members, each user's read
# offsets and blocks; bots (backends.bots) and their conversation references. `seq` (the rowid,
# kept by VACUUM) is the order rows were made in: what ties in time are ordered by, as the
# memory stores do.
# A job signed as a bot (core.bots) names it; "" is the app.
WEBHOOKS_BY_BOTS = """
ALTER TABLE parley_webhooks ADD COLUMN bot_id TEXT NOT NULL DEFAULT '';
ALTER TABLE parley_webhooks_dead ADD COLUMN bot_id TEXT NOT NULL DEFAULT '';
"""

CONVERSATIONS_AND_BOTS = """
CREATE TABLE IF NOT EXISTS parley_conversations (
    seq        INTEGER PRIMARY KEY,
    app_id     TEXT NOT NULL,
    id         TEXT NOT NULL,
    created_at INTEGER NOT NULL,  -- milliseconds since the Unix epoch
    version    INTEGER NOT NULL,  -- the compare-and-set of every change
    updated_at INTEGER NOT NULL,
    record     TEXT NOT NULL,     -- JSON object of the conversation's other fields
    UNIQUE (app_id, id)
);
CREATE INDEX IF NOT EXISTS parley_conversations_updated ON parley_conversations (updated_at);
CREATE TABLE IF NOT EXISTS parley_conversation_members (
    app_id          TEXT NOT NULL,
    kind            TEXT NOT NULL,  -- 'user' or 'bot'
    member_id       TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    PRIMARY KEY (app_id, kind, member_id, conversation_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS parley_conversation_members_conversation
    ON parley_conversation_members (app_id, conversation_id);
CREATE TABLE IF NOT EXISTS parley_conversation_reads (
    app_id          TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    read_offset     INTEGER NOT NULL,  -- only ever raised
    PRIMARY KEY (app_id, user_id, conversation_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS parley_blocks (
    seq        INTEGER PRIMARY KEY,
    app_id     TEXT NOT NULL,
    blocker    TEXT NOT NULL,
    blocked    TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (app_id, blocker, blocked)
);
CREATE TABLE IF NOT EXISTS parley_bots (
    seq         INTEGER PRIMARY KEY,
    app_id      TEXT NOT NULL,
    id          TEXT NOT NULL,
    name        TEXT NOT NULL,
    webhook_url TEXT,
    secret_hash TEXT NOT NULL,     -- lowercase hex SHA-256 of the secret
    created_at  INTEGER NOT NULL,
    disabled    INTEGER NOT NULL,  -- 0 or 1
    UNIQUE (app_id, id),
    UNIQUE (app_id, name)
);
CREATE TABLE IF NOT EXISTS parley_bot_references (
    seq             INTEGER PRIMARY KEY,
    app_id          TEXT NOT NULL,
    bot_id          TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    channel         TEXT NOT NULL,
    last_offset     INTEGER NOT NULL,  -- only ever raised
    updated_at      INTEGER NOT NULL,
    UNIQUE (app_id, bot_id, user_id, conversation_id)
);
CREATE INDEX IF NOT EXISTS parley_bot_references_updated
    ON parley_bot_references (app_id, bot_id, updated_at);
"""

# 7: what later events made of a message (backends.conversations.MessageState: its edit, its
# delete, its reactions), one row per message that has one, and each member's delivered offset
# beside its read offset. A row that only a delivery made has read_offset -1: nothing read (a
# read is at least 0, and raising the offset with max() replaces the -1), so `reads` skips it.
MESSAGE_STATES = """
CREATE TABLE IF NOT EXISTS parley_message_states (
    app_id          TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    msg_offset      INTEGER NOT NULL,  -- the message's offset in the conversation's channel
    state           TEXT NOT NULL,     -- MessageState.encoded()
    PRIMARY KEY (app_id, conversation_id, msg_offset)
) WITHOUT ROWID;
ALTER TABLE parley_conversation_reads ADD COLUMN delivered_offset INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS parley_conversation_reads_conversation
    ON parley_conversation_reads (app_id, conversation_id);
"""

MIGRATIONS: Sequence[Migration] = check_migrations(
    (
        Migration(1, "users and grants", USERS_AND_GRANTS),
        Migration(2, "history", HISTORY),
        Migration(3, "key directory", KEY_DIRECTORY),
        Migration(4, "webhooks", WEBHOOKS),
        Migration(5, "conversations and bots", CONVERSATIONS_AND_BOTS),
        Migration(6, "webhooks signed by bots", WEBHOOKS_BY_BOTS),
        Migration(7, "message states and receipts", MESSAGE_STATES),
    )
)

CREATE_TABLE = f"""
CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at INTEGER NOT NULL  -- milliseconds since the Unix epoch
)
"""


def statements(sql: str) -> Iterator[str]:
    """The statements of a script, one at a time: `sqlite3` runs one per `execute`, and its
    `executescript` would commit the transaction the migration runs in. A `;` inside a string
    or a comment does not end a statement (`sqlite3.complete_statement` says when one ends)."""
    pending = ""
    for piece in sql.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\r\n;"):
                yield pending
            pending = ""
    if pending.strip(" \t\r\n;"):
        raise ValueError(f"incomplete SQL statement: {pending[:80]!r}")


class SqliteMigrationConnection(MigrationConnection):
    errors = (sqlite3.Error, ValueError)  # ValueError: a statement that does not end

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    async def recorded(self) -> set[int]:
        conn = self.conn
        conn.execute("BEGIN")
        try:
            exists = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                (MIGRATIONS_TABLE,),
            ).fetchone()
            if exists is None:
                return set()
            return {row[0] for row in conn.execute(f"SELECT version FROM {MIGRATIONS_TABLE}")}
        finally:
            conn.execute("COMMIT")

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async def is_recorded(self, version: int) -> bool:
        self.conn.execute(CREATE_TABLE)
        found = self.conn.execute(
            f"SELECT 1 FROM {MIGRATIONS_TABLE} WHERE version = ?", (version,)
        ).fetchone()
        return found is not None

    async def run(self, sql: str) -> None:
        for statement in statements(sql):
            self.conn.execute(statement)

    async def record(self, migration: Migration, applied_at_ms: int) -> None:
        self.conn.execute(
            f"INSERT INTO {MIGRATIONS_TABLE} (version, name, applied_at) VALUES (?, ?, ?)",
            (migration.version, migration.name, applied_at_ms),
        )


def apply(
    conn: sqlite3.Connection, migrations: Sequence[Migration], now_ms: Callable[[], int]
) -> list[Migration]:
    """`apply_migrations` on `conn`, without an event loop."""
    return run_without_loop(apply_migrations(SqliteMigrationConnection(conn), migrations, now_ms))
