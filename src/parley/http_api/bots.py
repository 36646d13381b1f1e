"""Bots over HTTP (docs/protocol.md, "Bots"): the app's backend adds and lists them (signed
requests); a bot acts on its own routes with `Authorization: Bearer <its secret>`."""

from __future__ import annotations

from typing import Any

import orjson

from parley.backends.bots import Bot
from parley.core.bots import Bots
from parley.core.node import Node
from parley.http_api.routes import Call, Router
from parley.http_api.webhooks import acknowledged
from parley.transport.server import Response


def _bots(node: Node) -> Bots:
    assert node.bots is not None, "the composition root sets the bots"
    return node.bots


async def _as_bot(node: Node, call: Call) -> Bot:
    (bot_id,) = call.args
    return await _bots(node).authenticate(
        call.app, bot_id, call.request.headers.get("authorization", "")
    )


def register(router: Router) -> None:
    @router.route("POST", "/apps/{app_id}/bots", "bots_add")
    async def add(node: Node, call: Call) -> Response:
        body = call.json_object({"name", "webhook_url"})
        made = await _bots(node).add(call.app, body.get("name"), body.get("webhook_url"))
        await acknowledged(node)
        return Response(201, orjson.dumps(made.wire()))

    @router.route("GET", "/apps/{app_id}/bots", "bots_list")
    async def list_(node: Node, call: Call) -> dict[str, Any]:
        return {"bots": [b.wire() for b in await _bots(node).store.list(call.app.id)]}

    @router.route("POST", "/apps/{app_id}/bots/{bot_id}/messages", "bots_send", auth="none")
    async def send(node: Node, call: Call) -> dict[str, Any]:
        bot = await _as_bot(node, call)
        body = call.json_object({"conversation_id", "event", "data"})
        sent = await _bots(node).send(
            call.app,
            bot,
            body.get("conversation_id"),
            body.get("event", "message"),
            body.get("data"),
        )
        await acknowledged(node)
        return {
            "conversation_id": sent.conversation_id,
            "channel": sent.channel,
            "offset": sent.offset,
            "id": sent.id,
        }

    @router.route("GET", "/apps/{app_id}/bots/{bot_id}/references", "bots_references", auth="none")
    async def references(node: Node, call: Call) -> dict[str, Any]:
        bot = await _as_bot(node, call)
        found = await _bots(node).references(call.app, bot)
        return {"references": [r.wire() for r in found]}

    @router.route(
        "GET", "/apps/{app_id}/bots/{bot_id}/conversations", "bots_conversations", auth="none"
    )
    async def conversations(node: Node, call: Call) -> dict[str, Any]:
        bot = await _as_bot(node, call)
        assert node.conversations is not None
        found = await node.conversations.store.of_bot(call.app.id, bot.id)
        return {"conversations": [c.wire() for c in found]}
