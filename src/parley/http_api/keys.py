"""The key directory over HTTP (docs/protocol.md, "Signed messages"): a signed-in user
registers and revokes their device keys (or, where the app opted in, has the server make them);
anyone holding a user token of the app, or the app's backend, reads current keys, the log and
the signed head."""

from __future__ import annotations

from typing import Any

import orjson

from parley.core.keys import KeyDirectory
from parley.core.node import Node
from parley.errors import BadRequest
from parley.http_api.routes import Call, Router
from parley.protocol.connection import history_query
from parley.protocol.directory import KeyEntry
from parley.transport.server import Response


def _directory(node: Node) -> KeyDirectory:
    assert node.keys is not None, "the composition root sets the key directory"
    return node.keys


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"'{name}' must be a string")
    return value


def _entries(entries: list[KeyEntry]) -> list[dict[str, Any]]:
    return [e.wire() for e in entries]


def _registered(entry: KeyEntry) -> dict[str, Any]:
    """The answer to a registration."""
    return {
        "kid": entry.kid,
        "user_id": entry.user_id,
        "device_id": entry.device_id,
        "seq": entry.seq,
        "unendorsed": entry.unendorsed,
    }


def register(router: Router) -> None:
    @router.route("POST", "/apps/{app_id}/keys", "keys_register", auth="bearer")
    async def keys_register(node: Node, call: Call) -> Response:
        assert call.user is not None
        body = call.json_object({"device_id", "ed25519", "x25519", "endorsed_by", "endorsement"})
        device_id = body.get("device_id")
        if not isinstance(device_id, str):
            raise BadRequest("'device_id' must be a string")
        ed25519 = body.get("ed25519")
        if not isinstance(ed25519, str):
            raise BadRequest("'ed25519' must be a base64url public key")
        entry = await _directory(node).register(
            call.app,
            call.user.user_id,
            device_id,
            ed25519,
            _optional_str(body, "x25519"),
            _optional_str(body, "endorsed_by"),
            _optional_str(body, "endorsement"),
        )
        return Response(201, orjson.dumps(_registered(entry)))

    # Before the {user_id} and {kid} routes below (their paths match this one too).
    @router.route("POST", "/apps/{app_id}/keys/generate", "keys_generate", auth="bearer")
    async def keys_generate(node: Node, call: Call) -> Response:
        assert call.user is not None
        directory = _directory(node)
        directory.check_generation_allowed(call.app)  # 403 before anything else
        body = call.json_object({"device_id", "endorsed_by", "endorsement"})
        device_id = body.get("device_id")
        if not isinstance(device_id, str):
            raise BadRequest("'device_id' must be a string")
        if body.get("endorsed_by") is not None or body.get("endorsement") is not None:
            raise BadRequest(
                "'endorsed_by'/'endorsement' cannot vouch for a server-generated key: an "
                "endorsement signs the new public key, which does not exist before this request"
            )
        made = await directory.generate(call.app, call.user.user_id, device_id)
        answer = {
            **_registered(made.entry),
            "ed25519": made.entry.ed25519,
            "x25519": made.entry.x25519,
            "ed25519_private": made.ed25519_private,
            "x25519_private": made.x25519_private,
        }
        # The private keys are in this answer only: no cache may keep it.
        return Response(
            201, orjson.dumps(answer), headers={"Cache-Control": "no-store", "Pragma": "no-cache"}
        )

    @router.route("GET", "/apps/{app_id}/keys/head", "keys_head", auth="signed_or_bearer")
    def keys_head(node: Node, call: Call) -> dict[str, Any]:
        directory = _directory(node)
        return {**directory.head(call.app).wire(), "public_key": directory.server_public_key}

    @router.route("GET", "/apps/{app_id}/keys/log", "keys_log", auth="signed_or_bearer")
    async def keys_log(node: Node, call: Call) -> dict[str, Any]:
        page = history_query(call.params)  # the same after/limit rules as history pages
        entries = await _directory(node).log(call.app, page.after or 0, page.limit)
        return {"entries": _entries(entries)}

    @router.route("GET", "/apps/{app_id}/keys/{user_id}", "keys_of_user", auth="signed_or_bearer")
    def keys_of_user(node: Node, call: Call) -> dict[str, Any]:
        (user_id,) = call.args
        return {"user_id": user_id, "keys": _entries(_directory(node).current(call.app, user_id))}

    @router.route("DELETE", "/apps/{app_id}/keys/{kid}", "keys_revoke", auth="signed_or_bearer")
    async def keys_revoke(node: Node, call: Call) -> dict[str, Any]:
        (kid,) = call.args
        by_user = call.user.user_id if call.user is not None else None
        entry = await _directory(node).revoke(call.app, kid, by_user)
        return {"kid": entry.kid, "user_id": entry.user_id, "seq": entry.seq}
