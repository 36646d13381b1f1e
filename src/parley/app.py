"""The composition root: turns Settings into a running node, HTTP API and listener."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from parley import __version__, logs, speedups
from parley.backends.bots import BotStore
from parley.backends.broker import Broker
from parley.backends.conversations import ConversationStore
from parley.backends.counts import ChannelCounts
from parley.backends.database import Database, Migration, MigrationFailed
from parley.backends.grants import GrantStore
from parley.backends.history import HistoryStore
from parley.backends.keys import KeyDirectoryStore
from parley.backends.last_events import CachedEvents
from parley.backends.presence import PresenceStore
from parley.backends.throttle import LoginAttempts
from parley.backends.users import UserStore
from parley.backends.webhooks import WebhookQueue
from parley.core.access import Access
from parley.core.bots import Bots
from parley.core.conversations import Conversations
from parley.core.ids import new_node_id
from parley.core.keys import KeyDirectory
from parley.core.node import Node
from parley.core.outbox import OutboxRelay
from parley.core.session import Session
from parley.core.webhooks import Webhooks
from parley.errors import CannotStart
from parley.http_api import bots, builtin, conversations, keys, ops, pusher, webhooks
from parley.http_api.routes import Router
from parley.protocol.directory import CHANNEL as KEYS_CHANNEL
from parley.protocol.directory import EVENT as KEYS_EVENT
from parley.protocol.directory import KeyEntry
from parley.settings import AppConfig, Settings, describe, parse_networks, without_password
from parley.transport.proxies import TrustedProxies
from parley.transport.server import Server
from parley.transport.tls import TlsCertificate
from parley.transport.websocket import Limits, WebSocket


@dataclass
class Running:
    node: Node
    server: Server
    port: int
    db: Database | None  # closed after the node's stores
    tls: TlsCertificate | None = None  # reloaded on SIGHUP
    outbox: OutboxRelay | None = None  # publishes the PostgreSQL outbox table


def make_broker(settings: Settings, node_id: str) -> Broker:
    """The broker between this node and the others: this process alone (`memory`), or Redis."""
    if settings.broker == "memory":
        from parley.backends.memory.broker import MemoryBroker

        return MemoryBroker()
    from parley.backends.redis.broker import RedisBroker

    return RedisBroker(
        settings.broker,
        secret=settings.cluster_secret.encode(),
        prefix=settings.redis_prefix,
        node_id=node_id,
    )


def make_presence(settings: Settings) -> PresenceStore:
    """The presence store: in this process's memory, or in the cluster's Redis."""
    if settings.broker == "memory":
        from parley.backends.memory.presence import MemoryPresenceStore

        return MemoryPresenceStore()
    from parley.backends.redis.presence import RedisPresenceStore

    return RedisPresenceStore(
        settings.broker,
        prefix=settings.redis_prefix,
        lease_s=settings.node_lease_s,
        refresh_s=settings.presence_refresh_s,
    )


def make_counts(settings: Settings) -> ChannelCounts:
    """Subscriptions and connections counted in this process alone, or over the cluster's
    nodes in Redis (the apps with a connection quota have the others' connections read in
    every batch)."""
    if settings.broker == "memory":
        from parley.backends.memory.counts import MemoryChannelCounts

        return MemoryChannelCounts()
    from parley.backends.redis.counts import RedisChannelCounts

    return RedisChannelCounts(
        settings.broker,
        prefix=settings.redis_prefix,
        watched=[app.id for app in settings.apps if app.max_connections],
    )


def make_last_events(settings: Settings) -> CachedEvents:
    """The cache channels' last events: this process's hubs alone (the memory store, which
    the node leaves unused), or shared in the cluster's Redis, sealed with the cluster
    secret."""
    if settings.broker == "memory":
        from parley.backends.memory.last_events import MemoryCachedEvents

        return MemoryCachedEvents()
    from parley.backends.redis.last_events import RedisCachedEvents

    return RedisCachedEvents(
        settings.broker, prefix=settings.redis_prefix, secret=settings.cluster_secret.encode()
    )


def make_login_attempts(settings: Settings) -> LoginAttempts:
    """Failed logins counted in this process, or in the cluster's Redis."""
    if settings.broker == "memory":
        from parley.backends.memory.throttle import MemoryLoginAttempts

        return MemoryLoginAttempts()
    from parley.backends.redis.throttle import RedisLoginAttempts

    return RedisLoginAttempts(settings.broker, prefix=settings.redis_prefix)


