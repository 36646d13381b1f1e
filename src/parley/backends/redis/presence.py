"""`RedisPresenceStore`: presence members shared by the nodes of a cluster, in Redis, and the
nodes' leases that let a surviving node remove a dead one's members.

Keys, under `{prefix}:p:{app_id}:{channel}:` (channel names hold no ':'):
- `info` (hash): user id -> the user's info (JSON), from its first entry;
- `order` (sorted set): user id -> its position, the order it became a member in (`seq`, a
  counter that a channel made anew starts from Redis' clock in microseconds, so positions
  only grow, also across a channel that emptied and filled again: a page's `after` from
  before still skips no one);
- `entries` (hash): "node|connection" -> user id;
- `count` (hash): user id -> how many entries it has.
And `{prefix}:p:node:{node}` (set): "app\\nchannel\\nuser\\nconnection" of every entry of
that node, for `remove_node`. Each operation is one Lua script: atomic, the member limit
checked and the entry added in the same step. The scripts read infos in slices of 1,000 users
(`HMGET`): Redis' Lua cannot `unpack` more than about 8,000 values, and a channel may have
10,000 members or more. `members_page` reads `order` by score (ZRANGEBYSCORE from `(after`),
so pages keep the join order.

Leases. A node is known by a key `node.generation` (`PresenceStore.register`): its entries
are written under it, and `{prefix}:p:leases` (sorted set) holds its lease's end in Redis'
own clock (TIME), so the nodes' clocks need not agree. `heartbeat` extends the lease; it
fails once the lease has ended (the node was paused or cut off longer than the lease): the
node then registers anew under a new generation and writes its live entries again, so the
old generation's entries, which a reaper removes, never come back. `reap` is run by every
node and acts on one: the holder of `{prefix}:p:reaper` (SET NX with an expiry, renewed by
its holder), which takes the lapsed leases out of the set and returns them; the node removes
their entries (`remove_node`) and tells the cluster who left.

A Redis Cluster is not supported: `remove_node` touches keys it learns as it goes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from redis.exceptions import RedisError

from parley.backends.presence import Departure, MembersPage, PresenceFull, PresenceStore
from parley.backends.redis import connect
from parley.errors import StoreUnavailable

ADD = """
local base, entry, user = KEYS[1], ARGV[1], ARGV[2]
local function next_position()
  if redis.call('EXISTS', base .. 'seq') == 0 then
    local t = redis.call('TIME')
    redis.call('SET', base .. 'seq', t[1] .. string.sub('00000' .. t[2], -6))
  end
  return redis.call('INCR', base .. 'seq')
end
if redis.call('HEXISTS', base .. 'entries', entry) == 1 then return 0 end
local count = tonumber(redis.call('HGET', base .. 'count', user) or '0')
if count == 0 then
  local limit = tonumber(ARGV[4])
  if redis.call('HLEN', base .. 'info') >= limit then return -1 end
  redis.call('HSET', base .. 'info', user, ARGV[3])
  redis.call('ZADD', base .. 'order', next_position(), user)
end
redis.call('HSET', base .. 'entries', entry, user)
redis.call('HINCRBY', base .. 'count', user, 1)
redis.call('SADD', KEYS[2], ARGV[5])
if count == 0 then return 1 end
return 0
"""

# the removal of one entry, shared by REMOVE and REMOVE_NODE: 1 when it was the user's last
REMOVE_ONE = """
local function remove_one(base, entry, user)
  if redis.call('HGET', base .. 'entries', entry) ~= user then return -1 end
  redis.call('HDEL', base .. 'entries', entry)
  if redis.call('HINCRBY', base .. 'count', user, -1) > 0 then return 0 end
  redis.call('HDEL', base .. 'count', user)
  redis.call('HDEL', base .. 'info', user)
  redis.call('ZREM', base .. 'order', user)
  if redis.call('HLEN', base .. 'info') == 0 then
    redis.call('DEL', base .. 'seq', base .. 'order', base .. 'count', base .. 'entries')
  end
  return 1
end
"""

REMOVE = (
    REMOVE_ONE
    + """
local found = remove_one(KEYS[1], ARGV[1], ARGV[2])
if found >= 0 then redis.call('SREM', KEYS[2], ARGV[3]) end
if found == 1 then return 1 end
return 0
"""
)

# KEYS[1]: the node's set; ARGV[1]: the key prefix ("{prefix}:p:"), ARGV[2]: the node
REMOVE_NODE = (
    REMOVE_ONE
    + """
local gone = {}
for _, item in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local app, channel, user, conn = string.match(item, '^(.-)\\n(.-)\\n(.-)\\n(.*)$')
  if app then
    local base = ARGV[1] .. app .. ':' .. channel .. ':'
    if remove_one(base, ARGV[2] .. '|' .. conn, user) == 1 then
      table.insert(gone, app)
      table.insert(gone, channel)
      table.insert(gone, user)
    end
  end
end
redis.call('DEL', KEYS[1])
return gone
"""
)

# infos of users[first..last] (at most 1,000: Lua's unpack has a limit), 'null' for none
INFOS = """
local function infos(base, users, first, last, each)
  for from = first, last, 1000 do
    local upto = math.min(from + 999, last)
    local got = redis.call('HMGET', base .. 'info', unpack(users, from, upto))
    for i = from, upto do each(i, got[i - from + 1] or 'null') end
  end
end
"""

MEMBERS = (
    INFOS
    + """
local users = redis.call('ZRANGE', KEYS[1] .. 'order', 0, -1)
local out = {}
infos(KEYS[1], users, 1, #users, function(i, info)
  table.insert(out, users[i])
  table.insert(out, info)
end)
return out
"""
)

# ARGV: the position to start after, how many at most (-1: all); user, position, info each
MEMBERS_PAGE = (
    INFOS
    + """
