"""Fixtures of the in-process app tests: the app on uvloop (as `parley serve` runs it) in the
test's own event loop, a pool of Pusher WebSocket clients and a signed HTTP API client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import pytest
import uvloop

from tests.support.inproc import InProcessApp, app_settings, serving
from tests.support.pusher_async import AsyncApi, AsyncClientPool
from tests.support.receiver import Receiver


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], object]]:
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
async def app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[InProcessApp]:
    """The app with the memory store, client events on and their rate limit off; a module's
    `pytest.mark.app_options(store=..., **app fields)` changes them."""
    marker = request.node.get_closest_marker("app_options")
    options = {"client_events": True, "client_event_rate": 0, **(marker.kwargs if marker else {})}
    settings = app_settings(tmp_path, **options)
    async with serving(settings) as running:
        yield running


@pytest.fixture
async def clients(app: InProcessApp) -> AsyncIterator[AsyncClientPool]:
    pool = AsyncClientPool(app.ws_url)
    yield pool
    await pool.close_all()


@pytest.fixture
async def api(app: InProcessApp) -> AsyncIterator[AsyncApi]:
    client = AsyncApi(app.http_url, app.app.id, app.app.key, app.app.secret)
    yield client
    await client.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A webhook endpoint on 127.0.0.1 (tests.support.receiver)."""
    r = Receiver()
    await r.start()
    yield r
    await r.stop()
