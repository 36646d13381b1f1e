"""Two nodes on one PostgreSQL share the key directory: one server key, one chained log, and a
revocation made through one node refuses the key's next signed event on the other within a
second (each node follows the store every half second)."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from parley.settings import AppConfig
from tests.conftest import require
from tests.support.inproc import app_settings, serving
from tests.support.keys import bearer, get, joined, register, signed_event
from tests.support.pusher_async import AsyncApi, AsyncClientPool
from tests.support.stores import PG_URL, delete_app_rows, postgres_problem

pytestmark = [
    pytest.mark.integration,
    pytest.mark.postgres,
    pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),
]


async def test_a_revocation_on_one_node_reaches_the_other_within_a_second(tmp_path: Path) -> None:
    problem = await postgres_problem()
    require(problem is None, problem or "")
    app = AppConfig(
        id=str(secrets.randbelow(10**9) + 10**9),  # an app of its own in the shared database
        key=f"key-{secrets.token_hex(4)}",
        secret="test-secret",
        client_events=True,
        client_event_rate=0,
        signed_channels="private-signed-*",
    )
    base = app_settings(tmp_path)

    def node(name: str) -> object:
        return dataclasses.replace(
            base, data_dir=tmp_path / name, store="postgres", postgres_url=PG_URL, apps=(app,)
        )

    try:
        async with serving(node("a")) as one, serving(node("b")) as two:  # type: ignore[arg-type]
            api_one = AsyncApi(one.http_url, app.id, app.key, app.secret)
            api_two = AsyncApi(two.http_url, app.id, app.key, app.secret)
            pool = AsyncClientPool(two.ws_url)
            try:
                key = Ed25519PrivateKey.generate()
                registered = await register(api_one, one, "alice", key, "phone")
                assert registered.status == 201, registered.body
                head_one = await get(api_one, one, "/keys/head")
                assert (
                    head_one["public_key"] == (await get(api_two, two, "/keys/head"))["public_key"]
                )

                alice = await joined(pool, two, "alice")
                async with asyncio.timeout(1.5):  # node b learns the key from the store
                    while (await get(api_two, two, "/keys/alice"))["keys"] == []:
                        await asyncio.sleep(0.05)
                await alice.send(signed_event(two, key, "alice", '{"n":1}'))
                await alice.expect_quiet("a signed event from a current key goes out")

                kid = registered.json()["kid"]
                revoked = await api_one.request(
                    "DELETE", f"/apps/{app.id}/keys/{kid}", headers=bearer(one, "alice")
                )
                assert revoked.status == 200
                started = time.monotonic()
                async with asyncio.timeout(1.0):
                    frame: dict[str, object] = {}
                    while frame.get("event") != "pusher:error":
                        await alice.send(signed_event(two, key, "alice", '{"n":2}'))
                        await alice.send({"event": "pusher:ping", "data": {}})
                        frame = await alice.recv()  # the refusal, or the pong: it went out
                        if frame.get("event") == "pusher:error":
                            await alice.expect("pusher:pong")
                data = frame["data"]
                assert isinstance(data, dict) and data["message"].startswith("revoked-key"), frame
                assert time.monotonic() - started < 1.0
                assert (await get(api_two, two, "/keys/head"))["seq"] == 2
            finally:
                await pool.close_all()
                await api_one.close()
                await api_two.close()
    finally:
        await delete_app_rows("parley_key_log", app.id)
