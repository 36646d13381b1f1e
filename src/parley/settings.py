"""One frozen, validated `Settings`, read once: flags > PARLEY_* env > TOML file > defaults.

The default app, when none is configured, comes wholly from PARLEY_APP_* variables or is
generated once and kept in the data directory so its credentials survive restarts.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
import ipaddress
import os
import re
import secrets
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from parley.errors import ConfigError
from parley.redis_url import parse_sentinel

_APP_ID = re.compile(r"[0-9]+")


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(raw: str) -> tuple[Network, ...]:
    """`10.0.0.0/8, 127.0.0.1, ::1` as networks; ValueError names a bad entry."""
    networks = []
    for item in raw.split(","):
        item = item.strip()
        if item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network") from None
    return tuple(networks)


WEBHOOK_EVENTS = (
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
    "subscription_count",
    # Parley's: conversations (core.conversations) and bots (core.bots)
    "conversation_created",
    "conversation_requested",
    "conversation_accepted",
    "conversation_declined",
    "conversation_member_added",
    "conversation_member_removed",
    "conversation_bot_added",
    "bot_created",
    "bot_message",
)


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    """One webhook target of an app: Pusher's webhook POSTs of the `events` named (all when
    empty) to `url`."""

    url: str
    events: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", self.url):
            raise ConfigError(f"webhook url must be an http:// or https:// URL, got {self.url!r}")
        unknown = [e for e in self.events if e not in WEBHOOK_EVENTS]
        if unknown:
            raise ConfigError(
                f"webhook events: unknown {', '.join(unknown)}; known: {', '.join(WEBHOOK_EVENTS)}"
            )

    def wants(self, name: str) -> bool:
        return not self.events or name in self.events


def _webhook_events(raw: str) -> tuple[str, ...]:
    return tuple(e.strip() for e in raw.split(",") if e.strip())


@functools.lru_cache(maxsize=64)
def _patterns(raw: str) -> tuple[str, ...]:
    """A setting's comma-separated channel patterns (parsed once per value)."""
    return tuple(p.strip() for p in raw.split(",") if p.strip())


PRESENCE_PREFIX = "presence-"


def _matches_presence(pattern: str) -> bool:
    """Can `pattern` (fnmatch style) match some presence channel? Its literal start, up to
    its first wildcard, must agree with "presence-"."""
    literal = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    return PRESENCE_PREFIX.startswith(literal) or literal.startswith(PRESENCE_PREFIX)


