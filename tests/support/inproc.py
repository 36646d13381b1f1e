"""The whole app in the test's own event loop: `parley.app.start(settings)` on 127.0.0.1,
port 0, and `parley.app.stop` afterwards. Only those two and the Settings constructor are
used, so the tests built on this survive any refactor behind them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parley.app import Running, start, stop
from parley.settings import AppConfig, Settings

APP_ID = "4242"
KEY = "test-key"
SECRET = "test-secret"


def app_settings(data_dir: Path, *, store: str = "memory", **app_options: Any) -> Settings:
    """One app (APP_ID, KEY, SECRET) on 127.0.0.1 port 0; `app_options` are AppConfig fields."""
    app = AppConfig(id=APP_ID, key=KEY, secret=SECRET, **app_options)
    return Settings(
        host="127.0.0.1",
        port=0,
        data_dir=data_dir,
        store=store,
        apps=(app,),
    )


@dataclass
class InProcessApp:
    """A started app and what a client needs to reach it."""

    settings: Settings
    running: Running
    stopped: bool = False

    @property
    def app(self) -> AppConfig:
        return self.settings.apps[0]

    @property
    def host(self) -> str:
        return self.settings.host

    @property
    def port(self) -> int:
        return self.running.port

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/app/{self.app.key}?protocol=7"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        """`parley.app.stop`: drain (4200 to every connection), close the stores. Once."""
        if not self.stopped:
            self.stopped = True
            await stop(self.running)


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[InProcessApp]:
    """The app started for the block and stopped after it (unless the test stopped it)."""
    app = InProcessApp(settings, await start(settings))
    try:
        yield app
    finally:
        await app.stop()