def make_database(settings: Settings) -> Database | None:
    """The process's one handle on the database the `store` setting names, not yet open; None
    for memory. Every store of that technology shares it."""
    if settings.store == "memory":
        return None
    if settings.store == "postgres":
        from parley.backends.postgres.db import PostgresDb

        return PostgresDb(settings.postgres_url)
    from parley.backends.sqlite.db import SqliteDb

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SqliteDb(settings.data_dir / "parley.db")


async def open_database(settings: Settings) -> Database | None:
    """`make_database`, opened, with its pending migrations applied and logged; the caller
    closes it after the stores. A failed migration is CannotStart."""
    db = make_database(settings)
    if db is None:
        return None
    try:
        await db.open()
    except Exception as exc:  # unreachable, refused, no such database: the driver's words
        raise CannotStart(f"cannot open {db.describe()}: {exc}") from exc
    try:
        _log_applied(db, await db.migrate())
    except MigrationFailed as exc:
        _log_applied(db, exc.applied)
        await db.close()
        raise CannotStart(f"{db.describe()}: {exc}") from exc
    except BaseException:
        await db.close()
        raise
    return db


def _log_applied(db: Database, applied: list[Migration]) -> None:
    for migration in applied:
        logs.info(
            "migration_applied",
            database=db.describe(),
            version=migration.version,
            name=migration.name,
        )


@dataclass(frozen=True)
class Stores:
    """Every store of the process, on its one database handle."""

    history: HistoryStore
    users: UserStore
    grants: GrantStore
    keys: KeyDirectoryStore
    webhooks: WebhookQueue
    conversations: ConversationStore
    bots: BotStore


def make_stores(db: Database | None) -> Stores:
    """The stores on `db` (from `open_database`), not started: memory ones when it is None."""
    if db is None:
        from parley.backends.memory.bots import MemoryBotStore
        from parley.backends.memory.conversations import MemoryConversationStore
        from parley.backends.memory.grants import MemoryGrantStore
        from parley.backends.memory.history import MemoryHistoryStore
        from parley.backends.memory.keys import MemoryKeyDirectoryStore
        from parley.backends.memory.users import MemoryUserStore
        from parley.backends.memory.webhooks import MemoryWebhookQueue

        return Stores(
            MemoryHistoryStore(),
            MemoryUserStore(),
            MemoryGrantStore(),
            MemoryKeyDirectoryStore(),
            MemoryWebhookQueue(),
            MemoryConversationStore(),
            MemoryBotStore(),
        )
    from parley.backends.sqlite.db import SqliteDb

    if isinstance(db, SqliteDb):
        from parley.backends.sqlite.bots import SqliteBotStore
        from parley.backends.sqlite.conversations import SqliteConversationStore
        from parley.backends.sqlite.grants import SqliteGrantStore
        from parley.backends.sqlite.history import SqliteHistoryStore
        from parley.backends.sqlite.keys import SqliteKeyDirectoryStore
        from parley.backends.sqlite.users import SqliteUserStore
        from parley.backends.sqlite.webhooks import SqliteWebhookQueue

        return Stores(
            SqliteHistoryStore(db),
            SqliteUserStore(db),
            SqliteGrantStore(db),
            SqliteKeyDirectoryStore(db),
            SqliteWebhookQueue(db),
            SqliteConversationStore(db),
            SqliteBotStore(db),
        )
    from parley.backends.postgres.db import PostgresDb

    if isinstance(db, PostgresDb):
        from parley.backends.postgres.bots import PostgresBotStore
        from parley.backends.postgres.conversations import PostgresConversationStore
        from parley.backends.postgres.grants import PostgresGrantStore
        from parley.backends.postgres.history import PostgresHistoryStore
        from parley.backends.postgres.keys import PostgresKeyDirectoryStore
        from parley.backends.postgres.users import PostgresUserStore
        from parley.backends.postgres.webhooks import PostgresWebhookQueue

        return Stores(
            PostgresHistoryStore(db),
            PostgresUserStore(db),
            PostgresGrantStore(db),
            PostgresKeyDirectoryStore(db),
            PostgresWebhookQueue(db),
            PostgresConversationStore(db),
            PostgresBotStore(db),
        )
    raise TypeError(f"no stores for {db.describe()}")


