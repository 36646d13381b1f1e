"""Background tasks a part of the core owns: stopping one and waiting for it to end.

A cancellation can be lost inside a library: redis-py can return normally from a call whose
task was cancelled (seen with a Sentinel-managed client), and a loop that carries on then
never ends, so a shutdown that awaits it waits for ever. `cancel` therefore cancels again
until the task has ended, and gives up (logged) after `CANCEL_WAIT_S`.
"""

from __future__ import annotations

import asyncio

from parley import logs

CANCEL_WAIT_S = 5.0  # how long `cancel` insists before it leaves a task that will not end
RECANCEL_S = 0.1  # how often it cancels again


async def cancel(task: asyncio.Task[None] | None, wait_s: float = CANCEL_WAIT_S) -> None:
    """Cancel `task` (if any) and wait until it has ended, cancelling it again while it
    runs on (at most `wait_s`). An exception it ended with, other than the cancellation,
    is raised here."""
    if task is None:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while not task.done():
        if loop.time() >= deadline:
            logs.warning("task did not stop when cancelled", task=task.get_name())
            return
        task.cancel()
        await asyncio.wait((task,), timeout=RECANCEL_S)  # never swallows our own cancellation
    if not task.cancelled():
        task.result()
