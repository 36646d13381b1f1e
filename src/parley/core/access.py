"""Who may do what, for apps that use Parley's built-in authorizer; and read-only channels
for every app.

Decisions come from identity (a verified JWT or signin), per-user channels and grants
(PubNub Access Manager's model). Grants are kept in memory per app (`GrantIndex`), loaded from
the store at start, followed across nodes through the store's change feed, and re-checked
against live subscriptions when one is removed or runs out: a subscription no longer allowed
ends within a second with `parley:revoked`.
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from parley import logs
from parley.auth.grants import GrantIndex, resource_matches, subject_matches
from parley.protocol.channels import ChannelType, channel_type
from parley.protocol.connection import PusherConnection
from parley.settings import AppConfig

if TYPE_CHECKING:
    from parley.auth.grants import Grant
    from parley.backends.grants import GrantStore
    from parley.backends.users import UserStore

USER_CHANNEL_PREFIX = "private-user-"
POLL_INTERVAL_S = 0.25


class Connection(Protocol):
    """A live connection, as Access sees it: its protocol state (user, subscriptions)."""

    @property
    def conn(self) -> PusherConnection | None: ...


class Connections(Protocol):
    """What Access needs of the node (core.node.Node): the apps, their live connections,
    and two operations on them."""

    @property
    def apps(self) -> tuple[AppConfig, ...]: ...

    def connections(self, app: AppConfig) -> Sequence[Connection]: ...

    def online(self, app: AppConfig, user_id: str) -> bool: ...

    def revoke(self, session: Any, channel: str, reason: str) -> None:
        """End the subscription to `channel` of `session` (one of `connections`)."""

    def terminate_user(self, app: AppConfig, user_id: str, reason: str) -> int: ...


def channel_patterns(raw: str) -> tuple[str, ...]:
    """A setting's comma-separated channel patterns."""
    return tuple(p.strip() for p in raw.split(",") if p.strip())


