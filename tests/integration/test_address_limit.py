"""`max_connections_per_address`: WebSocket connections from one client address are capped
(after trusted proxies); one over is answered 429 with a JSON reason before any session is
made, and a connection that ends frees its place."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from tests.support.inproc import app_settings, serving
from tests.support.server import TIMEOUT

pytestmark = pytest.mark.integration


async def established(url: str, **headers: str) -> ClientConnection:
    ws = await connect(url, additional_headers=headers, open_timeout=TIMEOUT)
    frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert frame["event"] == "pusher:connection_established"
    return ws


async def refused(url: str, **headers: str) -> dict[str, object]:
    with pytest.raises(InvalidStatus) as caught:
        await connect(url, additional_headers=headers, open_timeout=TIMEOUT)
    response = caught.value.response
    assert response.status_code == 429
    assert response.headers["Content-Type"] == "application/json"
    return json.loads(response.body)  # type: ignore[no-any-return]


async def test_one_address_gets_at_most_the_limit_and_a_close_frees_a_place(
    tmp_path: Path,
) -> None:
    settings = replace(app_settings(tmp_path), max_connections_per_address=2)
    async with serving(settings) as app:
        first, second = await established(app.ws_url), await established(app.ws_url)
        body = await refused(app.ws_url)
        assert body == {
            "error": "Too many connections from 127.0.0.1: the limit is 2",
            "status": 429,
        }
        assert len(app.running.node.hubs[app.app.id].sessions) == 2  # no session was made
        await first.close()
        third = await established(app.ws_url)  # the closed one's place
        await refused(app.ws_url)
        await second.close()
        await third.close()
        server = app.running.server
        # every place given back once the server has seen the closes
        async with asyncio.timeout(TIMEOUT):
            while server.addresses:
                await asyncio.sleep(0.01)


async def test_behind_a_trusted_proxy_each_forwarded_client_counts_apart(tmp_path: Path) -> None:
    settings = replace(
        app_settings(tmp_path), max_connections_per_address=1, trusted_proxies="127.0.0.0/8"
    )
    async with serving(settings) as app:
        alice = await established(app.ws_url, **{"X-Forwarded-For": "203.0.113.7"})
        bob = await established(app.ws_url, **{"X-Forwarded-For": "198.51.100.9"})
        body = await refused(app.ws_url, **{"X-Forwarded-For": "203.0.113.7"})
        assert "203.0.113.7" in str(body["error"])
        assert app.running.server.addresses == {"203.0.113.7": 1, "198.51.100.9": 1}
        await alice.close()
        await bob.close()


async def test_an_upgrade_the_server_refuses_for_another_reason_takes_no_place(
    tmp_path: Path,
) -> None:
    settings = replace(app_settings(tmp_path), max_connections_per_address=1)
    async with serving(settings) as app:
        bad_key = app.ws_url.replace(app.app.key, "no-such-key")
        for _ in range(3):  # refused with 4001 after the upgrade: each frees its place
            async with connect(bad_key, open_timeout=TIMEOUT) as ws:
                frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                assert frame["data"]["code"] == 4001
                await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
            async with asyncio.timeout(TIMEOUT):
                while app.running.server.addresses:
                    await asyncio.sleep(0.01)
        ws = await established(app.ws_url)
        await ws.close()
