"""`RedisChannelCounts`: subscriptions per channel and connections per app, counted over the
live nodes of a cluster in Redis.

Keys, under `{prefix}:c:` (app ids and node keys hold no ':'; channels are hash fields only):
- `a:{app}:nodes` (hash): node key -> the app's connections on that node; also the list of
  the nodes that wrote numbers for the app, which the queries walk;
- `a:{app}:on:{node}` (hash): channel -> its subscriptions on that node (channels with none
  are absent);
- `n:{node}` (set): the apps the node wrote numbers for, for `remove_node`.
A node's numbers are written by that node alone, under its lease key (`Cluster.presence_key`:
its id and a generation), so writes never conflict and need no counter arithmetic: each is
the absolute value read off the hub (HSET, or HDEL at 0), idempotent, and a failed batch is
made good by rewriting everything.

Writes are batched. The node notes the channels whose count changed (`changed`, from the
domain events: a set insertion per subscribe and leave, nothing else on the message path);
every `interval_s` (50 ms) a task reads their counts and the apps' connection counts off the
hubs and writes what changed in one script call (several for a very large rewrite). The same
call reads back, for the apps with a connection quota (`watched`), the other nodes'
connections, which `remote_connections` then answers without waiting. A batch that fails
(Redis unreachable) makes the next one replace everything the node has under its key; so do
`start` (what a process that had the same node id left is replaced) and `rekey`.

Answers: this node's own numbers from the hubs, exact and at once, plus the other nodes' from
Redis in one script call. They may be an interval behind the other nodes; a node's numbers
leave the answers when it closes (`close` deletes them), or when it dies, once the elected
reaper that removes its presence entries calls `remove_node` for its lapsed lease. Why the
lease rather than a TTL of the keys' own: a node that was paused past its lease must rewrite
everything under a new key anyway (it learns it from the heartbeat), and one mechanism then
answers for members and counts alike, with the same bound.

Occupancy (`occupy`, `vacate`, `settle`: backends.counts), one script call each, at once:
- `o:{app}:{channel}` (set): the node keys with a subscriber of the channel;
- `m:{node}` (set): `app` + newline + `channel` for each of those, for `remove_node`/`rekey`;
- `l:{app}:{channel}` (string): the channel is empty everywhere and on hold (or, with
  `hold`/`returned`, a presence member `{channel}\n{user}` is gone and on hold): the time (Redis
  `TIME`, ms) the hold ends. `occupy` deletes it (someone came back: no webhook either way);
  `settle` takes it once that time has come (the node whose hold ends last takes it: a
  vacate after another's starts a new hold). It expires `hold + LEFT_KEEP_S` after it was
  set, so a node that died holding one leaves nothing behind (its vacated webhook is lost).

A Redis Cluster is not supported: the scripts touch keys they learn as they go.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, Final

from redis.exceptions import RedisError

from parley import logs
from parley.backends.counts import ChannelCounts, Vacancy
from parley.backends.redis import connect
from parley.errors import StoreUnavailable

CLOSE_WAIT_S = 2.0  # how long close waits for the flush task to end
FLUSH_INTERVAL_S: Final = 0.05  # how often a node writes what changed (and reads the quotas)
CHUNK: Final = 2000  # channel updates per script call in a large rewrite

FAULTS = logs.Refusals(per_second=1, level=logging.WARNING)

# The removal of a node's numbers, shared by WRITE (replace) and REMOVE_NODE.
DROP_NODE = """
local function drop_node(base, node)
  local set = base .. 'n:' .. node
  for _, app in ipairs(redis.call('SMEMBERS', set)) do
    redis.call('HDEL', base .. 'a:' .. app .. ':nodes', node)
    redis.call('DEL', base .. 'a:' .. app .. ':on:' .. node)
  end
  redis.call('DEL', set)
end
"""

# ARGV: base, node, replace ('1': drop the node's numbers first), then n and n pairs (app,
# connections), then m and m triples (app, channel, subscriptions), then k and k apps whose
# other nodes' connections to return (in that order).
WRITE = (
    DROP_NODE
    + """
local base, node = ARGV[1], ARGV[2]
local set = base .. 'n:' .. node
if ARGV[3] == '1' then drop_node(base, node) end
local i = 4
local n = tonumber(ARGV[i])
i = i + 1
for _ = 1, n do
  redis.call('HSET', base .. 'a:' .. ARGV[i] .. ':nodes', node, ARGV[i + 1])
  redis.call('SADD', set, ARGV[i])
  i = i + 2
