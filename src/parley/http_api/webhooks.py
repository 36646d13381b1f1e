"""Webhooks over HTTP: the app's dead letters (webhooks that failed for `webhook_retry_s`), and
the wait of the routes whose change emits webhooks (`acknowledged`)."""

from __future__ import annotations

from typing import Any

import orjson

from parley.core.node import Node
from parley.errors import BadRequest
from parley.http_api.routes import Call, Router


async def acknowledged(node: Node) -> None:
    """Before a call answers: the webhooks its change emitted are in the store (durable)."""
    if node.webhooks is not None:
        await node.webhooks.written()


def register(router: Router) -> None:
    @router.route("GET", "/apps/{app_id}/webhooks/failed", "webhooks_failed")
    async def webhooks_failed(node: Node, call: Call) -> dict[str, Any]:
        raw = call.params.get("limit", "100")
        if not raw.isdigit() or not 1 <= int(raw) <= 1000:
            raise BadRequest("'limit' must be 1..1000")
        assert node.webhooks is not None, "the composition root sets the webhooks"
        webhooks = node.webhooks
        dead = await webhooks.queue.dead(call.app.id, int(raw))
        pending = await webhooks.queue.pending(call.app.id)
        return {
            "pending": pending,
            "failed": [
                {
                    "id": d.id,
                    "url": d.url,
                    "channel": d.channel,
                    "events": orjson.loads(d.events),
                    "created_ms": d.created_ms,
                    "failed_ms": d.failed_ms,
                    "attempts": d.attempts,
                    "error": d.error,
                }
                for d in dead
            ],
        }
