"""The schema of Parley's PostgreSQL database, as numbered migrations, and PostgreSQL's side
of the shared runner (`backends.database.apply_migrations`, which has the rules).

Every node of a cluster runs the migrations at start, and `parley migrate` may run beside them:
each pending migration runs in one transaction that first takes the transaction-scoped advisory
lock SCHEMA_LOCK and then looks again whether it is recorded, so two runners never both apply
one.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from parley.backends.database import (
    MIGRATIONS_TABLE,
    Migration,
    MigrationConnection,
    apply_migrations,
    check_migrations,
)

# "parley". Earlier versions' history store took the same key to create its tables, so a node of
# such a version starting beside this one never races it either.
SCHEMA_LOCK = 0x7061726C6579

# 1: the tables of the users and grants stores, exactly as those stores created them before
# migrations existed (IF NOT EXISTS: on a database from then, it changes nothing).
USERS_AND_GRANTS = """
CREATE TABLE IF NOT EXISTS parley_users (
    app_id        text NOT NULL,
    name          text NOT NULL,
    password_hash text NOT NULL,    -- argon2id, PHC string
    info          text,             -- a JSON object, or NULL
    created_at    bigint NOT NULL,  -- milliseconds since the Unix epoch
    updated_at    bigint NOT NULL,
    disabled_at   bigint,           -- NULL while enabled
    PRIMARY KEY (app_id, name)
);
CREATE INDEX IF NOT EXISTS parley_users_disabled
    ON parley_users (disabled_at) WHERE disabled_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS parley_grants (
    id         text NOT NULL,
    app_id     text NOT NULL,
    subject    text NOT NULL,    -- a user id, or '*'
    resource   text NOT NULL,    -- a channel name, or a pattern with '*'
    operations text NOT NULL,    -- sorted, comma-separated
    created_at bigint NOT NULL,  -- milliseconds since the Unix epoch
    expires_at bigint,           -- NULL: until revoked
    granted_by text,
    deleted_at bigint,           -- set when revoked: the row is a tombstone for an hour
    PRIMARY KEY (app_id, id)
);
CREATE INDEX IF NOT EXISTS parley_grants_created ON parley_grants (created_at);
CREATE INDEX IF NOT EXISTS parley_grants_deleted
    ON parley_grants (deleted_at) WHERE deleted_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS parley_grants_expires
    ON parley_grants (expires_at) WHERE expires_at IS NOT NULL;
"""

# 2: the tables of the history store, exactly as the store created them itself before this
# migration (IF NOT EXISTS: on a database from then, it changes nothing).
HISTORY = """
CREATE TABLE IF NOT EXISTS parley_history_channels (
    app_id     text NOT NULL,
    channel    text NOT NULL,
    epoch      text NOT NULL,
    last_seq   bigint NOT NULL,  -- the last offset handed out in this epoch
    max_count  bigint NOT NULL,  -- retention given by the latest append
    max_age_ms bigint NOT NULL,
    PRIMARY KEY (app_id, channel)
);
CREATE TABLE IF NOT EXISTS parley_history_entries (
    app_id     text NOT NULL,
    channel    text NOT NULL,
    seq        bigint NOT NULL,  -- the entry's offset
    ts         bigint NOT NULL,
    expires_ms bigint NOT NULL,  -- for the periodic sweep; reads use the channel's max_age_ms
    id         text NOT NULL,
    event      text NOT NULL,
    data       text NOT NULL,    -- JSON, kept as text so it is delivered byte for byte
    publisher  text NOT NULL,    -- JSON, as in the frame's parley.publisher
    extras     text,             -- JSON object of the publication's extras; NULL: none
    PRIMARY KEY (app_id, channel, seq)
);
CREATE INDEX IF NOT EXISTS parley_history_entries_expires
    ON parley_history_entries (expires_ms);
CREATE TABLE IF NOT EXISTS parley_history_keys (
    app_id    text NOT NULL,
    channel   text NOT NULL,
    key       text NOT NULL,
    seq       bigint NOT NULL,
    epoch     text NOT NULL,
    ts        bigint NOT NULL,   -- when the key was first seen: the entry's ts
    id        text NOT NULL,
    event     text NOT NULL,
    data      text NOT NULL,
    publisher text NOT NULL,
    extras    text,
    PRIMARY KEY (app_id, channel, key)
);
CREATE INDEX IF NOT EXISTS parley_history_keys_ts ON parley_history_keys (ts);
"""

# the transactional outbox (backends.outbox, postgres.outbox): what an application inserts
# into in its own transactions. Ids are given by the trigger once it holds the channel's lock,
# so within a channel they follow commit order.
OUTBOX = """
CREATE SEQUENCE IF NOT EXISTS parley_outbox_id_seq;
CREATE TABLE IF NOT EXISTS parley_outbox (
    id           bigint PRIMARY KEY,  -- given by the trigger: leave it out of the INSERT
    app_id       text NOT NULL,
    channel      text NOT NULL,
    event        text NOT NULL,
    data         text NOT NULL,       -- delivered as it is, like the HTTP API's data
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,         -- set by Parley; with error: never published
    error        text
);
CREATE INDEX IF NOT EXISTS parley_outbox_pending ON parley_outbox (id)
    WHERE published_at IS NULL;
