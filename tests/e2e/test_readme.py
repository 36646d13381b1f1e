"""The README's built-in login walkthrough, run as written: its shell block (users, grants,
the token from curl), its pusher-js block under Node, and its PyPI SDK grant call, against a
real server. Only the port (and the command's path, `.venv/bin/parley`, for the interpreter
running the tests) are substituted, so a README that drifts from the server fails here."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.conftest import require
from tests.support.pusher_raw import http_request, sdk
from tests.support.server import ROOT, TIMEOUT, ParleyServer

pytestmark = pytest.mark.e2e

SECRET = "readme-walkthrough-secret-0123456789"


def readme_block(kind: str) -> str:
    """The fenced block right after `<!-- readme-flow: KIND -->` in README.md."""
    text = (ROOT / "README.md").read_text()
    found = re.search(rf"<!-- readme-flow: {kind} -->\n```\w+\n(.*?)\n```", text, re.S)
    assert found, f"README.md has no readme-flow block {kind!r}"
    return found.group(1)


def on_port(code: str, port: int) -> str:
    assert "6001" in code, "the README's block no longer names the default port"
    return code.replace("6001", str(port))


@pytest.fixture
def srv() -> Iterator[ParleyServer]:
    with ParleyServer(secret=SECRET, env={"PARLEY_APP_AUTH": "builtin"}) as server:
        yield server


def same_environment(server: ParleyServer) -> dict[str, str]:
    """What the README asks for: the server's settings, and APP_ID / APP_KEY from its start
    line."""
    assert server.data_dir is not None
    return dict(
        os.environ,
        PARLEY_DATA_DIR=str(server.data_dir),
        PARLEY_APP_ID=server.app_id,
        PARLEY_APP_KEY=server.key,
        PARLEY_APP_SECRET=SECRET,
        PARLEY_APP_AUTH="builtin",
        APP_ID=server.app_id,
        APP_KEY=server.key,
    )


def run_shell_block(server: ParleyServer) -> dict[str, object]:
    script = on_port(readme_block("shell"), server.port)
    script = script.replace(".venv/bin/parley", f"{sys.executable} -m parley")
    require(shutil.which("curl") is not None, "curl is not installed")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env=same_environment(server),
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 4,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    answer: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def wait_for_grant(server: ParleyServer, token: str, channel: str) -> None:
    body = urlencode({"socket_id": "1.1", "channel_name": channel}).encode()
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    deadline = time.monotonic() + TIMEOUT
    path = f"/apps/{server.app_id}/pusher/auth"
    while http_request(server, "POST", path, body=body, headers=headers).status != 200:
        assert time.monotonic() < deadline, "the CLI's grant never reached the server"
        time.sleep(0.05)  # bounded by the deadline; the server polls its store twice a second


def test_the_readme_walkthrough_runs_as_written(srv: ParleyServer, node_modules: Path) -> None:
    login = run_shell_block(srv)
    assert login["user_id"] == "alice" and isinstance(login["token"], str)
    # The running server follows the store the CLI wrote to within a second (it polls it);
    # a person takes longer than that to reach the next block, this test waits for it.
    wait_for_grant(srv, str(login["token"]), "presence-team-1")

    script = ROOT / "tests" / "e2e" / "js" / f".readme-{uuid.uuid4().hex[:8]}.mjs"
    script.write_text(on_port(readme_block("js"), srv.port))  # beside node_modules' resolution
    lines: queue.Queue[str] = queue.Queue()
    node = subprocess.Popen(
        [shutil.which("node") or "node", str(script)],
        env={**same_environment(srv), "TOKEN": str(login["token"])},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    reader = threading.Thread(target=lambda: [lines.put(line) for line in node.stdout or ()])
    reader.start()

    def expect(line: str) -> list[str]:
        seen = []
        while True:
            try:
                got = lines.get(timeout=TIMEOUT).rstrip("\n")
            except queue.Empty:
                raise AssertionError(
                    f"no {line!r} from the README's pusher-js; got {seen}"
                ) from None
            seen.append(got)
            if got == line:
                return seen

    try:
        expect("joined as alice")  # the token opened the connection and the grant the channel
        sdk(srv, secret=SECRET).trigger("presence-team-1", "note", {"text": "from the backend"})
        expect('note {"text":"from the backend"}')
    finally:
        node.kill()
        node.wait(timeout=TIMEOUT)
        reader.join(timeout=TIMEOUT)
        if node.stdout is not None:
            node.stdout.close()
        script.unlink()


def test_the_readmes_sdk_grant_call_works(srv: ParleyServer) -> None:
    code = on_port(readme_block("python"), srv.port)
    scope: dict[str, object] = {"app_id": srv.app_id, "key": srv.key, "secret": SECRET}
    exec(compile(code, "README.md", "exec"), scope)  # the README's own snippet
    grant = scope["grant"]
    assert isinstance(grant, dict)
    assert (grant["subject"], grant["resource"]) == ("alice", "presence-team-*")


def test_the_readmes_conversation_call_works(srv: ParleyServer) -> None:
    env = same_environment(srv)
    for user in ("alice", "bob"):
        added = subprocess.run(
            [sys.executable, "-m", "parley", "users", "add", user, "--password-stdin"],
            input="s3cret",
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT * 3,
            cwd=ROOT,
        )
        assert added.returncode == 0, added.stderr
    login = http_request(
        srv,
        "POST",
        f"/apps/{srv.app_id}/auth/token",
        body=json.dumps({"username": "alice", "password": "s3cret"}).encode(),
    )
    assert login.status == 200, login.body
    require(shutil.which("curl") is not None, "curl is not installed")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", on_port(readme_block("conversation"), srv.port)],
        env={**env, "ALICE_JWT": json.loads(login.body)["token"]},
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 4,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    conversation = json.loads(done.stdout.strip().splitlines()[-1])
    assert conversation["channel"] == f"private-conv-{conversation['id']}"
    assert (conversation["kind"], conversation["state"]) == ("direct", "pending")
    assert conversation["members"] == ["alice", "bob"]
