"""Conversations over HTTP (docs/protocol.md, "Conversations"): a signed-in user (Bearer JWT)
acts as themselves; the app's backend (a signed request) acts for anyone, naming the user in
`user_id` where the route needs one."""

from __future__ import annotations

from typing import Any

import orjson

from parley.core.conversations import Conversations
from parley.core.node import Node
from parley.errors import BadRequest
from parley.http_api.routes import Call, Router
from parley.http_api.webhooks import acknowledged
from parley.transport.server import Response


def _conversations(node: Node) -> Conversations:
    assert node.conversations is not None, "the composition root sets the conversations"
    return node.conversations


def _acting_user(call: Call, given: Any) -> str:
    """Whom a call is for: the Bearer token's user, or the `user_id` a signed call names."""
    if call.user is not None:
        if given is not None and given != call.user.user_id:
            raise BadRequest("'user_id' is the caller's own with a Bearer token: leave it out")
        return call.user.user_id
    if not isinstance(given, str) or not given:
        raise BadRequest("A signed request names the user: 'user_id'")
    return given


def _by(call: Call) -> str | None:
    return call.user.user_id if call.user is not None else None


def register(router: Router) -> None:
    @router.route(
        "POST", "/apps/{app_id}/conversations", "conversations_create", auth="signed_or_bearer"
    )
    async def create(node: Node, call: Call) -> Response:
        body = call.json_object({"members", "bots"})
        conversation, created = await _conversations(node).create(
            call.app, body.get("members"), _by(call), body.get("bots")
        )
        await acknowledged(node)
        return Response(201 if created else 200, orjson.dumps(conversation.wire()))

    @router.route(
        "GET", "/apps/{app_id}/conversations", "conversations_list", auth="signed_or_bearer"
    )
    async def list_(node: Node, call: Call) -> dict[str, Any]:
        user_id = _acting_user(call, call.params.get("user_id"))
        return {"conversations": await _conversations(node).list_for(call.app, user_id)}

    @router.route(
        "GET",
        "/apps/{app_id}/conversations/{conversation_id}",
        "conversations_get",
        auth="signed_or_bearer",
    )
    async def get(node: Node, call: Call) -> dict[str, Any]:
        (conversation_id,) = call.args
        conversations = _conversations(node)
        conversation = await conversations.get(call.app, conversation_id, _by(call))
        return {
            **conversation.wire(),
            "receipts": await conversations.receipts(call.app, conversation),
        }

    for verb, accept in (("accept", True), ("decline", False)):

        async def answer(node: Node, call: Call, accept: bool = accept) -> dict[str, Any]:
            call.json_object(set())
            (conversation_id,) = call.args
            conversation = await _conversations(node).answer(
                call.app, conversation_id, _by(call), accept
            )
            await acknowledged(node)
            return conversation.wire()

        router.route(
            "POST",
            f"/apps/{{app_id}}/conversations/{{conversation_id}}/{verb}",
            f"conversations_{verb}",
            auth="signed_or_bearer",
        )(answer)

    @router.route(
        "POST",
        "/apps/{app_id}/conversations/{conversation_id}/members",
        "conversations_add_member",
        auth="signed_or_bearer",
    )
    async def add_member(node: Node, call: Call) -> dict[str, Any]:
        (conversation_id,) = call.args
        body = call.json_object({"user_id", "bot_id"})
        conversations = _conversations(node)
        bot_id = body.get("bot_id")
        if isinstance(bot_id, str) and bot_id and "user_id" not in body:
            added = await conversations.add_bot(call.app, conversation_id, bot_id, _by(call))
            await acknowledged(node)
            return added.wire()
        user_id = body.get("user_id")
        if not isinstance(user_id, str) or not user_id or "bot_id" in body:
            raise BadRequest("Body must be {user_id} or {bot_id}")
        added = await conversations.add_member(call.app, conversation_id, user_id, _by(call))
        await acknowledged(node)
        return added.wire()

    @router.route(
        "DELETE",
        "/apps/{app_id}/conversations/{conversation_id}/members/{user_id}",
        "conversations_remove_member",
        auth="signed_or_bearer",
    )
    async def remove_member(node: Node, call: Call) -> dict[str, Any]:
        conversation_id, user_id = call.args
        conversations = _conversations(node)
        removed = await conversations.remove_member(call.app, conversation_id, user_id, _by(call))
        await acknowledged(node)
        return removed.wire()

    @router.route(
        "POST",
        "/apps/{app_id}/conversations/{conversation_id}/read",
        "conversations_read",
        auth="signed_or_bearer",
    )
    async def read(node: Node, call: Call) -> dict[str, Any]:
        (conversation_id,) = call.args
        body = call.json_object({"offset", "user_id"})
        user_id = _acting_user(call, body.get("user_id"))
        offset = body.get("offset")
        if offset is not None and (isinstance(offset, bool) or not isinstance(offset, int)):
            raise BadRequest("'offset' must be an integer")
        stored = await _conversations(node).mark_read(call.app, conversation_id, user_id, offset)
        return {"conversation_id": conversation_id, "user_id": user_id, "read_offset": stored}

    @router.route("POST", "/apps/{app_id}/users/{user_id}/block", "users_block", auth="bearer")
    async def block(node: Node, call: Call) -> dict[str, Any]:
        assert call.user is not None
        (blocked,) = call.args
        await _conversations(node).block(call.app, call.user.user_id, blocked)
        return {"blocker": call.user.user_id, "blocked": blocked}

    @router.route("DELETE", "/apps/{app_id}/users/{user_id}/block", "users_unblock", auth="bearer")
    async def unblock(node: Node, call: Call) -> dict[str, Any]:
        assert call.user is not None
        (blocked,) = call.args
        removed = await _conversations(node).unblock(call.app, call.user.user_id, blocked)
        return {"blocker": call.user.user_id, "blocked": blocked, "removed": removed}

    @router.route("GET", "/apps/{app_id}/blocks", "users_blocks", auth="bearer")
    async def blocks(node: Node, call: Call) -> dict[str, Any]:
        assert call.user is not None
        blocked = await _conversations(node).store.blocks(call.app.id, call.user.user_id)
        return {"blocker": call.user.user_id, "blocked": blocked}
