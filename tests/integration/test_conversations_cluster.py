"""Two nodes on one PostgreSQL share conversations: one created through one node is joined on
the other; a member removed, a request declined or a block made through one node ends the
live subscription, and refuses the messages, of a client on the other within a second (each
node follows the store's change feed every half second)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from parley.settings import AppConfig
from tests.conftest import require
from tests.support.inproc import InProcessApp, app_settings, serving
from tests.support.keys import bearer, token
from tests.support.pusher_async import AsyncApi, AsyncClient, AsyncClientPool
from tests.support.stores import PG_URL, delete_app_rows, postgres_problem

pytestmark = [
    pytest.mark.integration,
    pytest.mark.postgres,
    pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),
]

TABLES = ("parley_conversations", "parley_conversation_members", "parley_blocks")


async def joined(pool: AsyncClientPool, node: InProcessApp, user: str, channel: str) -> AsyncClient:
    client = await pool.connect(f"{node.ws_url}&token={token(node, user)}")
    await client.subscribe(channel, key=node.app.key, secret=node.app.secret)
    await client.expect_next("parley:welcome", channel)
    return client


async def revoked_within_a_second(client: AsyncClient, channel: str) -> dict[str, Any]:
    started = time.monotonic()
    frame = await client.expect("parley:revoked", channel, timeout=1.5)
    assert time.monotonic() - started < 1.2
    return frame


async def test_changes_through_one_node_reach_the_subscribers_of_the_other(tmp_path: Path) -> None:
    problem = await postgres_problem()
    require(problem is None, problem or "")
    app = AppConfig(
        id=str(secrets.randbelow(10**9) + 10**9),  # an app of its own in the shared database
        key=f"key-{secrets.token_hex(4)}",
        secret="test-secret",
        client_events=True,
        client_event_rate=0,
    )
    base = app_settings(tmp_path)

    def node(name: str) -> Any:
        return dataclasses.replace(
            base, data_dir=tmp_path / name, store="postgres", postgres_url=PG_URL, apps=(app,)
        )

    try:
        async with serving(node("a")) as one, serving(node("b")) as two:
            api = AsyncApi(one.http_url, app.id, app.key, app.secret)
            pool = AsyncClientPool(two.ws_url)
            try:
                group = (
                    await api.signed(
                        "POST",
                        f"/apps/{app.id}/conversations",
                        body={"members": ["ann", "ben", "cat"]},
                    )
                ).json()
                # members added at once through both nodes: neither change undoes the other
                api_two = AsyncApi(two.http_url, app.id, app.key, app.secret)
                try:
                    adds = [
                        client.signed(
                            "POST",
                            f"/apps/{app.id}/conversations/{group['id']}/members",
                            body={"user_id": user},
                        )
                        for user in ("hal", "ida", "jon", "kim")
                        for client in (api, api_two)
                    ]
                    assert {r.status for r in await asyncio.gather(*adds)} == {200}
                finally:
                    await api_two.close()
                shown = await api.signed("GET", f"/apps/{app.id}/conversations/{group['id']}")
                assert sorted(shown.json()["members"]) == sorted(
                    ["ann", "ben", "cat", "hal", "ida", "jon", "kim"]
                )
                ann = await joined(pool, two, "ann", group["channel"])
                cat = await joined(pool, two, "cat", group["channel"])
                await cat.send_event("client-msg", {"n": 1}, group["channel"])
                await ann.expect("client-msg", group["channel"])
                removed = await api.request(
                    "DELETE",
                    f"/apps/{app.id}/conversations/{group['id']}/members/cat",
                    headers=bearer(one, "cat"),
                )
                assert removed.status == 200, removed.body
                await revoked_within_a_second(cat, group["channel"])
                await cat.send_event("client-msg", {"n": 2}, group["channel"])
                await cat.expect_error(None, "not subscribed")
                await ann.expect_quiet("nothing from cat after her removal")

                asked = await api.request(
                    "POST",
                    f"/apps/{app.id}/conversations",
                    body=json.dumps({"members": ["dan", "eve"]}).encode(),
                    headers=bearer(one, "dan"),
                )
                pending = asked.json()
                dan = await joined(pool, two, "dan", pending["channel"])
                declined = await api.request(
                    "POST",
                    f"/apps/{app.id}/conversations/{pending['id']}/decline",
                    headers=bearer(one, "eve"),
                )
                assert declined.json()["state"] == "declined"
                frame = await revoked_within_a_second(dan, pending["channel"])
                assert "declined" in frame["data"]["reason"]

                talk = (
                    await api.signed(
                        "POST", f"/apps/{app.id}/conversations", body={"members": ["fay", "gus"]}
                    )
                ).json()
                fay = await joined(pool, two, "fay", talk["channel"])
                gus = await joined(pool, two, "gus", talk["channel"])
                await fay.send_event("client-msg", {"n": 1}, talk["channel"])
                await gus.expect("client-msg", talk["channel"])  # the cache of node b clears it
                blocked = await api.request(
                    "POST", f"/apps/{app.id}/users/fay/block", headers=bearer(one, "gus")
                )
                assert blocked.status == 200
                async with asyncio.timeout(1.5):  # node b learns of the block from the feed
                    while True:
                        await fay.send_event("client-msg", {"n": 2}, talk["channel"])
                        await fay.send({"event": "pusher:ping", "data": {}})
                        frame = await fay.recv()
                        if frame.get("event") == "pusher:error":
                            break
                        await gus.expect("client-msg", talk["channel"])
                        await asyncio.sleep(0.05)
                assert "is blocked" in frame["data"]["message"]
            finally:
                await pool.close_all()
                await api.close()
    finally:
        for table in TABLES:
            await delete_app_rows(table, app.id)
