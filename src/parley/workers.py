"""`parley serve --workers N`: N processes of the same node configuration on one port
(SO_REUSEPORT: the kernel spreads new connections among them), one per core.

The workers share nothing in memory, so they need what several nodes need: the Redis broker
and the PostgreSQL store (refused otherwise, saying so). This process only supervises: it
starts each worker as `parley serve` with the same flags and `PARLEY_WORKER` set (the worker
then listens with SO_REUSEPORT and names itself `<node id>-w<i>`), passes SIGTERM and SIGINT
on (each worker drains), and starts again a worker that dies, at most once a second.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType

from parley import logs
from parley.core.ids import new_node_id
from parley.settings import Settings

WORKER_VARIABLE = "PARLEY_WORKER"  # set in a worker: its number, 1..N


def problem(settings: Settings, workers: int) -> str | None:
    """Why `workers` workers cannot serve with these settings, or None."""
    if workers < 1:
        return "--workers must be 1 or more"
    if workers == 1:
        return None
    if settings.broker == "memory" or settings.store != "postgres":
        return (
            f"--workers {workers} needs what several nodes need: PARLEY_BROKER=redis://... "
            "(with PARLEY_CLUSTER_SECRET) and PARLEY_STORE=postgres (with PARLEY_POSTGRES_URL); "
            "the workers share nothing else"
        )
    if settings.port == 0:
        return f"--workers {workers} needs a port (not 0): the workers share one"
    return None


def supervise(settings: Settings, workers: int, argv: list[str]) -> int:
    """Run `workers` workers until SIGTERM or SIGINT; the exit code of the last to stop."""
    base_id = settings.node_id or new_node_id()
    children: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False

    def start(i: int) -> None:
        env = dict(os.environ, **{WORKER_VARIABLE: str(i), "PARLEY_NODE_ID": f"{base_id}-w{i}"})
        children[i] = subprocess.Popen([sys.executable, "-m", "parley", *argv], env=env)

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for i in range(1, workers + 1):
        start(i)
    logs.info("workers started", workers=workers, port=settings.port, node_id=base_id)
    print(f"Parley supervising {workers} workers on {settings.host}:{settings.port}", flush=True)
    restarted_at: dict[int, float] = {}
    code = 0
    while children:
        time.sleep(0.2)
        for i, child in list(children.items()):
            status = child.poll()
            if status is None:
                continue
            if stopping:
                code = code or status
                del children[i]
            elif time.monotonic() - restarted_at.get(i, 0.0) >= 1.0:
                logs.warning("worker died: starting it again", worker=i, status=status)
                restarted_at[i] = time.monotonic()
                start(i)
    return code
