"""Faults from below, on a real server: a disk that stops taking writes (the process's file
size limit lowered with prlimit, so writes fail with EFBIG as a full disk fails them with
ENOSPC) makes publishes answer 503 while everything else keeps working, and once the disk
takes writes again the server carries on by itself, its history gapless."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import require
from tests.support.pusher_raw import RawClient, history, signed_request, unique
from tests.support.server import ParleyServer

pytestmark = pytest.mark.e2e


def limit_file_size(pid: int, size: str) -> None:
    subprocess.run(["prlimit", f"--pid={pid}", f"--fsize={size}:unlimited"], check=True)


def test_a_disk_that_refuses_writes_is_503_and_the_server_recovers_by_itself() -> None:
    require(shutil.which("prlimit") is not None, "prlimit (util-linux) is not installed")
    with ParleyServer() as srv, RawClient(srv.ws_url) as watcher:
        assert srv.process is not None and srv.data_dir is not None
        channel = unique("disk-")
        watcher.subscribe(channel)
        path = f"/apps/{srv.app_id}/events"

        def publish(n: int) -> int:
            body = {"name": "e", "channels": [channel], "data": f"{n:04d}" + "x" * 2000}
            return signed_request(srv, "POST", path, body=body).status

        assert publish(0) == 200
        log = srv.data_dir / "parley.db.history-log"
        written = sum(p.stat().st_size for p in log.glob("*.jsonl"))
        limit_file_size(srv.process.pid, str(written + 20_000))
        statuses = [publish(n) for n in range(1, 40)]
        assert 500 not in statuses, statuses
        refused = statuses.index(503)  # the disk filled within 40 publishes of 2 KB
        assert set(statuses[refused:]) == {503}, statuses
        answer = signed_request(
            srv, "POST", path, body={"name": "e", "channels": [channel], "data": "x"}
        )
        assert answer.status == 503 and "history cannot be written" in answer.json()["error"]
        watcher.ping()  # connections are served meanwhile
        limit_file_size(srv.process.pid, "unlimited")
        assert publish(99) == 200  # no restart, no operator
        got = watcher.expect("e", channel, where=lambda f: str(f["data"]).startswith("0099"))
        offsets = [e["parley"]["offset"] for e in history(srv, channel)["events"]]
        assert offsets == list(range(1, refused + 3)), offsets  # gapless: nothing half-stored
        assert got["parley"]["offset"] == offsets[-1]
        tracebacks = sum("Traceback" in line for line in srv.stderr_lines)
        assert tracebacks == 0, "".join(srv.stderr_lines[-20:])
