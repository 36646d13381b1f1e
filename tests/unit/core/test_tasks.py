"""core.tasks.cancel ends a task whose code swallowed a cancellation (as redis-py can), and
gives up on one that never ends instead of waiting for ever."""

from __future__ import annotations

import asyncio

import pytest

from parley.core.tasks import cancel


async def test_a_task_that_swallowed_a_cancellation_is_cancelled_again() -> None:
    swallowed = asyncio.Event()

    async def loop() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            swallowed.set()  # a library returned normally: the loop carries on
        while True:
            await asyncio.sleep(10)

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    ended = asyncio.create_task(cancel(task))
    done, _ = await asyncio.wait((ended,), timeout=2)
    assert done, "cancel waited on a task that carried on"
    assert swallowed.is_set() and task.cancelled()


async def test_a_task_that_never_ends_is_left_after_the_wait() -> None:
    released = False

    async def stubborn() -> None:
        while not released:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                pass

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    async with asyncio.timeout(2):
        await cancel(task, wait_s=0.3)
    assert not task.done()
    released = True  # (so that it ends at last: the test's loop must close)
    task.cancel()
    await asyncio.wait((task,), timeout=2)
    assert task.done()


async def test_an_exception_it_ended_with_is_raised() -> None:
    async def fails() -> None:
        raise ValueError("broken")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    with pytest.raises(ValueError, match="broken"):
        await cancel(task)
