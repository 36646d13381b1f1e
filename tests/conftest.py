from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import hangs
from tests.support.server import ROOT, ParleyServer

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool:
    """A test past its `timeout` fails with its asyncio tasks' stacks (tests.support.hangs)."""
    hangs.arm(item, settings.timeout)
    return True


def pytest_timeout_cancel_timer(item: pytest.Item) -> bool:
    hangs.disarm()
    return True


def require(condition: bool, reason: str) -> None:
    """Skip loudly outside CI when a prerequisite is missing; under CI=true, fail instead."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"prerequisite missing under CI: {reason}")
    pytest.skip(f"PREREQUISITE MISSING: {reason}")


@pytest.fixture
def node_modules() -> Path:
    require(shutil.which("node") is not None, "node is not installed")
    modules = ROOT / "node_modules"
    require((modules / "pusher-js").is_dir(), "node_modules missing: run `npm ci`")
    return modules


@pytest.fixture
def server() -> Iterator[ParleyServer]:
    """A fresh server with client events on and a fast liveness sweep."""
    with ParleyServer(env={"PARLEY_APP_CLIENT_EVENTS": "true"}) as srv:
        yield srv