CREATE OR REPLACE FUNCTION parley_outbox_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- one transaction at a time per channel, until it ends: ids follow commit order
    PERFORM pg_advisory_xact_lock(1885434368, hashtext(NEW.app_id || ':' || NEW.channel));
    NEW.id := nextval('parley_outbox_id_seq');
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS parley_outbox_order ON parley_outbox;
CREATE TRIGGER parley_outbox_order BEFORE INSERT ON parley_outbox
    FOR EACH ROW EXECUTE FUNCTION parley_outbox_order();
CREATE OR REPLACE FUNCTION parley_outbox_wake() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('parley_outbox', '');
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS parley_outbox_wake ON parley_outbox;
CREATE TRIGGER parley_outbox_wake AFTER INSERT ON parley_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION parley_outbox_wake();
"""

# 4: the key directory (backends.keys): each app's append-only log of keys, each entry kept as
# its canonical encoding, and the server's own directory signing key.
KEY_DIRECTORY = """
CREATE TABLE IF NOT EXISTS parley_key_log (
    app_id  text NOT NULL,
    seq     bigint NOT NULL,
    user_id text NOT NULL,
    kid     text NOT NULL,
    entry   text NOT NULL,  -- protocol.directory.KeyEntry.encoded(): what its hash covers
    PRIMARY KEY (app_id, seq)
);
CREATE INDEX IF NOT EXISTS parley_key_log_user ON parley_key_log (app_id, user_id);
CREATE TABLE IF NOT EXISTS parley_server_keys (
    name       text PRIMARY KEY,
    seed       bytea NOT NULL,     -- an Ed25519 private key's 32-byte seed
    created_at bigint NOT NULL
);
"""

# 5: the webhook queue (backends.webhooks): jobs waiting to be delivered, and each app's dead
# letters. An identity never hands out an id twice, so a job's id stays unique in the dead
# letters too.
WEBHOOKS = """
CREATE TABLE IF NOT EXISTS parley_webhooks (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    app_id        text NOT NULL,
    url           text NOT NULL,
    channel       text NOT NULL,    -- the ordering key; '' when the events have none
    events        text NOT NULL,    -- JSON array of webhook events
    created_ms    bigint NOT NULL,  -- milliseconds since the Unix epoch
    next_ms       bigint NOT NULL,  -- due from then
    attempts      integer NOT NULL, -- failed deliveries so far
    last_error    text,
    claimed_until bigint            -- a dispatcher holds it until then; NULL: nobody
);
CREATE INDEX IF NOT EXISTS parley_webhooks_key ON parley_webhooks (app_id, url, channel, id);
CREATE INDEX IF NOT EXISTS parley_webhooks_due ON parley_webhooks (next_ms);
CREATE TABLE IF NOT EXISTS parley_webhooks_dead (
    id         bigint PRIMARY KEY,  -- the job's
    app_id     text NOT NULL,
    url        text NOT NULL,
    channel    text NOT NULL,
    events     text NOT NULL,
    created_ms bigint NOT NULL,
    failed_ms  bigint NOT NULL,     -- when it was buried
    attempts   integer NOT NULL,
    error      text NOT NULL        -- the last delivery's
);
CREATE INDEX IF NOT EXISTS parley_webhooks_dead_app
    ON parley_webhooks_dead (app_id, failed_ms, id);
"""

# 6: conversations (backends.conversations) with an index of their members, each user's read
# offsets and blocks; bots (backends.bots) and their conversation references. `seq` is the
# order rows were made in: what ties in time are ordered by, as the memory stores do.
# A job signed as a bot (core.bots) names it; "" is the app.
WEBHOOKS_BY_BOTS = """
ALTER TABLE parley_webhooks ADD COLUMN bot_id TEXT NOT NULL DEFAULT '';
ALTER TABLE parley_webhooks_dead ADD COLUMN bot_id TEXT NOT NULL DEFAULT '';
"""

CONVERSATIONS_AND_BOTS = """
CREATE TABLE IF NOT EXISTS parley_conversations (
    app_id     text NOT NULL,
    id         text NOT NULL,
    seq        bigint GENERATED ALWAYS AS IDENTITY,
    created_at bigint NOT NULL,  -- milliseconds since the Unix epoch
    version    bigint NOT NULL,  -- the compare-and-set of every change
    updated_at bigint NOT NULL,
    record     text NOT NULL,    -- JSON object of the conversation's other fields
    PRIMARY KEY (app_id, id)
);
CREATE INDEX IF NOT EXISTS parley_conversations_updated
    ON parley_conversations (updated_at, seq);
CREATE TABLE IF NOT EXISTS parley_conversation_members (
    app_id          text NOT NULL,
    kind            text NOT NULL,  -- 'user' or 'bot'
    member_id       text NOT NULL,
    conversation_id text NOT NULL,
    PRIMARY KEY (app_id, kind, member_id, conversation_id)
);
CREATE INDEX IF NOT EXISTS parley_conversation_members_conversation
    ON parley_conversation_members (app_id, conversation_id);
