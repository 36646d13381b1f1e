"""Pusher's HTTP API (PUSHER.md §3.2): events, batch_events, channels, users, terminate."""

from __future__ import annotations

import re
from typing import Any

from parley.core.conversations import is_conversation_channel
from parley.core.node import Node
from parley.errors import BadRequest, Forbidden, NotFound, PayloadTooLarge
from parley.http_api.routes import Call, Router
from parley.protocol.channels import Kind, channel_name_problem, channel_type
from parley.protocol.connection import history_query
from parley.protocol.directory import CHANNEL as KEYS_CHANNEL
from parley.protocol.events import event_name_problem
from parley.settings import AppConfig

SOCKET_ID_RE = re.compile(r"\d+\.\d+")
_EVENT_INFO = {"user_count", "subscription_count"}
MAX_USERS_PAGE = 1000
MAX_POSITION = 2**63 - 1


def _whole_number(raw: str | None, name: str, low: int, high: int) -> int | None:
    """A query parameter that must be a whole number in [low, high]; None when absent."""
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 19 and low <= int(raw) <= high):
        raise BadRequest(f"'{name}' must be a whole number from {low} to {high}")
    return int(raw)


def _info_attrs(raw: Any, allowed: set[str]) -> list[str]:
    if raw in (None, ""):
        return []
    if not isinstance(raw, str):
        raise BadRequest("'info' must be a comma-separated string")
    attrs = [a.strip() for a in raw.split(",") if a.strip()]
    unknown = [a for a in attrs if a not in allowed]
    if unknown:
        raise BadRequest(f"Unknown info attribute(s): {', '.join(unknown)}")
    return attrs


def _validate_event(app: AppConfig, body: Any, *, batch_item: bool = False) -> dict[str, Any]:
    """Check one event body; return {name, data, channels, socket_id, info}."""
    if not isinstance(body, dict):
        raise BadRequest("Event must be a JSON object")
    name = body.get("name")
    problem = event_name_problem(name, app.max_event_name_length)
    if problem is not None:
        raise BadRequest(problem)
    if "data" not in body:
        raise BadRequest("Missing event 'data'")
    data = body["data"]
    if not isinstance(data, str):
        raise BadRequest("Event 'data' must be a string (JSON-encode objects first)")
    size = len(data.encode())
    if size > app.max_event_bytes:
        raise PayloadTooLarge(f"Event data is {size} bytes, the limit is {app.max_event_bytes}")
    if "channels" in body and not batch_item:
        channels = body["channels"]
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise BadRequest("'channels' must be an array of channel names")
    elif "channel" in body:
        channels = [body["channel"]]
    else:
        raise BadRequest("Missing 'channel' or 'channels'")
    if not channels:
        raise BadRequest("'channels' must name at least one channel")
    if len(channels) > app.max_channels_per_event:
        raise BadRequest(
            f"Too many channels: {len(channels)}, the limit is {app.max_channels_per_event}"
        )
    for channel in channels:
        problem = channel_name_problem(channel)
        if problem:
            raise BadRequest(f"{problem}: {str(channel)[:210]!r}")
        if channel == KEYS_CHANNEL:
            raise Forbidden(f"{KEYS_CHANNEL} is written by the key directory only")
    if len(channels) > 1 and any(channel_type(c).kind is Kind.ENCRYPTED for c in channels):
        raise BadRequest("An event for an encrypted channel must go to that channel alone")
    socket_id = body.get("socket_id")
    if socket_id is not None and (
        not isinstance(socket_id, str) or not SOCKET_ID_RE.fullmatch(socket_id)
    ):
        raise BadRequest("Invalid socket_id: expected digits.digits")
    info = _info_attrs(body.get("info"), _EVENT_INFO)
    idempotency_key = body.get("idempotency_key")
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str)
        or not 0 < len(idempotency_key) <= 200
        or "\x00" in idempotency_key
    ):
        raise BadRequest("'idempotency_key' must be a string of 1 to 200 characters, no NUL")
    return {
        "idempotency_key": idempotency_key,
        "name": name,
        "data": data,
        "channels": list(dict.fromkeys(channels)),
        "socket_id": socket_id,
        "info": info,
    }


async def _channel_attrs(
    node: Node, app: AppConfig, channel: str, attrs: list[str]
) -> dict[str, int]:
    if not attrs:
        return {}
    info = await node.channel_info(app, channel)
    out: dict[str, int] = {}
    for attr in attrs:
        if attr == "user_count":
            if channel_type(channel).kind is Kind.PRESENCE:
                out["user_count"] = info.user_count
        elif attr == "subscription_count":
            out["subscription_count"] = info.subscription_count
    return out


def _history_channel(node: Node, name: str) -> None:
    problem = channel_name_problem(name)
    if problem:
        raise BadRequest(problem)
    if node.retention(name) is None:
        raise NotFound(f"Channel {name} keeps no history")


async def _may_read(node: Node, app: AppConfig, user_id: str, name: str) -> None:
    if node.conversations is not None and is_conversation_channel(name):
        # a conversation's members read it, in every app mode: the server knows them
        problem, _ = await node.conversations.subscribe_problem(app, user_id, name)
        if problem is not None:
            raise Forbidden(problem)
        return
    ctype = channel_type(name)
    if ctype.needs_auth and app.auth != "builtin":
        raise Forbidden(
            f'Reading the history of {name} with a Bearer token needs auth = "builtin"; '
            "sign the request with the app secret instead"
        )
    problem = node.access.subscribe_problem(app, user_id, name, ctype) if node.access else None
    if problem is not None:
        raise Forbidden(problem)


