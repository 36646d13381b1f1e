"""The login-attempts role: failed logins counted per key (a user, an address) so that
guessing passwords is slow (`LoginAttempts`).

`limit(key)` failures within `window_s` lock the key until the oldest leaves the window;
addresses (keys starting `addr:`) get a larger allowance than users, since many people may
share one. An attempt counts as a failure from the moment it is let through, before the
password is checked, and is taken back if it succeeds: concurrent guesses cannot all pass
the check while the first ones are still hashing. Implementations: `memory.throttle` (one
node) and `redis.throttle` (a cluster: the same counts on every node).
"""

from __future__ import annotations

from typing import Protocol

USER_LIMIT = 5
ADDRESS_LIMIT = 20
WINDOW_S = 60.0


def limit_of(key: str, user_limit: int, address_limit: int) -> int:
    return address_limit if key.startswith("addr:") else user_limit


class LoginAttempts(Protocol):
    async def attempt(self, keys: list[str]) -> tuple[float, str]:
        """(0, a token) when the attempt may go on, counted as failed on every key; else
        (the seconds to wait, ""), and nothing counted."""

    async def succeeded(self, user_key: str, address_key: str, token: str) -> None:
        """The attempt `token` was right: the user's failures are forgiven, the address
        keeps its others."""
