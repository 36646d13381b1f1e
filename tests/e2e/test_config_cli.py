"""Configuration mistakes as a new user makes them, through the real command line: each is one
clear line naming the key and what is expected, never a traceback, and a non-zero exit (a
misspelt variable only warns, by name, with the closest known one)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.server import TIMEOUT

pytestmark = pytest.mark.e2e


def parley(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    return subprocess.run(
        [sys.executable, "-m", "parley", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
    )


@pytest.mark.parametrize(
    ("toml", "problem"),
    [
        ('[apps]\nid = "1"\nkey = "a"\nsecret = "s"\n', "write [[apps]], not [apps]"),
        ("port = 7000\n", "'port' is outside any section; put it under [server]"),
        ("[sever]\nport = 7000\n", "unknown section [sever]"),
        ("[[history]]\npattern = 'a-*'\nmax_cnt = 5\n", "unknown key 'max_cnt'"),
        ('[[apps]]\nid = "chat"\nkey = "a"\nsecret = "s"\n', "'id' must be digits"),
    ],
)
def test_a_bad_config_file_is_one_line_and_exit_2(tmp_path: Path, toml: str, problem: str) -> None:
    config = tmp_path / "parley.toml"
    config.write_text(toml)
    done = parley(
        "serve", "--config", str(config), "--port", "0", env={"PARLEY_DATA_DIR": str(tmp_path)}
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("parley: configuration error: ") and problem in line, line


def test_a_misspelt_variable_is_named_with_the_closest_known_one(tmp_path: Path) -> None:
    done = parley(
        "migrate",
        env={
            "PARLEY_STORE": "memory",
            "PARLEY_DATA_DIR": str(tmp_path),
            "PARLEY_ACTIVITY_TIMEOUT": "30",
        },
    )
    assert done.returncode == 0, done.stderr
    assert (
        "parley: warning: unknown variable PARLEY_ACTIVITY_TIMEOUT is ignored "
        "(did you mean PARLEY_ACTIVITY_TIMEOUT_S?)"
    ) in done.stderr
