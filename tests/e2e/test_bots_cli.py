"""`parley bots` as an operator runs it: a bot added from the command line on the SQLite file
prints its secret once, and a server started afterwards on that file lets the bot act with
it; a taken name, a webhook URL that is not http(s) and an unknown app are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.inproc import APP_ID, KEY, SECRET, app_settings, serving
from tests.support.pusher_async import AsyncApi
from tests.support.server import ROOT, TIMEOUT

pytestmark = pytest.mark.e2e


def bots(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env.update(
        PARLEY_DATA_DIR=str(data_dir),
        PARLEY_APP_ID=APP_ID,
        PARLEY_APP_KEY=KEY,
        PARLEY_APP_SECRET=SECRET,
        PARLEY_STORE="sqlite",
    )
    return subprocess.run(
        [sys.executable, "-m", "parley", "bots", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=TIMEOUT * 3,
    )


async def test_a_bot_added_on_the_command_line_acts_with_the_secret_it_printed(
    tmp_path: Path,
) -> None:
    added = bots(tmp_path, "add", "helper", "--webhook-url", "http://127.0.0.1:9/hook")
    assert added.returncode == 0, added.stderr
    first, _, rest = added.stdout.partition("\n")
    assert "shown this once" in first
    bot = json.loads(rest)
    assert bot["name"] == "helper" and bot["webhook_url"] == "http://127.0.0.1:9/hook"
    assert bot["id"].startswith("b_") and len(bot["secret"]) >= 40

    listed = bots(tmp_path, "list")
    assert listed.returncode == 0, listed.stderr
    (line,) = listed.stdout.splitlines()
    assert json.loads(line)["id"] == bot["id"] and bot["secret"] not in listed.stdout

    for args, reason in (
        (("add", "helper"), "has a bot named 'helper'"),
        (("add", "other", "--webhook-url", "ftp://example.org/x"), "http:// or https://"),
        (("add", "bad name"), "'name' must be"),
    ):
        refused = bots(tmp_path, *args)
        assert refused.returncode == 1 and reason in refused.stderr, (args, refused.stderr)

    async with serving(app_settings(tmp_path, store="sqlite")) as app:
        api = AsyncApi(app.http_url, app.app.id, app.app.key, app.app.secret)
        try:
            path = f"/apps/{APP_ID}/bots/{bot['id']}/references"
            mine = await api.request(
                "GET", path, headers={"Authorization": f"Bearer {bot['secret']}"}
            )
            assert (mine.status, mine.json()) == (200, {"references": []})
            wrong = await api.request("GET", path, headers={"Authorization": "Bearer nope"})
            assert wrong.status == 403 and "Not authenticated as bot" in wrong.json()["error"]
        finally:
            await api.close()
