"""Stopping and restarting the app: the drain closes every connection with 4200, /readyz
says draining meanwhile, and with SQLite the history and offsets outlive a restart."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.support.inproc import InProcessApp, app_settings, serving
from tests.support.pusher_async import AsyncApi, AsyncClientPool, HeldSocket
from tests.support.pusher_raw import unique
from tests.support.server import TIMEOUT

pytestmark = pytest.mark.integration

DRAIN_MESSAGE = "Server is shutting down, reconnect"


async def test_stop_drains_every_connection_with_4200(
    app: InProcessApp, clients: AsyncClientPool
) -> None:
    first, second = await clients.connect(), await clients.connect()
    await first.subscribe(unique("news-"))
    await app.stop()  # returns once every connection is gone
    for client in (first, second):
        assert (await client.expect_error(4200))["message"] == DRAIN_MESSAGE
        assert await client.expect_close() == (4200, "Server is shutting down")


async def test_readyz_says_draining_until_the_last_connection_is_gone(
    app: InProcessApp, api: AsyncApi
) -> None:
    assert (await api.request("GET", "/readyz")).status == 200  # keeps this HTTP connection
    held = await HeldSocket.open(app.host, app.port, f"/app/{app.app.key}?protocol=7")
    stopping: asyncio.Task[None] | None = None
    try:
        assert (await held.read_text())["event"] == "pusher:connection_established"
        stopping = asyncio.create_task(app.stop())
        error = await held.read_text()
        assert error == {"event": "pusher:error", "data": {"code": 4200, "message": DRAIN_MESSAGE}}
        assert await held.read_close() == (4200, "Server is shutting down")
        assert not stopping.done()  # the drain waits for this connection
        draining = await api.request("GET", "/readyz")
        assert (draining.status, draining.json()) == (503, {"status": "draining"})
    finally:
        await held.close()  # the last connection gone, the drain ends
        if stopping is not None:
            await asyncio.wait_for(stopping, TIMEOUT)


async def test_sqlite_history_and_offsets_outlive_a_restart(tmp_path: Path) -> None:
    settings = app_settings(tmp_path / "data", store="sqlite")
    channel = unique("kept-")
    async with serving(settings) as first:
        api = AsyncApi(first.http_url, first.app.id, first.app.key, first.app.secret)
        try:
            for i in range(3):
                await api.trigger(channel, "e", json.dumps({"i": i}))
        finally:
            await api.close()
    assert (tmp_path / "data" / "parley.db").exists()

    async with serving(settings) as second:
        api = AsyncApi(second.http_url, second.app.id, second.app.key, second.app.secret)
        clients = AsyncClientPool(second.ws_url)
        try:
            page = await api.signed("GET", f"/apps/{second.app.id}/channels/{channel}/history")
            assert page.status == 200
            events = page.json()["events"]
            assert [e["parley"]["offset"] for e in events] == [1, 2, 3]
            assert [json.loads(e["data"]) for e in events] == [{"i": 0}, {"i": 1}, {"i": 2}]
            epoch = page.json()["epoch"]

            client = await clients.connect()
            await client.subscribe(channel)
            since = {"offset": 1, "epoch": epoch}
            await client.send_event("parley:resume", {"channel": channel, "since": since})
            replay = [await client.expect_next("e", channel) for _ in range(2)]
            assert [f["parley"]["offset"] for f in replay] == [2, 3]
            resumed = await client.expect_next("parley:resumed", channel)
            assert resumed["data"] == {"channel": channel, "recovered": True}
            await api.trigger(channel, "e", "next")
            live = await client.expect_next("e", channel)
            assert (live["parley"]["offset"], live["parley"]["epoch"]) == (4, epoch)
        finally:
            await clients.close_all()
            await api.close()
