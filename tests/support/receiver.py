"""A webhook endpoint for the tests: an aiohttp server on 127.0.0.1 that records the webhooks it
accepts, and can play a receiver that is down."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web


class Receiver:
    """A webhook endpoint on 127.0.0.1 that records what it accepts; `status` is what it
    answers (503 while "down"), `stop()` takes it off the network."""

    def __init__(self) -> None:
        self.status = 200
        self.accepted: list[dict[str, Any]] = []
        self.refused = 0
        self.arrived = asyncio.Event()
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: web.Request) -> web.Response:
        if self.status != 200:
            self.refused += 1
            return web.Response(status=self.status)
        body = await request.read()
        self.accepted.append(
            {
                "content_type": request.headers.get("Content-Type"),
                "key": request.headers.get("X-Pusher-Key"),
                "signature": request.headers.get("X-Pusher-Signature"),
                "body": body,
            }
        )
        self.arrived.set()
        return web.Response(status=200)

    def events(self) -> list[dict[str, Any]]:
        return [e for r in self.accepted for e in json.loads(r["body"])["events"]]

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Every event accepted once `count` have arrived (bounded wait)."""
        async with asyncio.timeout(timeout):
            while len(self.events()) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.events()
