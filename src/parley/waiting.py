"""Waiting with a timeout in loops that are stopped by cancellation.

Python 3.11's `asyncio.wait_for` can swallow a cancellation that arrives as the awaited thing
completes (fixed in 3.12), and a loop cancelled at shutdown then runs on: the process hangs.
`asyncio.wait` never swallows one. Compiled modules (speedups.MODULES) cannot use
`asyncio.timeout`, an `async with`; they wait through here.
"""

from __future__ import annotations

import asyncio


async def wait_set(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait until `event` is set or `timeout_s` passed; whether it is set."""
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait((waiter,), timeout=timeout_s)
    finally:
        waiter.cancel()
    return event.is_set()