async def make_node(settings: Settings, db: Database | None) -> Node:
    """The node with its stores and broker started and its access decisions attached:
    everything but the listener (`start` adds it; bench/inproc_chat.py drives a node without
    one). `db` is the process's database handle from `open_database`, which the caller closes
    after `close_node`."""
    stores = make_stores(db)
    await stores.history.start()
    await stores.users.start()
    await stores.grants.start()
    await stores.keys.start()
    await stores.webhooks.start()
    await stores.conversations.start()
    await stores.bots.start()
    node_id = settings.node_id or new_node_id()
    broker = make_broker(settings, node_id)
    node = Node(
        settings,
        stores.history,
        broker,
        make_presence(settings),
        node_id,
        make_counts(settings),
        make_last_events(settings),
    )
    # webhooks first: the lease's start may find channels a previous process left occupied
    node.webhooks = Webhooks(settings, node.events, stores.webhooks, node.counts)
    await node.webhooks.start()
    await broker.start(node.cluster)
    await node.cluster.start()
    await node.identities.load_jwks()
    node.login_attempts = make_login_attempts(settings)
    node.access = Access(node, stores.grants, stores.users)
    await node.access.start()
    node.keys = KeyDirectory(stores.keys, settings.apps, partial(publish_key_entry, node))
    await node.keys.start()
    node.conversations = Conversations(node, stores.conversations, stores.users)
    node.conversations.bot_store = stores.bots
    await node.conversations.start()
    node.bots = Bots(node, stores.bots, node.conversations, stores.webhooks, node.webhooks.wake)
    node.webhooks.bot_credentials = partial(bot_credentials, stores.bots)
    node.bots.start()
    return node


async def bot_credentials(store: BotStore, app_id: str, bot_id: str) -> tuple[str, str] | None:
    """What a bot's webhooks are signed with: its id and its webhook secret."""
    bot = await store.get(app_id, bot_id)
    return (bot.id, bot.secret_hash) if bot is not None else None


async def publish_key_entry(node: Node, app: AppConfig, entry: KeyEntry) -> None:
    """A new key directory entry, on the app's read-only `parley-keys` channel."""
    data = orjson.dumps(entry.wire()).decode()
    await node.publish(app, KEYS_EVENT, data, [KEYS_CHANNEL])


async def close_node(node: Node) -> None:
    """Drain the node's connections and close its stores (not the database handle)."""
    await node.shutdown()
    if node.webhooks is not None:  # what the drain made is queued (it asks the counts)
        await node.webhooks.close()
    await node.last_events.close()  # the last events it published are written first (briefly)
    await node.counts.close()  # this node's numbers leave the cluster's answers
    await node.presence.close()
    close_attempts = getattr(node.login_attempts, "close", None)
    if close_attempts is not None:
        await close_attempts()
    access = node.access
    if access is not None:
        await access.close()
        await access.users.close()
        await access.grants.close()
    if node.keys is not None:
        await node.keys.close()
        await node.keys.store.close()
    if node.conversations is not None:  # its last stored events reach the bots
        await node.conversations.close()
        await node.conversations.store.close()
    if node.bots is not None:
        await node.bots.store.close()
    if node.webhooks is not None:
        await node.webhooks.queue.close()


async def start(settings: Settings) -> Running:
    db = await open_database(settings)
    try:
        return await _start(settings, db)
    except BaseException:
        if db is not None:
            await db.close()
        raise


async def _start(settings: Settings, db: Database | None) -> Running:
    node = await make_node(settings, db)
    try:
        return await _listen(settings, db, node)
    except BaseException:
        await close_node(node)  # its tasks (the webhook dispatcher...) stop before the db closes
        raise