@dataclass(frozen=True, slots=True)
class AppConfig:
    """One tenant: its credentials, switches and limits."""

    id: str
    key: str
    secret: str
    name: str = ""
    enabled: bool = True
    client_events: bool = False
    client_event_rate: float = 10.0  # per connection per second; 0 lifts the limit
    max_connections: int = 0  # 0: unlimited
    # users in one presence channel (Pusher's 100); tested up to 10,000: the subscription's
    # answer lists them all unless the channel's member events are off (below)
    max_presence_members: int = 100
    # comma-separated patterns (fnmatch style) of presence channels without member events:
    # no member_added/member_removed frames nor webhooks; members get parley:member_count
    presence_events_off: str = ""
    max_presence_user_info_bytes: int = 1024
    max_user_id_length: int = 128
    max_event_bytes: int = 10240
    max_event_name_length: int = 200
    max_channels_per_event: int = 100
    max_batch_size: int = 10
    max_watchlist: int = 100
    max_channels_per_connection: int = 1000  # 0: no limit; over it a pusher:error
    subscribe_rate: float = 100.0  # subscriptions per connection per second, 0: no limit; 4301
    # HTTP API quotas per app, 0 for none: requests a second (a second's worth may burst)
    # and requests being answered at once. Over either: 429 with Retry-After.
    max_api_requests_per_second: float = 0.0
    max_api_concurrent_requests: int = 0
    subscription_count: bool = False
    cache_ttl_s: float = 1800.0
    # Handshake JWTs: HS256 with `secret`, or RS256/ES256/EdDSA with these PEM files
    # (comma-separated paths); `aud` must be jwt_audience (default: the app key).
    jwt_public_keys: str = ""
    jwt_jwks: str = ""  # a JWKS file path or http(s) URL (fetched at start, then every 5 min)
    jwt_issuer: str = ""
    jwt_audience: str = ""
    # "pusher": the app's own backend signs channel auth (Pusher's model). "builtin": Parley
    # authorizes by identity and grants, issues tokens from its user store and serves the
    # pusher-js auth endpoints itself.
    auth: str = "pusher"
    token_ttl_s: float = 3600.0
    read_only_channels: str = ""  # comma-separated patterns; client events refused there
    # comma-separated patterns: client events there must be signed by a key of the sender's
    # own user in the key directory (core.keys), or they are refused
    signed_channels: str = ""
    keys_unendorsed: bool = False  # a user's further device keys need no endorsement
    max_keys_per_user: int = 10  # current keys per user in the key directory
    # POST /apps/{id}/keys/generate: the server makes a device's key pairs and hands the private
    # halves over once (weaker: the server saw them; docs/protocol.md, "The key directory")
    server_generated_keys: bool = False
    max_conversation_members: int = 100  # users in one conversation (core.conversations)
    conversation_request_messages: int = 1  # a requester's messages before acceptance
    max_pending_requests: int = 20  # a user's one-to-one requests not yet answered (429 beyond)
    encryption_master_key_base64: str = ""  # for the built-in authorizer's shared_secret
    allowed_origins: str = ""  # comma-separated; checked when a session cookie identifies
    # ...and, when on, for every WebSocket handshake and built-in auth call with an Origin
    check_origin: bool = False
    session_cookie: str = ""  # cookie name that identifies the user at the handshake
    session_secret: str = ""  # itsdangerous URLSafeTimedSerializer secret
    session_salt: str = "parley-session"
    session_max_age_s: float = 86400.0
    session_introspection_url: str = ""  # or ask the app: POST {cookie} -> {user_id, info}
    # Pusher webhooks: TOML [[apps.webhooks]] {url, events}; env PARLEY_APP_WEBHOOK_URL and
    # PARLEY_APP_WEBHOOK_EVENTS (comma-separated) add one for the default app
    webhooks: tuple[WebhookConfig, ...] = ()
    webhook_url: str = ""
    webhook_events: str = ""

    def __post_init__(self) -> None:
        for name in ("id", "key", "secret"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"app {name!r} must be a non-empty string")
        if not _APP_ID.fullmatch(self.id):
            raise ConfigError(
                f"app 'id' must be digits (the official Pusher SDKs refuse any other), got {self.id!r}"
            )
        if ":" in self.key:
            raise ConfigError("app 'key' may not contain ':'")
        if self.auth not in ("pusher", "builtin"):
            raise ConfigError(f"app {self.id}: 'auth' must be pusher or builtin")
        if self.check_origin and not self.allowed_origins.strip():
            raise ConfigError(f"app {self.id}: 'check_origin' needs 'allowed_origins'")
        if self.session_cookie and not (self.session_secret or self.session_introspection_url):
            raise ConfigError(
                f"app {self.id}: 'session_cookie' needs 'session_secret' or "
                "'session_introspection_url'"
            )
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", "float") and (isinstance(value, bool) or value < 0):
                raise ConfigError(f"app {self.id}: {f.name!r} must be a number >= 0")
        for pattern in _patterns(self.presence_events_off):
            if not _matches_presence(pattern):
                raise ConfigError(
                    f"app {self.id}: 'presence_events_off' pattern {pattern!r} matches no "
                    f"presence channel (their names start with {PRESENCE_PREFIX!r})"
                )
        if self.webhook_url:
            extra = WebhookConfig(self.webhook_url, _webhook_events(self.webhook_events))
            object.__setattr__(self, "webhooks", (*self.webhooks, extra))
        elif self.webhook_events:
            raise ConfigError(f"app {self.id}: 'webhook_events' needs 'webhook_url'")

    def member_events_off(self, channel: str) -> bool:
        """Are member events off on this presence channel (`presence_events_off`)? Then no
        member_added/member_removed frames or webhooks: its members are told counts."""
        raw = self.presence_events_off
        return bool(raw) and any(fnmatch.fnmatchcase(channel, p) for p in _patterns(raw))


