"""pusher-js in a real browser: Debian's Chromium (/usr/bin/chromium), driven by the npm
playwright-core from the committed lockfile; never a downloaded browser. The scenario is
tests/e2e/js/browser.mjs (see its header)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import require
from tests.support.node_scenarios import run_scenario
from tests.support.server import ROOT, ParleyServer

pytestmark = [pytest.mark.e2e, pytest.mark.node, pytest.mark.usefixtures("node_modules")]

CHROMIUM = Path("/usr/bin/chromium")


def test_pusher_js_in_chromium_connects_subscribes_receives_and_is_refused_a_wrong_key(
    server: ParleyServer,
) -> None:
    require(CHROMIUM.exists(), "Chromium is not installed: apt-get install chromium")
    require(
        (ROOT / "node_modules" / "playwright-core").is_dir(), "node_modules missing: run `npm ci`"
    )
    run_scenario(server, "browser.mjs")