end
n = tonumber(ARGV[i])
i = i + 1
for _ = 1, n do
  local app, channel, count = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key = base .. 'a:' .. app .. ':on:' .. node
  if count == '0' then
    redis.call('HDEL', key, channel)
  else
    redis.call('HSET', key, channel, count)
    redis.call('HSETNX', base .. 'a:' .. app .. ':nodes', node, 0)
    redis.call('SADD', set, app)
  end
  i = i + 3
end
n = tonumber(ARGV[i])
i = i + 1
local out = {}
for _ = 1, n do
  local flat = redis.call('HGETALL', base .. 'a:' .. ARGV[i] .. ':nodes')
  local total = 0
  for j = 1, #flat, 2 do
    if flat[j] ~= node then total = total + tonumber(flat[j + 1]) end
  end
  table.insert(out, total)
  i = i + 1
end
return out
"""
)

# ARGV: base, node
REMOVE_NODE = (
    DROP_NODE
    + """
drop_node(ARGV[1], ARGV[2])
return 1
"""
)

LEFT_KEEP_S: Final = 60.0  # how long an `l:` marker outlives its hold

NOW_MS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# ARGV: base, node, app, channel. 1: the channel was empty everywhere, and not on hold.
OCCUPY = """
local base, node, app, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local key = base .. 'o:' .. app .. ':' .. channel
redis.call('SADD', base .. 'm:' .. node, app .. '\\n' .. channel)
if redis.call('SADD', key, node) == 1 and redis.call('SCARD', key) == 1 then
  if redis.call('DEL', base .. 'l:' .. app .. ':' .. channel) == 1 then return 0 end
  return 1
end
return 0
"""

# ARGV: base, node, app, channel, hold ms, keep ms. 1: empty everywhere now (hold begun).
VACATE = (
    NOW_MS
    + """
local base, node, app, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local key = base .. 'o:' .. app .. ':' .. channel
redis.call('SREM', base .. 'm:' .. node, app .. '\\n' .. channel)
if redis.call('SREM', key, node) == 1 and redis.call('SCARD', key) == 0 then
  local hold = tonumber(ARGV[5])
  redis.call('SET', base .. 'l:' .. app .. ':' .. channel, now_ms() + hold, 'PX', hold + tonumber(ARGV[6]))
  return 1
end
return 0
"""
)

# ARGV: base, app, key, hold ms, keep ms. A hold begins for a key that is not a channel.
HOLD = (
    NOW_MS
    + """
local hold = tonumber(ARGV[4])
redis.call('SET', ARGV[1] .. 'l:' .. ARGV[2] .. ':' .. ARGV[3], now_ms() + hold, 'PX', hold + tonumber(ARGV[5]))
return 1
"""
)

# ARGV: base, app, channel, now ('1': at shutdown, whatever the time). 1: a vacated is due.
SETTLE = (
    NOW_MS
    + """
local base, app, channel = ARGV[1], ARGV[2], ARGV[3]
local marker = base .. 'l:' .. app .. ':' .. channel
local due = redis.call('GET', marker)
if not due then return 0 end
if redis.call('SCARD', base .. 'o:' .. app .. ':' .. channel) > 0 then
  redis.call('DEL', marker)
  return 0
end
if ARGV[4] ~= '1' and now_ms() < tonumber(due) then return 0 end
redis.call('DEL', marker)
return 1
"""
)

# ARGV: base, node. The node's occupancy goes; returns app, channel, ... left empty.
DROP_OCCUPANCY = """
local base, node = ARGV[1], ARGV[2]
local set = base .. 'm:' .. node
local out = {}
for _, member in ipairs(redis.call('SMEMBERS', set)) do
  local cut = string.find(member, '\\n', 1, true)
  local app, channel = string.sub(member, 1, cut - 1), string.sub(member, cut + 1)
  local key = base .. 'o:' .. app .. ':' .. channel
  if redis.call('SREM', key, node) == 1 and redis.call('SCARD', key) == 0 then
    table.insert(out, app)
    table.insert(out, channel)
  end
end
redis.call('DEL', set)
return out
"""

# ARGV: base, old node, new node. The old key's occupancy moves to the new one.
MOVE_OCCUPANCY = """
local base, old, new = ARGV[1], ARGV[2], ARGV[3]
local set = base .. 'm:' .. old
for _, member in ipairs(redis.call('SMEMBERS', set)) do
  local cut = string.find(member, '\\n', 1, true)
  local key = base .. 'o:' .. string.sub(member, 1, cut - 1) .. ':' .. string.sub(member, cut + 1)
  redis.call('SREM', key, old)
  redis.call('SADD', key, new)
  redis.call('SADD', base .. 'm:' .. new, member)