local flat = redis.call('ZRANGEBYSCORE', KEYS[1] .. 'order', '(' .. ARGV[1], '+inf',
  'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local users = {}
for i = 1, #flat, 2 do table.insert(users, flat[i]) end
local out = {}
infos(KEYS[1], users, 1, #users, function(i, info)
  table.insert(out, users[i])
  table.insert(out, flat[2 * i])
  table.insert(out, info)
end)
return out
"""
)

# KEYS[1]: the leases; ARGV: the node key, the lease in ms, 1 when it must exist already
HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ends = redis.call('ZSCORE', KEYS[1], ARGV[1])
if ARGV[3] == '1' and (not ends or tonumber(ends) < now) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1
"""

# KEYS: the leases, the reaper's key; ARGV: this node's key, the reaper's term in ms
REAP = """
local held = redis.call('GET', KEYS[2])
if held and held ~= ARGV[1] then return {} end
redis.call('SET', KEYS[2], ARGV[1], 'PX', tonumber(ARGV[2]))
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
for _, node in ipairs(lapsed) do redis.call('ZREM', KEYS[1], node) end
return lapsed
"""


class RedisPresenceStore(PresenceStore):
    eager = False  # redis.asyncio's timeouts need a task around the call

    def __init__(
        self, url: str, *, prefix: str, lease_s: float = 10.0, refresh_s: float = 5.0
    ) -> None:
        self.url = url
        self.prefix = f"{prefix}:p:"
        self.lease_ms = int(lease_s * 1000)
        # the reaper keeps its role while it renews it each refresh; a dead one's goes after two
        self.reaper_term_ms = int(2 * refresh_s * 1000)
        self._client: Any = connect.client(url, socket_connect_timeout=2)
        self._add = self._client.register_script(ADD)
        self._remove = self._client.register_script(REMOVE)
        self._remove_node = self._client.register_script(REMOVE_NODE)
        self._members = self._client.register_script(MEMBERS)
        self._members_page = self._client.register_script(MEMBERS_PAGE)
        self._heartbeat = self._client.register_script(HEARTBEAT)
        self._reap = self._client.register_script(REAP)

    def _base(self, app_id: str, channel: str) -> str:
        return f"{self.prefix}{app_id}:{channel}:"

    def _node_set(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}"

    async def add(
        self,
        app_id: str,
        channel: str,
        user_id: str,
        user_info: Any,
        *,
        node_id: str,
        connection_id: str,
        limit: int,
    ) -> bool:
        result = await self._run(
            self._add,
            [self._base(app_id, channel), self._node_set(node_id)],
            [
                f"{node_id}|{connection_id}",
                user_id,
                orjson.dumps(user_info),
                limit,
                f"{app_id}\n{channel}\n{user_id}\n{connection_id}",
            ],
        )
        if result == -1:
            raise PresenceFull(channel, limit)
        return bool(result == 1)

    async def remove(
        self, app_id: str, channel: str, user_id: str, *, node_id: str, connection_id: str
    ) -> bool:
        result = await self._run(
            self._remove,
            [self._base(app_id, channel), self._node_set(node_id)],
            [
                f"{node_id}|{connection_id}",
                user_id,
                f"{app_id}\n{channel}\n{user_id}\n{connection_id}",
            ],
        )
        return bool(result == 1)

    async def members(self, app_id: str, channel: str) -> dict[str, Any]:
        flat = await self._run(self._members, [self._base(app_id, channel)], [])
        return {flat[i].decode(): orjson.loads(flat[i + 1]) for i in range(0, len(flat), 2)}

    async def members_page(
        self, app_id: str, channel: str, *, after: int = 0, limit: int | None = None
    ) -> MembersPage:
        # one more than asked for: whether another page follows
        flat = await self._run(
            self._members_page,
            [self._base(app_id, channel)],
            [after, -1 if limit is None else limit + 1],
        )
        members: dict[str, Any] = {}
        last = 0
        for i in range(0, len(flat), 3):
            if limit is not None and len(members) >= limit:
                return MembersPage(members, last)
            members[flat[i].decode()] = orjson.loads(flat[i + 2])
            last = int(float(flat[i + 1]))  # a score: a whole number below 2**53
        return MembersPage(members, None)

    async def count(self, app_id: str, channel: str) -> int:
        try:
            return int(await self._client.hlen(self._base(app_id, channel) + "info"))
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"presence: Redis: {exc}") from exc

    async def remove_node(self, node_id: str) -> list[Departure]:
        flat = await self._run(self._remove_node, [self._node_set(node_id)], [self.prefix, node_id])
        return [
            Departure(flat[i].decode(), flat[i + 1].decode(), flat[i + 2].decode())
            for i in range(0, len(flat), 3)
        ]

    async def heartbeat(self, node_id: str, registered: bool) -> bool:
        result = await self._run(
            self._heartbeat,
            [f"{self.prefix}leases"],
            [node_id, self.lease_ms, "1" if registered else "0"],
        )
        return bool(result == 1)

    async def reap(self, node_id: str) -> list[str]:
        lapsed = await self._run(
            self._reap,
            [f"{self.prefix}leases", f"{self.prefix}reaper"],
            [node_id, self.reaper_term_ms],
        )
        return [n.decode() for n in lapsed]

    async def check(self) -> None:
        await self._client.ping()

    async def close(self) -> None:
        await self._client.aclose()

    @staticmethod
    async def _run(script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"presence: Redis: {exc}") from exc