def register(router: Router) -> None:
    @router.route("POST", "/apps/{app_id}/events", "events")
    async def events(node: Node, call: Call) -> dict[str, Any]:
        event = _validate_event(call.app, call.json())
        await node.publish(
            call.app,
            event["name"],
            event["data"],
            event["channels"],
            event["socket_id"],
            event["idempotency_key"],
        )
        if not event["info"]:
            return {}
        return {
            "channels": {
                c: await _channel_attrs(node, call.app, c, event["info"]) for c in event["channels"]
            }
        }

    @router.route("POST", "/apps/{app_id}/batch_events", "batch_events")
    async def batch_events(node: Node, call: Call) -> dict[str, Any]:
        body = call.json()
        batch = body.get("batch") if isinstance(body, dict) else None
        if not isinstance(batch, list) or not batch:
            raise BadRequest("Missing 'batch': expected a non-empty array of events")
        if len(batch) > call.app.max_batch_size:
            raise BadRequest(
                f"Batch has {len(batch)} events, the limit is {call.app.max_batch_size}"
            )
        items = []
        for index, item in enumerate(batch):
            try:
                items.append(_validate_event(call.app, item, batch_item=True))
            except BadRequest as exc:
                raise BadRequest(f"batch[{index}]: {exc.message}") from None
            except PayloadTooLarge as exc:
                raise PayloadTooLarge(f"batch[{index}]: {exc.message}") from None
        for item in items:
            await node.publish(
                call.app,
                item["name"],
                item["data"],
                item["channels"],
                item["socket_id"],
                item["idempotency_key"],
            )
        if not any(item["info"] for item in items):
            return {}
        return {
            "batch": [
                await _channel_attrs(node, call.app, item["channels"][0], item["info"])
                for item in items
            ]
        }

    @router.route("GET", "/apps/{app_id}/channels", "channels")
    async def channels(node: Node, call: Call) -> dict[str, Any]:
        prefix = call.params.get("filter_by_prefix", "")
        attrs = _info_attrs(call.params.get("info"), _EVENT_INFO)
        if "user_count" in attrs and not prefix.startswith("presence-"):
            raise BadRequest("info=user_count requires filter_by_prefix=presence-")
        listed: dict[str, dict[str, int]] = {}
        for name, count in (await node.channels(call.app, prefix)).items():
            out = listed[name] = {}
            for attr in attrs:
                if attr == "user_count":  # presence- channels alone (checked above)
                    out["user_count"] = await node.user_count(call.app, name)
                elif attr == "subscription_count":
                    out["subscription_count"] = count
        return {"channels": listed}

    @router.route("GET", "/apps/{app_id}/channels/{channel}", "channel")
    async def channel(node: Node, call: Call) -> dict[str, Any]:
        (name,) = call.args
        problem = channel_name_problem(name)
        if problem:
            raise BadRequest(problem)
        attrs = _info_attrs(call.params.get("info"), {"user_count", "subscription_count", "cache"})
        ctype = channel_type(name)
        info = await node.channel_info(call.app, name)
        out: dict[str, Any] = {"occupied": info.occupied}
        for attr in attrs:
            if attr == "user_count":
                if ctype.kind is not Kind.PRESENCE:
                    raise BadRequest("info=user_count is only available for presence channels")
                out["user_count"] = info.user_count
            elif attr == "subscription_count":
                out["subscription_count"] = info.subscription_count
            elif attr == "cache":
                if not ctype.cache:
                    raise BadRequest("info=cache is only available for cache channels")
                cached = await node.cached_event(call.app, name)
                out["cache"] = (
                    {"event": cached.event, "data": cached.data, "ttl": node.cache_ttl(cached)}
                    if cached
                    else None
                )
        return out

    @router.route("GET", "/apps/{app_id}/channels/{channel}/users", "channel_users")
    async def channel_users(node: Node, call: Call) -> dict[str, Any]:
        (name,) = call.args
        if channel_type(name).kind is not Kind.PRESENCE:
            raise BadRequest("Users are only available for presence channels")
        limit = _whole_number(call.params.get("limit"), "limit", 1, MAX_USERS_PAGE)
        after = _whole_number(call.params.get("after"), "after", 0, MAX_POSITION)
        if limit is None and after is None:  # Pusher's answer: every member
            return {"users": [{"id": uid} for uid in await node.presence_users(call.app, name)]}
        # a page, in the order users joined; `next` is the `after` of the next page
        page = await node.presence_page(call.app, name, after or 0, limit)
        return {"users": [{"id": uid} for uid in page.members], "next": page.next}

    @router.route(
        "GET", "/apps/{app_id}/channels/{channel}/history", "history", auth="signed_or_bearer"
    )
    async def history(node: Node, call: Call) -> dict[str, Any]:
        """Signed: the app's backend reads any channel. Bearer: a user reads what they may
        subscribe to (in pusher-mode apps, where the backend signs each subscription, only
        public channels)."""
        (name,) = call.args
        _history_channel(node, name)
        if call.user is not None:
            await _may_read(node, call.app, call.user.user_id, name)
        return await node.read_history(call.app, name, history_query(call.params))

    @router.route("DELETE", "/apps/{app_id}/channels/{channel}/history", "history_delete")
    async def delete_history(node: Node, call: Call) -> dict[str, Any]:
        (name,) = call.args
        _history_channel(node, name)
        return {"channel": name, "epoch": await node.delete_history(call.app, name)}

    def terminate(node: Node, call: Call) -> dict[str, Any]:
        (user_id,) = call.args
        node.terminate_everywhere(call.app, user_id)
        return {}

    router.route("POST", "/apps/{app_id}/users/{user_id}/terminate_connections", "terminate")(
        terminate
    )
    # pusher==3.3.4 (PyPI) posts this path without /apps/{app_id}; the app comes from auth_key.
    router.route("POST", "/users/{user_id}/terminate_connections", "terminate")(terminate)
