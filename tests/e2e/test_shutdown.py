"""Graceful shutdown through a real `parley serve` process: on SIGTERM every connection is
told 4200, connections that never answer the close do not keep the process past its
`shutdown_grace_s` (the unit test `test_node.py` holds a drain to the grace exactly), it exits
0 with a `drained` line, and every publish it acknowledged is in
history when it starts again."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.support.pusher_raw import all_history, sdk, unique
from tests.support.raw_ws import CLOSE, RawWebSocket
from tests.support.server import TIMEOUT, ParleyServer

pytestmark = pytest.mark.e2e

GRACE_S = 2.0


def test_sigterm_drains_within_the_grace_and_loses_nothing_acknowledged(tmp_path: Path) -> None:
    env = {"PARLEY_STORE": "sqlite", "PARLEY_SHUTDOWN_GRACE_S": str(GRACE_S)}
    server = ParleyServer(env=env, data_dir=tmp_path).start()
    channel = unique("drain-")
    # connections that read the 4200 but never answer the close, as a stuck client does
    stuck = [
        RawWebSocket(server.host, server.port, f"/app/{server.key}?protocol=7") for _ in range(20)
    ]
    acknowledged: list[int] = []
    publishing = threading.Event()
    stop = threading.Event()

    def publish() -> None:
        client = sdk(server)
        for i in range(100_000):
            if stop.is_set():
                return
            try:
                client.trigger(channel, "e", str(i))
            except Exception:
                return  # refused or cut by the shutdown: not acknowledged
            acknowledged.append(i)
            if i == 50:
                publishing.set()

    publisher = threading.Thread(target=publish)
    publisher.start()
    try:
        for ws in stuck:
            assert ws.expect("pusher:connection_established")
        assert publishing.wait(TIMEOUT), "the publisher got no acknowledgement"
        began = time.monotonic()
        assert server.process is not None
        server.process.terminate()
        for ws in stuck:
            error = ws.read_message()
            assert (error["event"], error["data"]["code"]) == ("pusher:error", 4200)
            assert ws.read_frame().opcode == CLOSE  # and left unanswered
        code = server.process.wait(GRACE_S + TIMEOUT)
        took = time.monotonic() - began
    finally:
        stop.set()
        publisher.join(TIMEOUT)
        for ws in stuck:
            ws.close()
    assert code == 0
    # clients that never answer the close do not hold the process past its grace
    assert took < GRACE_S + 3, f"the drain took {took:.1f} s"
    assert any('"drained"' in line for line in server.log_events())
    server.stop()  # exited already: this closes its pipes
    restarted = ParleyServer(env=env, data_dir=tmp_path).start()
    try:
        stored = all_history(restarted, channel)
        assert acknowledged, "nothing was acknowledged"
        assert [str(i) for i in acknowledged] == stored[: len(acknowledged)]
    finally:
        restarted.cleanup()
