"""/readyz asks the engines the node runs on, and only those: the broker, and the history
store with a real round trip to its database. It answers 503 naming the check that fails,
while /healthz stays up, and is ready again once the database is back. Meanwhile a publish
or a history read that needs the database answers 503 with its reason, never a 500."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.conftest import require
from tests.support.inproc import app_settings, serving
from tests.support.pusher_async import AsyncApi
from tests.support.stores import PG_URL, postgres_problem

pytestmark = pytest.mark.integration


class Cuttable:
    """A TCP forwarder to `target` on 127.0.0.1 that the test can cut (every connection
    aborted, new ones refused) and restore on the same port."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._transports: list[asyncio.WriteTransport] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for transport in self._transports:
            transport.abort()
        self._transports.clear()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._transports += [writer.transport, up_writer.transport]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_readyz_reports_the_sqlite_store_it_pinged(tmp_path: Path) -> None:
    async with serving(app_settings(tmp_path, store="sqlite")) as app:
        api = AsyncApi(app.http_url, app.app.id, app.app.key, app.app.secret)
        try:
            ready = await api.request("GET", "/readyz")
            assert (ready.status, ready.json()["checks"]) == (
                200,
                {"broker": "memory: ok", "store": "sqlite: ok"},
            )
        finally:
            await api.close()


@pytest.mark.postgres
async def test_readyz_names_the_store_while_postgres_is_unreachable(tmp_path: Path) -> None:
    problem = await postgres_problem()
    require(problem is None, problem or "")
    url = urlsplit(PG_URL)
    proxy = Cuttable(url.hostname or "127.0.0.1", url.port or 5432)
    await proxy.start()
    user, at, _ = url.netloc.rpartition("@")
    through_proxy = url._replace(netloc=f"{user}{at}127.0.0.1:{proxy.port}")
    settings = dataclasses.replace(
        app_settings(tmp_path, store="postgres"), postgres_url=urlunsplit(through_proxy)
    )
    async with serving(settings) as app:
        api = AsyncApi(app.http_url, app.app.id, app.app.key, app.app.secret)
        try:
            ready = await api.request("GET", "/readyz")
            assert (ready.status, ready.json()["checks"]["store"]) == (200, "postgres: ok")

            await proxy.cut()
            down = await api.request("GET", "/readyz")
            assert down.status == 503
            body = down.json()
            assert (body["status"], body["failing"]) == ("not ready", ["store"])
            assert body["checks"]["broker"] == "memory: ok"
            assert body["checks"]["store"].startswith("postgres: ")
            assert body["checks"]["store"] != "postgres: ok"
            assert (await api.request("GET", "/healthz")).status == 200
            room = f"room-{uuid.uuid4().hex}"  # the database outlives the test: a new channel
            event = {"name": "e", "channels": [room], "data": "while away"}
            refused = await api.signed("POST", f"/apps/{app.app.id}/events", body=event)
            assert refused.status == 503, refused.body  # not a 500, and not a 200 then lost
            assert refused.json()["error"].startswith("PostgreSQL")
            page = await api.signed("GET", f"/apps/{app.app.id}/channels/{room}/history")
            assert page.status == 503, page.body

            await proxy.start()  # the same port: the pool replaces its dead connections
            assert (await api.request("GET", "/readyz")).status == 200
            event["data"] = "back"
            back = await api.signed("POST", f"/apps/{app.app.id}/events", body=event)
            assert back.status == 200
            page = await api.signed("GET", f"/apps/{app.app.id}/channels/{room}/history")
            assert [e["data"] for e in page.json()["events"]] == ["back"]
        finally:
            await api.close()
            await proxy.cut()