end
redis.call('DEL', set)
return 1
"""

# ARGV: base, app, this node (left out), channel
SUBSCRIPTIONS = """
local base = ARGV[1] .. 'a:' .. ARGV[2] .. ':'
local total = 0
for _, node in ipairs(redis.call('HKEYS', base .. 'nodes')) do
  if node ~= ARGV[3] then
    local count = redis.call('HGET', base .. 'on:' .. node, ARGV[4])
    if count then total = total + tonumber(count) end
  end
end
return total
"""

# ARGV: base, app, this node (left out), prefix; returns channel, count, channel, count...
OCCUPIED = """
local base = ARGV[1] .. 'a:' .. ARGV[2] .. ':'
local prefix = ARGV[4]
local len = #prefix
local totals, order = {}, {}
for _, node in ipairs(redis.call('HKEYS', base .. 'nodes')) do
  if node ~= ARGV[3] then
    local flat = redis.call('HGETALL', base .. 'on:' .. node)
    for i = 1, #flat, 2 do
      local channel = flat[i]
      if len == 0 or string.sub(channel, 1, len) == prefix then
        local total = totals[channel]
        if total == nil then
          table.insert(order, channel)
          total = 0
        end
        totals[channel] = total + tonumber(flat[i + 1])
      end
    end
  end
end
local out = {}
for _, channel in ipairs(order) do
  table.insert(out, channel)
  table.insert(out, totals[channel])