DEFAULT_DATA_DIR = Path("parley-data")


@dataclass(frozen=True, slots=True)
class HistoryRule:
    """Retention for channels whose name matches `pattern` (fnmatch style, e.g. `presence-*`)."""

    pattern: str
    enabled: bool = True
    max_count: int = 1000
    max_age_s: float = 7 * 86400.0

    def __post_init__(self) -> None:
        if self.max_count < 1 or self.max_age_s <= 0:
            raise ConfigError(f"[[history]] {self.pattern!r}: max_count and max_age_s must be > 0")


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 6001
    data_dir: Path = DEFAULT_DATA_DIR
    activity_timeout_s: int = 120  # sent to clients; the server pings after this much silence
    pong_timeout_s: float = 30.0  # then closes with 4201 after this much more
    max_frame_bytes: int = 65536  # larger WebSocket messages are refused with an error event
    max_outbound_bytes: int = 4 * 1024 * 1024  # a slower reader is closed with 4100
    max_http_body_bytes: int = 1024 * 1024
    max_http_head_bytes: int = 16 * 1024  # request line and headers; larger: 431
    # WebSocket connections from one client address (its X-Forwarded-For from a trusted
    # proxy): 0, the default, is no limit (a proxy without trusted_proxies would share one);
    # over it the upgrade is answered 429 and pusher-js retries after its back-off.
    max_connections_per_address: int = 0
    # A request head (HTTP, or a WebSocket upgrade), then its body, must each arrive within
    # this (408): a head is one round trip, 10 s leaves a slow link a few retransmissions
    # (Apache's mod_reqtimeout starts at 20 s, nginx at 60). A kept-alive HTTP connection
    # with nothing under way is closed after the next: 60 s as a load balancer's idle
    # timeout (AWS ALB), longer than Node's or uvicorn's 5 s, so that a backend publishing
    # now and then seldom finds its pooled connection just closed.
    header_timeout_s: float = 10.0
    keepalive_timeout_s: float = 60.0
    shutdown_grace_s: float = 5.0
    # TLS built in: PEM certificate chain and key (both or neither); SIGHUP reloads them.
    tls_cert: str = ""
    tls_key: str = ""
    # When set, GET /metrics needs `Authorization: Bearer <metrics_token>` (health stays open).
    metrics_token: str = ""
    # Proxies (addresses or networks, comma-separated) whose X-Forwarded-For is believed.
    trusted_proxies: str = ""
    log_level: str = "info"
    log_format: str = "json"
    store: str = "sqlite"  # history and state: memory, sqlite (under data_dir) or postgres
    postgres_url: str = "postgresql://postgres@127.0.0.1:5432/parley"
    # Several nodes: "memory" (this process alone) or a redis:// or rediss:// URL (password
    # and database in it), which needs a cluster_secret of 32 bytes or more (the HMAC of every
    # message between nodes) and a shared store (postgres). node_id names this node (random
    # when empty); redis_prefix separates clusters sharing one Redis.
    broker: str = "memory"
    cluster_secret: str = ""
    node_id: str = ""
    redis_prefix: str = "parley"
    # A node renews its presence lease this often; a node silent for node_lease_s is dead:
    # its members are removed (member_removed sent) within node_lease_s + presence_refresh_s.
    presence_refresh_s: float = 5.0
    node_lease_s: float = 10.0
    # Publish what applications commit to the parley_outbox table (PostgreSQL only): one node
    # of a cluster at a time, woken by NOTIFY, polling every outbox_poll_s as the fallback.
    outbox: bool = False
    outbox_poll_s: float = 1.0
    # Webhooks (apps' `webhooks`): retried with backoff for webhook_retry_s, then
    # dead-lettered; events within webhook_batch_ms of each other go in one POST (0: one
    # each); channel_vacated and member_removed wait webhook_hold_s, dropped if undone.
    webhook_retry_s: float = 86400.0
    webhook_batch_ms: float = 0.0
    webhook_hold_s: float = 3.0
    webhook_timeout_s: float = 10.0
    history_max_count: int = 1000
    history_max_age_s: float = 7 * 86400.0
    recovery_limit: int = 1000  # a resume needing more than this answers recovered: false
    apps: tuple[AppConfig, ...] = field(default_factory=tuple)
    history: tuple[HistoryRule, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"'port' must be between 0 and 65535, got {self.port}")
        if self.activity_timeout_s <= 0:
            raise ConfigError("'activity_timeout_s' must be > 0 (pusher-js refuses 0)")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError("'log_level' must be debug, info, warning or error")
        if self.store not in ("memory", "sqlite", "postgres"):
            raise ConfigError("'store' must be memory, sqlite or postgres")
        if self.history_max_count < 1 or self.history_max_age_s <= 0 or self.recovery_limit < 0:
            raise ConfigError("history_max_count, history_max_age_s and recovery_limit must be > 0")
        for name in ("header_timeout_s", "keepalive_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"'{name}' must be > 0")
        if self.max_http_head_bytes < 1024:
            raise ConfigError("'max_http_head_bytes' must be at least 1024")
        try:
            parse_networks(self.trusted_proxies)
        except ValueError as exc:
            raise ConfigError(f"'trusted_proxies': {exc}") from None
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("'tls_cert' and 'tls_key' go together: give both or neither")
        self._check_cluster()
        if self.outbox and self.store != "postgres":
            raise ConfigError(
                "'outbox' needs store = \"postgres\": the outbox is a PostgreSQL table"
            )
        if self.outbox_poll_s <= 0:
            raise ConfigError("'outbox_poll_s' must be > 0")
        if self.log_format not in ("json", "text"):
            raise ConfigError("'log_format' must be json or text")
        ids = [a.id for a in self.apps]
        keys = [a.key for a in self.apps]
        if len(set(ids)) != len(ids) or len(set(keys)) != len(keys):
            raise ConfigError("apps must have distinct ids and keys")

    def _check_cluster(self) -> None:
        if self.broker != "memory" and not self.broker.startswith(
            ("redis://", "rediss://", "redis+sentinel://", "rediss+sentinel://")
        ):
            raise ConfigError(
                "'broker' must be memory or a redis://, rediss://, redis+sentinel:// or "
                f"rediss+sentinel:// URL, got {without_password(self.broker)!r}"
            )
        if self.broker.startswith(("redis+sentinel://", "rediss+sentinel://")):
            try:
                parse_sentinel(self.broker)
            except ValueError as exc:
                raise ConfigError(
                    f"'broker' {without_password(self.broker)!r}: {exc} (the form is "
                    "redis+sentinel://[:password@]host1:port1[,host2:port2...]/service[/db])"
                ) from None
        if self.node_id and not _NODE_ID.fullmatch(self.node_id):
            raise ConfigError("'node_id' must be 1 to 64 characters of A-Z a-z 0-9 _ . -")
        if not _NODE_ID.fullmatch(self.redis_prefix):
            raise ConfigError("'redis_prefix' must be 1 to 64 characters of A-Z a-z 0-9 _ . -")
        if self.presence_refresh_s <= 0 or self.node_lease_s <= self.presence_refresh_s:
            raise ConfigError("'node_lease_s' must be longer than 'presence_refresh_s' (> 0)")
        if self.broker == "memory":
            return
        if len(self.cluster_secret.encode()) < 32:
            raise ConfigError(
                "a Redis broker needs 'cluster_secret' (PARLEY_CLUSTER_SECRET) of at least 32 "
                "bytes: every message between nodes is signed with it (try: openssl rand -hex 32)"
            )
        if self.store != "postgres":
            raise ConfigError(
                'a Redis broker needs store = "postgres" (PARLEY_STORE=postgres): the nodes '
                "of a cluster must share one history"
            )


_NODE_ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_APP_FIELDS = {f.name: f for f in fields(AppConfig)}
_SERVER_FIELDS = {f.name: f for f in fields(Settings) if f.name not in ("apps", "history")}
_HISTORY_FIELDS = {f.name: f for f in fields(HistoryRule)}


def _coerce(kind: Any, value: Any, where: str) -> Any:
    try:
        if kind in ("bool", bool):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind in ("int", int):
            return int(value)
        if kind in ("float", float):
            return float(value)
        if kind in ("Path",):
            return Path(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: cannot read {value!r} as {kind}") from None


def _webhooks(raw: Any, where: str) -> tuple[WebhookConfig, ...]:
    """[[apps.webhooks]] tables: {url, events = [names]}."""
    if not isinstance(raw, list) or not all(isinstance(w, dict) for w in raw):
        raise ConfigError(f"{where}: expected [[apps.webhooks]] tables with url and events")
    out = []
    for i, table in enumerate(raw):
        unknown = set(table) - {"url", "events"}
        if unknown:
            raise ConfigError(f"{where}[{i}]: unknown key {sorted(unknown)[0]!r} (url, events)")
        events = table.get("events", [])
        if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
            raise ConfigError(f"{where}[{i}].events: expected a list of event names")
        if not isinstance(table.get("url"), str):
            raise ConfigError(f"{where}[{i}]: missing 'url'")
        try:
            out.append(WebhookConfig(table["url"], tuple(events)))
        except ConfigError as exc:
            raise ConfigError(f"{where}[{i}]: {exc}") from None
    return tuple(out)


def _app_from_mapping(raw: Mapping[str, Any], where: str) -> AppConfig:
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in _APP_FIELDS:
            raise ConfigError(f"{where}: unknown app setting {name!r}")
        if name == "webhooks":
            values[name] = _webhooks(value, f"{where}.webhooks")
            continue
        values[name] = _coerce(_APP_FIELDS[name].type, value, f"{where}.{name}")
    for name in ("id", "key", "secret"):
        if name not in values:
            raise ConfigError(f"{where}: missing {name!r}")
    return AppConfig(**values)


def generate_app() -> dict[str, str]:
    """Fresh credentials; the id is numeric because the PyPI SDK accepts no other."""
    return {
        "id": str(secrets.randbelow(9_000_000) + 1_000_000),
        "key": secrets.token_hex(10),
        "secret": secrets.token_hex(16),
    }


def _persisted_default_app(data_dir: Path) -> dict[str, str]:
    path = data_dir / "default-app.json"
    if path.exists():
        try:
            stored = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        return {k: str(stored[k]) for k in ("id", "key", "secret")}
    data_dir.mkdir(parents=True, exist_ok=True)
    creds = generate_app()
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(creds))
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return creds


def load_settings(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Settings:
    """Merge the sources into one Settings; every problem names the key that caused it."""
    env = os.environ if env is None else env
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    file_data: dict[str, Any] = {}
    path = config_file or (Path(env["PARLEY_CONFIG"]) if env.get("PARLEY_CONFIG") else None)
    if path is not None:
        try:
            file_data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None

    _check_layout(file_data, path)
    server: dict[str, Any] = {}
    for name, value in (file_data.get("server") or {}).items():
        if name not in _SERVER_FIELDS:
            raise ConfigError(f"[server]: unknown setting {name!r}")
        server[name] = _coerce(_SERVER_FIELDS[name].type, value, f"[server].{name}")
    for name, f in _SERVER_FIELDS.items():
        env_name = "PARLEY_" + name.upper()
        if env_name in env:
            server[name] = _coerce(f.type, env[env_name], env_name)
    for name, value in flags.items():
        if name not in _SERVER_FIELDS:
            raise ConfigError(f"unknown flag --{name.replace('_', '-')}")
        server[name] = _coerce(_SERVER_FIELDS[name].type, value, f"--{name}")

    apps = [
        _app_from_mapping(raw, f"[[apps]] #{i + 1}")
        for i, raw in enumerate(file_data.get("apps", []))
    ]
    env_app = {
        name: env["PARLEY_APP_" + name.upper()]
        for name in _APP_FIELDS
        if "PARLEY_APP_" + name.upper() in env
    }
    if env_app or not apps:
        data_dir = server.get("data_dir", DEFAULT_DATA_DIR)
        base: dict[str, Any] = {}
        if not all(k in env_app for k in ("id", "key", "secret")):
            base = dict(_persisted_default_app(Path(data_dir)))
        base.update(env_app)
        apps.insert(0, _app_from_mapping(base, "default app (PARLEY_APP_*)"))
    rules = []
    for i, raw in enumerate(file_data.get("history", [])):
        where = f"[[history]] #{i + 1}"
        unknown = sorted(set(raw) - set(_HISTORY_FIELDS))
        if unknown:
            raise ConfigError(
                f"{where}: unknown key {unknown[0]!r} (expected {', '.join(_HISTORY_FIELDS)})"
            )
        if "pattern" not in raw:
            raise ConfigError(f"{where}: missing 'pattern' (the channel names it applies to)")
        rules.append(
            HistoryRule(
                **{k: _coerce(_HISTORY_FIELDS[k].type, v, f"{where}.{k}") for k, v in raw.items()}
            )
        )
    return Settings(**server, apps=tuple(apps), history=tuple(rules))


# The TOML file's sections: [server] is one table, [[apps]] and [[history]] arrays of tables.
_SECTIONS = {"server": dict, "apps": list, "history": list}


def _check_layout(file_data: Mapping[str, Any], path: Path | None) -> None:
    """Every top-level key of the file is a known section of the right shape."""
    for name, value in file_data.items():
        where = f"config file {path}"
        shape = _SECTIONS.get(name)
        if shape is None:
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{where}: {name!r} is outside any section; put it under [server]"
                )
            raise ConfigError(f"{where}: unknown section [{name}] (known: {_known_sections()})")
        if shape is dict and not isinstance(value, dict):
            raise ConfigError(f"{where}: [{name}] must be a table: write [{name}]")
        if shape is list and not (
            isinstance(value, list) and all(isinstance(item, dict) for item in value)
        ):
            raise ConfigError(
                f"{where}: [[{name}]] is a list of tables, one per entry: write [[{name}]], "
                f"not [{name}]"
            )


def _known_sections() -> str:
    return ", ".join(f"[{n}]" if shape is dict else f"[[{n}]]" for n, shape in _SECTIONS.items())


# Read elsewhere than load_settings: the config file's path, and the switch to run the source.
_OTHER_VARIABLES = ("PARLEY_CONFIG", "PARLEY_COMPILED", "PARLEY_WORKER")


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """One warning per PARLEY_* variable that no setting reads, naming the closest known one:
    a misspelt variable would otherwise be ignored without a word. PARLEY_TEST_* are the test
    suite's."""
    known = [
        *_OTHER_VARIABLES,
        *("PARLEY_" + name.upper() for name in _SERVER_FIELDS),
        *("PARLEY_APP_" + name.upper() for name in _APP_FIELDS),
    ]
    warnings = []
    for name in sorted(env):
        if name.startswith("PARLEY_") and name not in known and not name.startswith("PARLEY_TEST_"):
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            warnings.append(f"unknown variable {name} is ignored{hint}")
    return warnings


def warn_unknown_variables(env: Mapping[str, str] | None = None) -> None:
    """Print `unknown_variables` to stderr, one line each (the commands call it once loaded)."""
    for warning in unknown_variables(os.environ if env is None else env):
        print(f"parley: warning: {warning}", file=sys.stderr, flush=True)


def describe(settings: Settings) -> dict[str, Any]:
    """Settings without secrets, for the start-up log line."""
    out = dataclasses.asdict(settings)
    out["data_dir"] = str(settings.data_dir)
    out["postgres_url"] = without_password(settings.postgres_url)
    out["metrics_token"] = "***" if settings.metrics_token else ""
    out["cluster_secret"] = "***" if settings.cluster_secret else ""
    out["broker"] = without_password(settings.broker)
    out["apps"] = [{"id": a.id, "key": a.key, "enabled": a.enabled} for a in settings.apps]
    return out


def without_password(url: str) -> str:
    """A database or Redis URL fit for logs: its password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user.partition(':')[0]}:***@{host}"))