async def _listen(settings: Settings, db: Database | None, node: Node) -> Running:
    router = Router(node)
    ops.register(router)
    pusher.register(router)
    builtin.register(router)
    keys.register(router)
    webhooks.register(router)
    conversations.register(router)
    bots.register(router)

    limits = Limits(node.max_message_bytes, node.max_outbound_bytes)

    def ws_factory(path: str, query: str, headers: Any) -> WebSocket | None:
        if not path.startswith(("/app/", "/token/")):
            return None
        return WebSocket(Session(node, path, query, headers), limits)

    server = Server(
        router,
        ws_factory,
        max_frame_bytes=node.max_message_bytes,
        max_body_bytes=settings.max_http_body_bytes,
        max_head_bytes=settings.max_http_head_bytes,
        header_timeout_s=settings.header_timeout_s,
        keepalive_timeout_s=settings.keepalive_timeout_s,
        proxies=TrustedProxies(parse_networks(settings.trusted_proxies)),
        max_connections_per_address=settings.max_connections_per_address,
    )
    tls = (
        TlsCertificate(Path(settings.tls_cert), Path(settings.tls_key))
        if settings.tls_cert
        else None
    )
    worker = "PARLEY_WORKER" in os.environ  # one of `parley serve --workers N` (parley.workers)
    port = await server.start(
        settings.host, settings.port, tls.context if tls else None, reuse_port=worker
    )
    node.start()
    return Running(node, server, port, db, tls, start_outbox(settings, node, db))


def start_outbox(settings: Settings, node: Node, db: Database | None) -> OutboxRelay | None:
    """The outbox relay, started, when the settings ask for one (PostgreSQL only)."""
    if not settings.outbox:
        return None
    from parley.backends.postgres.db import PostgresDb
    from parley.backends.postgres.outbox import PostgresOutbox

    assert isinstance(db, PostgresDb)  # settings refuse an outbox on another store
    relay = OutboxRelay(node, PostgresOutbox(db), settings.outbox_poll_s)
    relay.start()
    return relay


async def stop(running: Running) -> None:
    await running.server.stop_listening()
    if running.outbox is not None:
        await running.outbox.close()
    await close_node(running.node)
    running.server.close_http()
    if running.db is not None:
        await running.db.close()


def announce(settings: Settings, port: int, node_id: str) -> None:
    host = settings.host
    ws, http = ("wss", "https") if settings.tls_cert else ("ws", "http")
    print(f"Parley {__version__} listening on {host}:{port} ({speedups.STATUS})", flush=True)
    for app in settings.apps:
        print(
            f"  app {app.id}: WebSocket {ws}://{host}:{port}/app/{app.key}?protocol=7 | "
            f"HTTP API {http}://{host}:{port}/apps/{app.id} | key={app.key} secret={app.secret}",
            flush=True,
        )
    print(
        f"  health {http}://{host}:{port}/healthz | metrics {http}://{host}:{port}/metrics",
        flush=True,
    )
    if settings.broker != "memory":
        print(
            f"  node {node_id} of the cluster on {without_password(settings.broker)} "
            f"(prefix {settings.redis_prefix!r})",
            flush=True,
        )


def reload_tls(running: Running) -> None:
    """SIGHUP: load the TLS certificate and key again (a failure keeps the old ones)."""
    if running.tls is None:
        logs.info("sighup ignored", reason="no TLS certificate configured")
        return
    problem = running.tls.reload()
    if problem is None:
        logs.info("tls certificate reloaded", cert=str(running.tls.cert_file))
    else:
        logs.warning("tls certificate not reloaded", reason=problem)


async def serve(settings: Settings) -> None:
    running = await start(settings)
    # What was built at start (settings, apps, modules) lives as long as the process: the
    # cycle collector need not walk it again, and a higher first threshold makes its rounds
    # rarer under a high allocation rate (1-4 % of the CPU of a busy server otherwise).
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)
    # Handlers first: whoever reads "listening" may send SIGTERM at once and get a clean stop.
    stop_event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop_event.set)
    loop.add_signal_handler(signal.SIGHUP, reload_tls, running)
    logs.info(
        "listening",
        host=settings.host,
        port=running.port,
        code=speedups.STATUS,
        node_id=running.node.node_id,
        settings=describe(settings),
    )
    announce(settings, running.port, running.node.node_id)
    await stop_event.wait()
    logs.info("shutting down")
    await stop(running)
    logs.info("stopped")
