"""Message ids: 32 hex digits, unique in a process and across processes."""

from __future__ import annotations

import re
import subprocess
import sys

from parley.backends.history import new_message_id


def test_ids_are_32_hex_digits_and_never_repeat_in_a_process() -> None:
    ids = [new_message_id() for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids), ids[:3]
    assert len(set(ids)) == len(ids)
    assert len({i[:16] for i in ids}) == 1  # the process's prefix


def test_two_processes_draw_different_prefixes() -> None:
    code = "from parley.backends.history import new_message_id as n; print(n())"
    first, second = (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    )
    assert re.fullmatch(r"[0-9a-f]{32}", first) and first[:16] != second[:16]
