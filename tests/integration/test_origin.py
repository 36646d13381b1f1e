"""An app's Origin policy (`check_origin` with `allowed_origins`): other sites' pages may not
open its WebSocket connections nor call its built-in auth endpoints; its own pages and clients
that send no Origin (servers, native apps) may."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support.inproc import app_settings, serving
from tests.support.server import TIMEOUT

pytestmark = pytest.mark.integration

OURS = "https://chat.example"


async def first_frames(url: str, origin: str | None) -> tuple[dict[str, object], int | None]:
    """The first frame the server sends, and the close code if it then closes."""
    async with connect(url, origin=origin, open_timeout=TIMEOUT) as ws:  # type: ignore[arg-type]
        frame = json.loads(await ws.recv())
        if frame["event"] != "pusher:error":
            return frame, None
        try:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        except ConnectionClosed as closed:
            return frame, closed.rcvd.code if closed.rcvd else None
        raise AssertionError("a frame came after the refusal instead of the close")


async def test_other_sites_pages_are_refused_and_our_own_and_non_browsers_pass(
    tmp_path: Path,
) -> None:
    settings = app_settings(
        tmp_path,
        auth="builtin",
        check_origin=True,
        allowed_origins=f"{OURS}, http://localhost:3000",
    )
    async with serving(settings) as app:
        frame, code = await first_frames(app.ws_url, "https://evil.example")
        assert code == 4009 and "https://evil.example is not allowed" in str(frame["data"])
        for origin in (OURS, None):
            frame, code = await first_frames(app.ws_url, origin)
            assert frame["event"] == "pusher:connection_established" and code is None

        login = f"{app.http_url}/apps/{app.app.id}/auth/token"
        body = {"username": "nobody", "password": "x"}
        async with aiohttp.ClientSession() as http:
            async with http.post(login, json=body, headers={"Origin": "https://evil.example"}) as r:
                assert r.status == 403 and "allowed_origins" in (await r.json())["error"]
            async with http.post(login, json=body, headers={"Origin": OURS}) as r:
                assert r.status == 401  # past the Origin check: the password is what fails
            async with http.post(login, json=body) as r:
                assert r.status == 401


def test_check_origin_without_allowed_origins_is_a_configuration_error(tmp_path: Path) -> None:
    from parley.errors import ConfigError

    with pytest.raises(ConfigError, match="'check_origin' needs 'allowed_origins'"):
        app_settings(tmp_path, check_origin=True)
