"""Run a coroutine now, up to its first real suspension, and in a task only from there.

A presence subscribe calls the presence store, which is async because a shared store (Redis)
is. The memory store answers without suspending, and then the whole subscribe finishes in the
caller's turn of the event loop, as it did when presence was a dict in the hub: `start` steps
the coroutine once and returns None when it is finished. Only a coroutine that really waits
(for a future) is handed to a task, which carries it on from where it stopped. (Python 3.12's
eager tasks do the same; this runs on 3.11.)

Kept as source (not in speedups.MODULES): mypyc does not compile generator-based coroutines.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Coroutine, Generator
from typing import Any


def start(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run `coro` until it finishes (None; an exception it raises propagates) or first waits
    for something: then it goes on in a task of the running loop, which is returned."""
    try:
        waiting_for = coro.send(None)
    except StopIteration:
        return None
    return asyncio.get_running_loop().create_task(_finish(coro, waiting_for))


async def _finish(coro: Coroutine[Any, Any, None], waiting_for: Any) -> None:
    await _carry_on(coro, waiting_for)


@types.coroutine
def _carry_on(coro: Coroutine[Any, Any, None], waiting_for: Any) -> Generator[Any, Any, None]:
    """Hand the task what `coro` waits for (the future it yielded), and `coro` what the task
    sends or throws back, until `coro` returns: `yield from` for a coroutine already started."""
    while True:
        try:
            sent = yield waiting_for
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # thrown in by the task: cancellation
            try:
                waiting_for = coro.throw(exc)
            except StopIteration:
                return
        else:
            try:
                waiting_for = coro.send(sent)
            except StopIteration:
                return
