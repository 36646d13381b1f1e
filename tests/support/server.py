"""Start a real `parley serve` process for a test and tell it where it listens."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = float(os.environ.get("PARLEY_TEST_TIMEOUT", "10"))


@dataclass
class ParleyServer:
    """A running server. `env` adds PARLEY_* variables; `args` adds flags to `parley serve`."""

    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    app_id: str = "4242"
    key: str = "test-key"
    secret: str = "test-secret"
    host: str = "127.0.0.1"
    port: int = 0
    data_dir: Path | None = None
    wrapper: list[str] = field(default_factory=list)  # a command prefix (`ip netns exec NS`)
    process: subprocess.Popen[str] | None = None
    stdout_lines: list[str] = field(default_factory=list)
    stderr_lines: list[str] = field(default_factory=list)

    def start(self) -> ParleyServer:
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="parley-test-"))
        env = dict(os.environ)
        env.update(
            PARLEY_DATA_DIR=str(self.data_dir),
            PARLEY_APP_ID=self.app_id,
            PARLEY_APP_KEY=self.key,
            PARLEY_APP_SECRET=self.secret,
            PARLEY_LOG_LEVEL="debug",
        )
        env.update(self.env)
        self.process = subprocess.Popen(
            [
                *self.wrapper,
                sys.executable,
                *("-m", "parley", "serve", "--port", str(self.port), *self.args),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        ready = threading.Event()

        def pump_stdout() -> None:
            assert self.process and self.process.stdout
            for line in self.process.stdout:
                self.stdout_lines.append(line)
                match = re.search(r"listening on [\d.]+:(\d+)", line)
                if match:
                    self.port = int(match.group(1))
                    ready.set()
            ready.set()

        def pump_stderr() -> None:
            assert self.process and self.process.stderr
            for line in self.process.stderr:
                self.stderr_lines.append(line)

        self._pumps = [
            threading.Thread(target=pump_stdout, daemon=True),
            threading.Thread(target=pump_stderr, daemon=True),
        ]
        for pump in self._pumps:
            pump.start()
        if not ready.wait(TIMEOUT) or not self.port:
            self.kill()
            raise RuntimeError("parley did not start:\n" + "".join(self.stderr_lines[-20:]))
        return self

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/app/{self.key}?protocol=7"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = TIMEOUT) -> int:
        """SIGTERM and wait: the server drains (4200) and exits."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self._close_pipes()
        return code

    def _close_pipes(self) -> None:
        """Once the process is gone the pumps reach EOF; then the pipes can be closed."""
        for pump in getattr(self, "_pumps", []):
            pump.join(TIMEOUT)
        if self.process is not None:
            for pipe in (self.process.stdout, self.process.stderr):
                if pipe is not None and not pipe.closed:
                    pipe.close()

    def restart(self, timeout: float = TIMEOUT) -> ParleyServer:
        """Drain (SIGTERM: clients get 4200), then start again on the same port and data dir."""
        port = self.port
        self.stop(timeout)
        self.port = port
        return self.start()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(TIMEOUT)
        if self.process is not None:
            self._close_pipes()

    def cleanup(self) -> None:
        self.kill()
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_events(self) -> list[str]:
        return list(self.stderr_lines)

    def __enter__(self) -> ParleyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
