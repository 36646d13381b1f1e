"""`RedisLoginAttempts`: failed logins counted in the cluster's Redis (`backends.throttle`),
so that a guesser gets the same allowance whichever node it asks.

Each key is a sorted set `{prefix}:login:{key}` of attempt ids scored by Redis' own clock
(TIME); one Lua script drops what left the window, checks every key's count and adds the
attempt to all of them, atomically: concurrent guesses on several nodes cannot all pass.
"""

from __future__ import annotations

import uuid
from typing import Any

from redis.exceptions import RedisError

from parley.backends.redis import connect
from parley.backends.throttle import ADDRESS_LIMIT, USER_LIMIT, WINDOW_S, limit_of
from parley.errors import StoreUnavailable

# KEYS: the keys' sets; ARGV: the window in ms, the attempt id, then each key's limit
ATTEMPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local wait = 0
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) >= tonumber(ARGV[i + 2]) then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    wait = math.max(wait, tonumber(oldest[2]) + window - now)
  end
end
if wait > 0 then return wait end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[2])
  redis.call('PEXPIRE', key, window)
end
return 0
"""


class RedisLoginAttempts:
    """A `backends.throttle.LoginAttempts` shared by a cluster."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        limit: int = USER_LIMIT,
        address_limit: int = ADDRESS_LIMIT,
        window_s: float = WINDOW_S,
    ) -> None:
        self.prefix = f"{prefix}:login:"
        self.limit = limit
        self.address_limit = address_limit
        self.window_ms = int(window_s * 1000)
        self._client: Any = connect.client(url, socket_connect_timeout=2)
        self._attempt = self._client.register_script(ATTEMPT)

    async def attempt(self, keys: list[str]) -> tuple[float, str]:
        token = uuid.uuid4().hex
        limits = [limit_of(k, self.limit, self.address_limit) for k in keys]
        try:
            wait_ms = await self._attempt(
                keys=[self.prefix + k for k in keys], args=[self.window_ms, token, *limits]
            )
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"login attempts: Redis: {exc}") from exc
        if wait_ms:
            return int(wait_ms) / 1000, ""
        return 0.0, token

    async def succeeded(self, user_key: str, address_key: str, token: str) -> None:
        try:
            await self._client.delete(self.prefix + user_key)
            await self._client.zrem(self.prefix + address_key, token)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"login attempts: Redis: {exc}") from exc

    async def close(self) -> None:
        await self._client.aclose()
