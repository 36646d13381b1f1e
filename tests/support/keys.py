"""Helpers for the key directory's tests: user tokens, key registration and endorsement over
the HTTP API, signed client events, and identified subscribers."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from parley.protocol import directory, signed
from tests.support.inproc import InProcessApp
from tests.support.pusher_async import AsyncApi, AsyncClient, AsyncClientPool

SIGNED = "private-signed-room"


def token(app: InProcessApp, user: str) -> str:
    claims = {"sub": user, "aud": app.app.key, "exp": int(time.time()) + 300}
    return jwt.encode(claims, app.app.secret)


def bearer(app: InProcessApp, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(app, user)}"}


def public_of(key: Ed25519PrivateKey) -> str:
    return signed.b64url(signed.public_raw(key))


async def register(
    api: AsyncApi, app: InProcessApp, user: str, key: Ed25519PrivateKey, device: str, **more: Any
) -> Any:
    body = {"device_id": device, "ed25519": public_of(key), **more}
    raw = json.dumps(body).encode()
    return await api.request(
        "POST", f"/apps/{app.app.id}/keys", body=raw, headers=bearer(app, user)
    )


def endorse(
    app: InProcessApp, by: Ed25519PrivateKey, user: str, device: str, new: Ed25519PrivateKey
) -> dict[str, str]:
    message = directory.endorsement_bytes(app.app.key, user, device, public_of(new))
    return {
        "endorsed_by": signed.key_id(signed.public_raw(by)),
        "endorsement": signed.b64url(by.sign(message)),
    }


async def get(api: AsyncApi, app: InProcessApp, path: str, user: str = "reader") -> Any:
    response = await api.request("GET", f"/apps/{app.app.id}{path}", headers=bearer(app, user))
    assert response.status == 200, response.body
    return response.json()


def signed_event(
    app: InProcessApp,
    key: Ed25519PrivateKey,
    user: str,
    data: str,
    *,
    channel: str = SIGNED,
    mid: str | None = None,
    ts: int | None = None,
) -> dict[str, Any]:
    sig = signed.sign(
        key,
        app.app.key,
        channel,
        "client-msg",
        user,
        data,
        mid=mid or uuid.uuid4().hex,
        ts=ts if ts is not None else int(time.time() * 1000),
    )
    return {"event": "client-msg", "channel": channel, "data": data, "parley": {"sig": sig.wire()}}


async def joined(
    clients: AsyncClientPool, app: InProcessApp, user: str, channel: str = SIGNED
) -> AsyncClient:
    client = await clients.connect(f"{app.ws_url}&token={token(app, user)}")
    await client.subscribe(channel, key=app.app.key, secret=app.app.secret)
    return client