CREATE TABLE IF NOT EXISTS parley_conversation_reads (
    app_id          text NOT NULL,
    user_id         text NOT NULL,
    conversation_id text NOT NULL,
    read_offset     bigint NOT NULL,  -- only ever raised
    PRIMARY KEY (app_id, user_id, conversation_id)
);
CREATE TABLE IF NOT EXISTS parley_blocks (
    app_id     text NOT NULL,
    blocker    text NOT NULL,
    blocked    text NOT NULL,
    seq        bigint GENERATED ALWAYS AS IDENTITY,
    created_at bigint NOT NULL,
    PRIMARY KEY (app_id, blocker, blocked)
);
CREATE TABLE IF NOT EXISTS parley_bots (
    app_id      text NOT NULL,
    id          text NOT NULL,
    seq         bigint GENERATED ALWAYS AS IDENTITY,
    name        text NOT NULL,
    webhook_url text,
    secret_hash text NOT NULL,  -- lowercase hex SHA-256 of the secret
    created_at  bigint NOT NULL,
    disabled    boolean NOT NULL,
    PRIMARY KEY (app_id, id),
    UNIQUE (app_id, name)
);
CREATE TABLE IF NOT EXISTS parley_bot_references (
    app_id          text NOT NULL,
    bot_id          text NOT NULL,
    user_id         text NOT NULL,
    conversation_id text NOT NULL,
    seq             bigint GENERATED ALWAYS AS IDENTITY,
    channel         text NOT NULL,
    last_offset     bigint NOT NULL,  -- only ever raised
    updated_at      bigint NOT NULL,
    PRIMARY KEY (app_id, bot_id, user_id, conversation_id)
);
CREATE INDEX IF NOT EXISTS parley_bot_references_updated
    ON parley_bot_references (app_id, bot_id, updated_at);
"""

# 8: what later events made of a message (backends.conversations.MessageState: its edit, its
# delete, its reactions), one row per message that has one, and each member's delivered offset
# beside its read offset. A row that only a delivery made has read_offset -1: nothing read (a
# read is at least 0, and raising the offset with GREATEST replaces the -1), so `reads` skips it.
MESSAGE_STATES = """
CREATE TABLE IF NOT EXISTS parley_message_states (
    app_id          text NOT NULL,
    conversation_id text NOT NULL,
    msg_offset      bigint NOT NULL,  -- the message's offset in the conversation's channel
    state           text NOT NULL,    -- MessageState.encoded()
    PRIMARY KEY (app_id, conversation_id, msg_offset)
);
ALTER TABLE parley_conversation_reads
    ADD COLUMN IF NOT EXISTS delivered_offset bigint NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS parley_conversation_reads_conversation
    ON parley_conversation_reads (app_id, conversation_id);
"""

MIGRATIONS: Sequence[Migration] = check_migrations(
    (
        Migration(1, "users and grants", USERS_AND_GRANTS),
        Migration(2, "history", HISTORY),
        Migration(3, "outbox", OUTBOX),
        Migration(4, "key directory", KEY_DIRECTORY),
        Migration(5, "webhooks", WEBHOOKS),
        Migration(6, "conversations and bots", CONVERSATIONS_AND_BOTS),
        Migration(7, "webhooks signed by bots", WEBHOOKS_BY_BOTS),
        Migration(8, "message states and receipts", MESSAGE_STATES),
    )
)

CREATE_TABLE = f"""
CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at bigint NOT NULL  -- milliseconds since the Unix epoch
)
"""


class PostgresMigrationConnection(MigrationConnection):
    errors = (asyncpg.PostgresError,)

    def __init__(self, conn: Any) -> None:
        self.conn = conn  # an asyncpg connection

    async def recorded(self) -> set[int]:
        conn = self.conn
        if await conn.fetchval("SELECT to_regclass($1)", MIGRATIONS_TABLE) is None:
            return set()
        return {row[0] for row in await conn.fetch(f"SELECT version FROM {MIGRATIONS_TABLE}")}

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self.conn.transaction():
            await self.conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
            yield

    async def is_recorded(self, version: int) -> bool:
        await self.conn.execute(CREATE_TABLE)
        found = await self.conn.fetchval(
            f"SELECT 1 FROM {MIGRATIONS_TABLE} WHERE version = $1", version
        )
        return found is not None

    async def run(self, sql: str) -> None:
        await self.conn.execute(sql)

    async def record(self, migration: Migration, applied_at_ms: int) -> None:
        await self.conn.execute(
            f"INSERT INTO {MIGRATIONS_TABLE} (version, name, applied_at) VALUES ($1, $2, $3)",
            migration.version,
            migration.name,
            applied_at_ms,
        )


async def apply(
    pool: Any, migrations: Sequence[Migration], now_ms: Callable[[], int]
) -> list[Migration]:
    """`apply_migrations` on one connection of `pool` (an asyncpg pool)."""
    async with pool.acquire() as conn:
        return await apply_migrations(PostgresMigrationConnection(conn), migrations, now_ms)
