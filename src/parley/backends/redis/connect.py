"""`client`: the one way Parley makes a Redis client from the broker URL.

Two forms of URL:

- `redis://[[user]:password@]host[:port][/db]` and `rediss://...` (TLS): one Redis server,
  as redis-py's `Redis.from_url` reads them (query options included).
- `redis+sentinel://[[user]:password@]host1[:port1][,host2[:port2]...]/service[/db]`: the
  master of `service` as Redis Sentinel names it, the sentinels at host1:port1 and so on (port
  26379 by default). The user and password are the master's (Sentinel passes them on to a
  replica promoted in its place); the sentinels are asked without them. `rediss+sentinel://`
  is the same with TLS to the sentinels and to the master (redis-py's default certificate
  checks). The client asks a sentinel for the master's address on each new connection, and a
  connection to a master demoted by a failover fails (redis-py turns its READONLY error into
  a connection error), so the callers' reconnecting follows a failover.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel

from parley.redis_url import is_sentinel, parse_sentinel


class SentinelRedis(aioredis.Redis):
    """The client of a Sentinel-managed master: closing it closes the sentinels' clients
    too."""

    sentinel_manager: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            sentinel, self.sentinel_manager = self.sentinel_manager, None
            if sentinel is not None:
                await sentinel.aclose()


def client(url: str, **options: Any) -> aioredis.Redis:
    """A client for the broker URL `url` (either form above); `options` (socket timeouts,
    health_check_interval...) go to the connections to the Redis server, and the socket_*
    ones to the connections to the sentinels too."""
    if not is_sentinel(url):
        return aioredis.Redis.from_url(url, **options)
    parsed = parse_sentinel(url)
    sentinel_options: dict[str, Any] = {k: v for k, v in options.items() if k.startswith("socket_")}
    if parsed.tls:
        sentinel_options["ssl"] = True
    sentinel = Sentinel(list(parsed.sentinels), sentinel_kwargs=sentinel_options)
    master = sentinel.master_for(
        parsed.service,
        redis_class=SentinelRedis,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        ssl=parsed.tls,
        **options,
    )
    assert isinstance(master, SentinelRedis)
    master.sentinel_manager = sentinel
    return master
