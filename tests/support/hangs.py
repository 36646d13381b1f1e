"""What a test that ran out of time (pytest-timeout's `timeout`) was waiting on.

The plugin's own signal method prints the threads' stacks; a hung asyncio test shows only
its event loop in `select` there. This timer writes every asyncio task's stack as well,
to the real standard error (pytest's capture suspended), then cancels the loop's tasks
so that the test fails and its teardown runs (an exception raised in a signal handler inside
the loop would land in whatever callback runs, which asyncio swallows). A second alarm a
minute later, if the teardown hangs too, writes the stacks again and ends the process, so a
hung run names its test instead of waiting out the CI limit.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
import threading
import traceback
from types import FrameType

import pytest

GRACE_S = 60.0


def stacks() -> str:
    """Every thread's stack, then every task of the main thread's running loop."""
    out = io.StringIO()
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        out.write(f"--- thread {names.get(ident, ident)}\n")
        out.write("".join(traceback.format_stack(frame)))
    loop = asyncio._get_running_loop()
    if loop is not None:
        for task in asyncio.all_tasks(loop):
            out.write(f"--- task {task.get_name()}: {task.get_coro()!r}\n")
            task.print_stack(limit=20, file=out)
    return out.getvalue()


def arm(item: pytest.Item, seconds: float) -> None:
    """Fail `item` after `seconds` with the stacks; end the process if it is still stuck
    GRACE_S later."""

    capture = item.config.pluginmanager.getplugin("capturemanager")

    def say(text: str) -> None:
        """Write to the process's standard error, past pytest's capture."""
        if capture is None:
            sys.stderr.write(text)
            return
        with capture.global_and_fixture_disabled():
            sys.stderr.write(text)
            sys.stderr.flush()

    def second(signum: int, frame: FrameType | None) -> None:
        say(f"\n{item.nodeid}: still stuck {GRACE_S:.0f} s after its timeout\n{stacks()}")
        os._exit(3)

    def first(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGALRM, second)
        signal.setitimer(signal.ITIMER_REAL, GRACE_S)
        say(f"\n{item.nodeid}: timeout after {seconds:.0f} s\n{stacks()}")
        loop = asyncio._get_running_loop()
        if loop is None:
            pytest.fail(f"Timeout after {seconds:.0f} s", pytrace=False)

        def cancel_all() -> None:
            for task in asyncio.all_tasks(loop):
                task.cancel(f"{item.nodeid}: timeout after {seconds:.0f} s")

        loop.call_soon_threadsafe(cancel_all)  # (wakes the loop up from its select)

    signal.signal(signal.SIGALRM, first)
    signal.setitimer(signal.ITIMER_REAL, seconds)


def disarm() -> None:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