class Access:
    def __init__(self, live: Connections, grants: GrantStore, users: UserStore) -> None:
        self.live = live
        self.grants = grants
        self.users = users
        self.apps: dict[str, AppConfig] = {app.id: app for app in live.apps}
        self.index: dict[str, GrantIndex] = {app_id: GrantIndex() for app_id in self.apps}
        self._read_only = {app.id: channel_patterns(app.read_only_channels) for app in live.apps}
        # apps where any subscriber may write: Pusher-mode, no read-only channels
        self._open_writes = {
            app.id for app in live.apps if app.auth != "builtin" and not self._read_only[app.id]
        }
        self._task: asyncio.Task[None] | None = None
        self._since_ms = int(time.time() * 1000)

    async def start(self) -> None:
        for app_id, index in self.index.items():
            for grant in await self.grants.active(app_id):
                index.add(grant)
        self._task = asyncio.get_running_loop().create_task(self._follow())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    # -- decisions ---------------------------------------------------------------------------

    def read_only(self, app: AppConfig, channel: str) -> bool:
        if app.auth == "builtin" and channel.startswith(USER_CHANNEL_PREFIX):
            return True  # notification channels: only the server writes there
        patterns = self._read_only.get(app.id, ())
        return bool(patterns) and any(fnmatch.fnmatchcase(channel, p) for p in patterns)

    def subscribe_problem(
        self, app: AppConfig, user_id: str | None, channel: str, ctype: ChannelType
    ) -> str | None:
        """Why `user_id` may not subscribe to `channel`, or None. Pusher-mode apps decide by
        their signature alone (already checked)."""
        if app.auth != "builtin" or not ctype.needs_auth:
            return None
        if user_id is None:
            return f"Subscribing to {channel} needs an identified connection (a token or signin)"
        if channel.startswith(USER_CHANNEL_PREFIX):
            if channel[len(USER_CHANNEL_PREFIX) :] == user_id:
                return None
            return f"{channel} is another user's notification channel"
        operation = "presence" if ctype.is_presence else "read"
        if self.index[app.id].allowed(user_id, channel, operation, _now_ms()) is None:
            return f"No grant allows {user_id!r} to {operation} {channel}"
        return None

    def write_problem(self, app: AppConfig, user_id: str | None, channel: str) -> str | None:
        """Why a client event from `user_id` on `channel` is refused, or None."""
        if app.id in self._open_writes:
            return None
        if self.read_only(app, channel):
            return f"Channel {channel} is read-only: only the server publishes there"
        if app.auth != "builtin":
            return None
        if user_id is None:
            return f"Client events on {channel} need an identified connection"
        if self.index[app.id].allowed(user_id, channel, "write", _now_ms()) is None:
            return f"No grant allows {user_id!r} to write to {channel}"
        return None

    async def identity_problem(self, app: AppConfig, user_id: str) -> str | None:
        """Why a verified token for `user_id` must still be refused, or None: the one check
        every entry point makes (the handshake, the auth endpoints, the grants and history
        APIs). A token outlives `parley users disable`; the user store has the last word on
        built-in apps. Users of an outside issuer (not in the store) are not refused."""
        if app.auth != "builtin":
            return None
        user = await self.users.get(app.id, user_id)
        if user is not None and user.disabled:
            return "user disabled"
        return None

    def manages(self, app: AppConfig, user_id: str, resource: str) -> bool:
        """May `user_id` grant others on `resource`? Only with `manage` on that very resource
        (or, for an exact channel, on a pattern that covers it)."""
        for grant in self.index[app.id].grants(_now_ms()):
            if "manage" not in grant.operations or not subject_matches(grant.subject, user_id):
                continue
            if grant.resource == resource or (
                "*" not in resource and resource_matches(grant.resource, resource)
            ):
                return True
        return False

    # -- changes -----------------------------------------------------------------------------

    async def create(
        self,
        app: AppConfig,
        subject: str,
        resource: str,
        operations: list[str],
        ttl_s: float | None,
        granted_by: str | None,
    ) -> Grant:
        grant = await self.grants.create(app.id, subject, resource, operations, ttl_s, granted_by)
        self.index[app.id].add(grant)
        logs.info(
            "grant created",
            app_id=app.id,
            grant_id=grant.id,
            subject=subject,
            resource=resource,
            operations=",".join(grant.operations),
            granted_by=granted_by,
        )
        return grant

    async def delete(self, app: AppConfig, grant_id: str) -> Grant | None:
        grant = await self.grants.delete(app.id, grant_id)
        if grant is not None:
            self.index[app.id].remove(grant.id)
            logs.info("grant revoked", app_id=app.id, grant_id=grant.id)
            self.recheck(app, grant, "grant revoked")
        return grant

    def recheck(self, app: AppConfig, gone: Grant, reason: str) -> None:
        """End the live subscriptions that `gone` allowed and nothing else still allows."""
        for connection in self.live.connections(app):
            conn = connection.conn
            if (
                conn is None
                or conn.user_id is None
                or not subject_matches(gone.subject, conn.user_id)
            ):
                continue
            for channel in list(conn.subscriptions):
                if not resource_matches(gone.resource, channel):
                    continue
                if self.subscribe_problem(app, conn.user_id, channel, channel_type(channel)):
                    self.live.revoke(connection, channel, reason)

    async def _follow(self) -> None:
        """Expire grants, follow other nodes' grant changes, end disabled users' connections."""
        last_poll = 0.0
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            now = _now_ms()
            for app_id, index in self.index.items():
                app = self.apps[app_id]
                for grant in index.expired(now):
                    logs.info("grant expired", app_id=app_id, grant_id=grant.id)
                    self.recheck(app, grant, "grant expired")
            if time.monotonic() - last_poll < 0.5:
                continue
            last_poll = time.monotonic()
            try:
                await self._poll_store()
            except Exception:
                logs.error("polling grants and users failed")

    async def _poll_store(self) -> None:
        since = self._since_ms - 2000  # overlap: changes are idempotent here
        self._since_ms = _now_ms()
        for change in await self.grants.changes_since(None, since):
            index = self.index.get(change.grant.app_id)
            if index is None:
                continue
            if change.kind == "created":
                index.add(change.grant)
            else:
                index.remove(change.grant.id)
                self.recheck(self.apps[change.grant.app_id], change.grant, "grant revoked")
        for app_id, name in await self.users.disabled_since(None, since):
            app = self.apps.get(app_id)
            if app is not None and self.live.online(app, name):
                self.live.terminate_user(app, name, reason="User disabled")


def _now_ms() -> int:
    return int(time.time() * 1000)


def grant_json(grant: Any) -> dict[str, Any]:
    """A grant as the API and the CLI show it: times in seconds since the epoch, as tokens'
    `expires_at` (the stores keep milliseconds)."""
    return {
        "id": grant.id,
        "subject": grant.subject,
        "resource": grant.resource,
        "operations": list(grant.operations),
        "expires_at": None if grant.expires_at is None else grant.expires_at / 1000,
        "created_at": grant.created_at / 1000,
        "granted_by": grant.granted_by,
    }