end
return out
"""


class RedisChannelCounts(ChannelCounts):
    tracks = True

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        watched: Iterable[str] = (),
        interval_s: float = FLUSH_INTERVAL_S,
    ) -> None:
        super().__init__()
        self.base = f"{prefix}:c:"
        # the apps with a connection quota: each batch reads the other nodes' connections
        self.watched = tuple(watched)
        self.interval_s = interval_s
        self.node_key = ""  # none before `start`: nothing is written
        self._dirty: set[tuple[str, str]] = set()
        self._written: dict[str, int] = {}  # app -> the connections last written
        self._remote: dict[str, int] = {}  # app -> the other nodes' connections, last read
        self._replace = True  # the next batch replaces everything under the key
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._client: Any = connect.client(url, socket_connect_timeout=2, socket_timeout=5)
        self._write = self._client.register_script(WRITE)
        self._remove_node = self._client.register_script(REMOVE_NODE)
        self._subscriptions = self._client.register_script(SUBSCRIPTIONS)
        self._occupied = self._client.register_script(OCCUPIED)
        self._occupy = self._client.register_script(OCCUPY)
        self._vacate = self._client.register_script(VACATE)
        self._settle = self._client.register_script(SETTLE)
        self._hold = self._client.register_script(HOLD)
        self._drop_occupancy = self._client.register_script(DROP_OCCUPANCY)
        self._move_occupancy = self._client.register_script(MOVE_OCCUPANCY)

    # -- this node's numbers -----------------------------------------------------------------

    def changed(self, app_id: str, channel: str) -> None:
        self._dirty.add((app_id, channel))

    async def start(self, node_key: str) -> list[Vacancy]:
        self.node_key = node_key
        self._replace = True
        left: list[Vacancy] = []
        try:
            left = await self._drop(node_key)  # an earlier process's, under the same key
            await self.flush()
        except StoreUnavailable as exc:
            FAULTS.log("channel counts not written", reason=exc.message)
        self._task = asyncio.get_running_loop().create_task(self._keep())
        return left

    async def rekey(self, node_key: str) -> None:
        async with self._lock:
            old, self.node_key = self.node_key, node_key
            self._replace = True
            if old and old != node_key:
                await self._run(self._remove_node, [self.base, old])
                await self._run(self._move_occupancy, [self.base, old, node_key])
            await self._flush()

    async def remove_node(self, node_key: str) -> list[Vacancy]:
        await self._run(self._remove_node, [self.base, node_key])
        return await self._drop(node_key)

    async def _drop(self, node_key: str) -> list[Vacancy]:
        flat = await self._run(self._drop_occupancy, [self.base, node_key])
        return [Vacancy(flat[i].decode(), flat[i + 1].decode()) for i in range(0, len(flat), 2)]

    # -- occupancy ---------------------------------------------------------------------------

    async def occupy(self, app_id: str, channel: str) -> bool:
        async with self._lock:  # not while `rekey` moves the node's entries
            if not self.node_key:
                return True
            return bool(await self._run(self._occupy, [self.base, self.node_key, app_id, channel]))

    async def vacate(self, app_id: str, channel: str, hold_s: float) -> bool:
        async with self._lock:
            if not self.node_key:
                return True
            hold_ms, keep_ms = int(hold_s * 1000), int(LEFT_KEEP_S * 1000)
            args: list[Any] = [self.base, self.node_key, app_id, channel, hold_ms, keep_ms]
            return bool(await self._run(self._vacate, args))

    async def hold(self, app_id: str, key: str, hold_s: float) -> bool:
        hold_ms, keep_ms = int(hold_s * 1000), int(LEFT_KEEP_S * 1000)
        await self._run(self._hold, [self.base, app_id, key, hold_ms, keep_ms])
        return True

    async def returned(self, app_id: str, key: str) -> bool:
        return bool(await self._guarded(self._client.delete(f"{self.base}l:{app_id}:{key}")))

    async def settle(self, app_id: str, key: str, *, now: bool = False) -> bool:
        args = [self.base, app_id, key, "1" if now else "0"]
        return bool(await self._run(self._settle, args))

    async def flush(self) -> None:
        async with self._lock:
            await self._flush()

    def remote_connections(self, app_id: str) -> int:
        return self._remote.get(app_id, 0)

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.flush()
            except StoreUnavailable as exc:
                FAULTS.log("channel counts not written", reason=exc.message)

    async def _flush(self) -> None:
        """One batch: what changed since the last (everything, when replacing)."""
        node = self.node_key
        if not node:
            return
        local = self.local
        replace = self._replace
        apps = list(local.app_ids())
        if replace:
            self._dirty.clear()
            channels = [
                (app, name, count)
                for app in apps
                for name, count in local.occupied_channels(app, "").items()
            ]
            connections = {app: local.connections(app) for app in apps}
        else:
            dirty, self._dirty = self._dirty, set()
            channels = [(app, name, local.subscriptions(app, name)) for app, name in dirty]
            connections = {}
            for app in apps:
                count = local.connections(app)
                if self._written.get(app) != count:
                    connections[app] = count
        if not (replace or channels or connections or self.watched):
            return
        try:
            remote = await self._send(node, replace, connections, channels)
        except StoreUnavailable:
            self._replace = True  # what this batch held is written by a full one, later
            raise
        if replace:
            self._replace = False
            self._written = connections
        else:
            self._written.update(connections)
        self._remote = dict(zip(self.watched, remote, strict=True))

    async def _send(
        self,
        node: str,
        replace: bool,
        connections: dict[str, int],
        channels: list[tuple[str, str, int]],
    ) -> list[int]:
        """The batch in script calls of at most CHUNK channels: the first replaces and
        writes the connections, the last reads the other nodes' connections."""
        chunks = [channels[i : i + CHUNK] for i in range(0, len(channels), CHUNK)] or [[]]
        remote: list[int] = []
        for index, chunk in enumerate(chunks):
            first, last = index == 0, index == len(chunks) - 1
            args: list[Any] = [self.base, node, "1" if replace and first else "0"]
            pairs = connections if first else {}
            args.append(len(pairs))
            for app, count in pairs.items():
                args += (app, count)
            args.append(len(chunk))
            for app, name, count in chunk:
                args += (app, name, count)
            reads = self.watched if last else ()
            args.append(len(reads))
            args += reads
            remote = await self._run(self._write, args)
        return [int(n) for n in remote]

    # -- answers -----------------------------------------------------------------------------

    async def subscriptions(self, app_id: str, channel: str) -> int:
        others = await self._run(self._subscriptions, [self.base, app_id, self.node_key, channel])
        return self.local.subscriptions(app_id, channel) + int(others)

    async def occupied_channels(self, app_id: str, prefix: str = "") -> dict[str, int]:
        flat = await self._run(self._occupied, [self.base, app_id, self.node_key, prefix])
        counts = self.local.occupied_channels(app_id, prefix)
        for i in range(0, len(flat), 2):
            name = flat[i].decode()
            counts[name] = counts.get(name, 0) + int(flat[i + 1])
        return counts

    async def connections(self, app_id: str) -> int:
        nodes = await self._guarded(self._client.hgetall(f"{self.base}a:{app_id}:nodes"))
        others = sum(int(n) for key, n in nodes.items() if key.decode() != self.node_key)
        return self.local.connections(app_id) + others

    async def check(self) -> None:
        await self._client.ping()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # bounded: a client that swallows the cancellation must not hang the shutdown
            await asyncio.wait((task,), timeout=CLOSE_WAIT_S)
        if self.node_key:
            try:
                await self.remove_node(self.node_key)
            except StoreUnavailable as exc:
                FAULTS.log("channel counts not removed at close", reason=exc.message)
        self.node_key = ""
        await self._client.aclose()

    async def _run(self, script: Any, args: Sequence[Any]) -> Any:
        return await self._guarded(script(keys=[], args=args))

    async def _guarded(self, call: Awaitable[Any]) -> Any:
        """`call`'s answer; StoreUnavailable when Redis fails it."""
        try:
            return await call
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"channel counts: Redis: {exc}") from exc
