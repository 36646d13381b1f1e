"""core.webhooks in a cluster whose channel counts cannot answer: the writer waits for them at
most ASK_TIMEOUT_S, then queues the webhook anyway (a duplicate rather than a loss), so a
subscription whose answer waits for its webhooks is not stalled by an unreachable Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest

from parley.backends.counts import ChannelCounts
from parley.backends.memory.webhooks import MemoryWebhookQueue
from parley.core import webhooks as webhooks_module
from parley.core.events import ChannelOccupied, ChannelVacated, EventBus
from parley.core.webhooks import Webhooks
from parley.settings import WebhookConfig
from tests.support.inproc import APP_ID, app_settings


class SilentCounts(ChannelCounts):
    """Shared counts whose every question waits for ever (a Redis cut off by the network)."""

    tracks = True

    async def occupy(self, app_id: str, channel: str) -> bool:
        await asyncio.Event().wait()
        return False

    async def vacate(self, app_id: str, channel: str, hold_s: float) -> bool:
        await asyncio.Event().wait()
        return False

    async def subscriptions(self, app_id: str, channel: str) -> int:
        return 0

    async def occupied_channels(self, app_id: str, prefix: str = "") -> dict[str, int]:
        return {}

    async def connections(self, app_id: str) -> int:
        return 0


async def test_counts_that_do_not_answer_stall_the_writer_only_briefly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhooks_module, "ASK_TIMEOUT_S", 0.2)
    base = app_settings(tmp_path)
    app = dataclasses.replace(base.apps[0], webhooks=(WebhookConfig("http://127.0.0.1:9/"),))
    settings = dataclasses.replace(base, apps=(app,))
    queue = MemoryWebhookQueue()
    await queue.start()
    bus = EventBus()
    hooks = Webhooks(settings, bus, queue, SilentCounts())
    await hooks.start()
    try:
        began = time.monotonic()
        bus.emit(ChannelOccupied(APP_ID, "news"))
        bus.emit(ChannelVacated(APP_ID, "gone"))
        assert await hooks.stored_within(5)
        took = time.monotonic() - began
        assert took < 2, f"the writer waited {took:.1f} s"
        # both sent: occupied as asked, vacated at once (no hold could begin)
        assert await queue.pending(APP_ID) == 2
    finally:
        await hooks.close()
        await queue.close()
