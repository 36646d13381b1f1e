"""Run a Node scenario script from tests/e2e/js/ against a test server: the script asserts,
prints what it saw and exits 0 or 1. A script that needs the test to act on the server (drain
and restart) prints `@@step NAME` and waits for `@@go NAME` on stdin."""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable

import pytest

from tests.support.server import ROOT, ParleyServer

JS = ROOT / "tests" / "e2e" / "js"
NODE_TIMEOUT_S = 70.0


def run_scenario(
    server: ParleyServer,
    script: str,
    *args: str,
    steps: dict[str, Callable[[], None]] | None = None,
    timeout: float = NODE_TIMEOUT_S,
    env: dict[str, str] | None = None,
) -> list[str]:
    """Run `node tests/e2e/js/SCRIPT ARGS` against `server`; fail with its output unless exit 0.
    `env` adds variables (PARLEY_E2E_TLS=1 with NODE_EXTRA_CA_CERTS: wss and https)."""
    env = dict(
        os.environ,
        **(env or {}),
        PARLEY_E2E_HOST=server.host,
        PARLEY_E2E_PORT=str(server.port),
        PARLEY_E2E_APP_ID=server.app_id,
        PARLEY_E2E_KEY=server.key,
        PARLEY_E2E_SECRET=server.secret,
    )
    lines: list[str] = []
    problem = ""
    with subprocess.Popen(
        ["node", str(JS / script), *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        output: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                output.put(line)
            output.put(None)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout
        finished = False
        try:
            while True:
                try:
                    line = output.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    problem = f"node {script} did not finish within {timeout:.0f} s"
                    break
                if line is None:
                    finished = True
                    break
                lines.append(line)
                if line.startswith("@@step "):
                    name = line.split()[1]
                    action = (steps or {}).get(name)
                    if action is None:
                        problem = f"node {script} asked for unknown step {name!r}"
                        break
                    action()
                    proc.stdin.write(f"@@go {name}\n")
                    proc.stdin.flush()
        finally:
            if not finished and proc.poll() is None:
                proc.kill()
            code = proc.wait(timeout=10)
            reader.join(5)
    if problem or code != 0:
        pytest.fail(
            f"{problem or f'node {script} exited {code}'}\n"
            f"--- node output ---\n{''.join(lines)}"
            f"--- parley log (last 40 lines) ---\n{''.join(server.stderr_lines[-40:])}",
            pytrace=False,
        )
    return lines
