"""What an event the server publishes (HTTP API, outbox) may be named: pure rules, shared by
every way in, so each refuses the same names with the same words."""

from __future__ import annotations

from typing import Any


def event_name_problem(name: Any, max_length: int) -> str | None:
    """Why `name` cannot name a published event, or None when it can."""
    if not isinstance(name, str) or not name:
        return "Missing event 'name'"
    if len(name) > max_length:
        return f"Event name is longer than {max_length} characters"
    if "\x00" in name:  # no store takes it (PostgreSQL text)
        return "Event name may not contain NUL characters"
    if name.startswith(("pusher:", "pusher_internal:")):
        return f"Event name {name!r} is reserved (pusher: and pusher_internal:)"
    return None
