"""`RedisCachedEvents`: the last event of each cache channel, shared by the nodes of a cluster
in Redis (`backends.last_events`).

Keys. `{prefix}:cache:{app_id}:{channel}` (a string, SET with PX: it expires with the event's
TTL, in Redis' own clock). Its value: `{offset} {epoch}\\n`, a 32-byte HMAC-SHA256 under the
cluster secret, then the frame as the publishing node encoded it. The HMAC covers the key and
the rest, so a value written by anything but a node of the cluster, or moved to another key,
is refused by `get` (logged at most once a second, counted in `refused`) and answered as
nothing cached. One Lua script writes a value unless the key holds a newer one (same epoch,
an offset at least as high: `backends.last_events.newer`), so two nodes publishing on one
channel leave the later event, whichever write lands last.

Writes are off the message path. `put` keeps the event in a dict by channel (a newer put of a
channel replaces the one waiting) and wakes one writer task, which sends what waits in
pipelined script calls (up to CHUNK per round trip). At most `max_pending` channels wait: a put
of one more is dropped (counted in `dropped`, logged), and that event is then cached on its
publishing node alone. A write that fails (Redis away) is logged at most once a second and
tried again with back-off (0.1 s up to 5 s, jittered) until the event expires; the publish
that cached it is never affected. `get` answers this node's own waiting puts first, so the
node that published an event answers it at once, written or not.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Final

from redis.exceptions import RedisError

from parley import logs
from parley.backends.last_events import CachedEvents, LastEvent, last_event, newer
from parley.backends.redis import connect
from parley.errors import StoreUnavailable
from parley.waiting import wait_set

MAC_BYTES: Final = 32
CHUNK: Final = 500  # script calls per pipelined round trip
BACKOFF_FIRST_S: Final = 0.1
BACKOFF_MAX_S: Final = 5.0
CLOSE_WAIT_S: Final = 2.0  # how long close waits for what is waiting to be written

FAULTS = logs.Refusals(per_second=1, level=logging.WARNING)

# KEYS[1]: the event's key; ARGV: the value, its TTL in ms, its offset, its epoch
PUT = """
local offset = tonumber(ARGV[3])
if offset > 0 then
  local old = redis.call('GET', KEYS[1])
  if old then
    local old_offset, old_epoch = string.match(old, '^(%d+) ([^\\n]*)\\n')
    if old_offset and old_epoch == ARGV[4] and tonumber(old_offset) >= offset then
      return 0
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


def backoff(attempt: int) -> float:
    """Seconds before write attempt `attempt` + 1 (0, 1, ...): exponential, capped, jittered."""
    return random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**attempt))


@dataclass(frozen=True, slots=True)
class _Waiting:
    frame: bytes
    offset: int
    epoch: str
    expires_at: float  # time.monotonic()


class RedisCachedEvents(CachedEvents):
    shared = True

    def __init__(self, url: str, *, prefix: str, secret: bytes, max_pending: int = 10_000) -> None:
        self.base = f"{prefix}:cache:"
        self._secret = secret
        self.max_pending = max_pending
        self._client: Any = connect.client(url, socket_connect_timeout=2, socket_timeout=5)
        self._put = self._client.register_script(PUT)
        self._pending: dict[tuple[str, str], _Waiting] = {}
        self._writing: dict[tuple[str, str], _Waiting] = {}  # the batch being sent
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # nothing waits to be written
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.written = 0
        self.dropped = 0  # puts not kept: max_pending channels waited already
        self.refused = 0  # values whose HMAC did not verify

    def key(self, app_id: str, channel: str) -> str:
        return f"{self.base}{app_id}:{channel}"

    # -- writing -----------------------------------------------------------------------------

    def put(
        self,
        app_id: str,
        channel: str,
        frame: bytes,
        ttl_s: float,
        offset: int = 0,
        epoch: str = "",
    ) -> None:
        if self._closed or ttl_s <= 0:
            return
        key = (app_id, channel)
        pending = self._pending
        waiting = pending.get(key)
        if waiting is not None and not newer(offset, epoch, waiting.offset, waiting.epoch):
            return
        if waiting is None and len(pending) >= self.max_pending:
            self.dropped += 1
            FAULTS.log(
                "cached event not shared: too many wait for Redis",
                app_id=app_id,
                channel=channel,
                waiting=len(pending),
            )
            return
        pending[key] = _Waiting(frame, offset, epoch, time.monotonic() + ttl_s)
        self._idle.clear()
        self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._write_out())

    async def flush(self, timeout_s: float = 5.0) -> None:
        if self._idle.is_set():
            return
        if not await wait_set(self._idle, timeout_s):
            raise StoreUnavailable("cached events: Redis did not take them in time")

    async def _write_out(self) -> None:
        attempt = 0
        while not self._closed:  # (redis-py may swallow the cancellation `close` sends)
            if not self._pending:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch, self._pending = self._pending, {}
            self._writing = batch
            failure: Exception | None = None
            try:
                await self._write(batch)
            except Exception as exc:  # Redis away, mostly: the writer must outlive anything
                failure = exc
            self._writing = {}
            if failure is None:
                if attempt:
                    logs.info("cached events written to Redis again")
                attempt = 0
                continue
            FAULTS.log(
                "cached events not written to Redis: tried again",
                events=len(batch),
                reason=str(failure),
            )
            self._requeue(batch)
            await asyncio.sleep(backoff(attempt))
            attempt += 1

    def _requeue(self, batch: dict[tuple[str, str], _Waiting]) -> None:
        """A failed batch waits again, but for what expired or was put anew meanwhile."""
        now = time.monotonic()
        pending = self._pending
        for key, waiting in batch.items():
            if waiting.expires_at > now and key not in pending:
                if len(pending) >= self.max_pending:
                    self.dropped += 1
                    continue
                pending[key] = waiting

    async def _write(self, batch: dict[tuple[str, str], _Waiting]) -> None:
        items = list(batch.items())
        for start in range(0, len(items), CHUNK):
            now = time.monotonic()
            pipe = self._client.pipeline(transaction=False)
            calls = 0
            for (app_id, channel), waiting in items[start : start + CHUNK]:
                ttl_ms = int((waiting.expires_at - now) * 1000)
                if ttl_ms <= 0:
                    continue
                key = self.key(app_id, channel)
                value = self.seal(key, waiting.offset, waiting.epoch, waiting.frame)
                args: list[bytes | int | str] = [value, ttl_ms, waiting.offset, waiting.epoch]
                await self._put(keys=[key], args=args, client=pipe)  # queued: no round trip
                calls += 1
            if calls:
                await pipe.execute()
                self.written += calls

    # -- reading -----------------------------------------------------------------------------

    async def get(self, app_id: str, channel: str) -> LastEvent | None:
        own = self._pending.get((app_id, channel)) or self._writing.get((app_id, channel))
        if own is not None:
            left = own.expires_at - time.monotonic()
            if left > 0:
                return last_event(own.frame, left)
        key = self.key(app_id, channel)
        pipe = self._client.pipeline(transaction=True)
        pipe.get(key)
        pipe.pttl(key)
        try:
            value, ttl_ms = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"cached events: Redis: {exc}") from exc
        if value is None or ttl_ms <= 0:  # none, or expired between the two reads
            return None
        frame = self.open(key, value)
        if frame is not None:
            try:
                return last_event(frame, ttl_ms / 1000)
            except ValueError:
                pass
        self.refused += 1
        FAULTS.log("cached event refused: not written by a node of the cluster", key=key)
        return None

    # -- values ------------------------------------------------------------------------------

    def seal(self, key: str, offset: int, epoch: str, frame: bytes) -> bytes:
        """The value kept under `key`: the position, the HMAC, the frame."""
        head = f"{offset} {epoch}\n".encode()
        mac = hmac.new(self._secret, key.encode() + b"\0" + head + frame, hashlib.sha256)
        return head + mac.digest() + frame

    def open(self, key: str, value: bytes) -> bytes | None:
        """The frame of a value kept under `key`; None when its HMAC does not verify."""
        cut = value.find(b"\n") + 1
        if cut == 0 or len(value) < cut + MAC_BYTES:
            return None
        head, mac, frame = value[:cut], value[cut : cut + MAC_BYTES], value[cut + MAC_BYTES :]
        expected = hmac.new(self._secret, key.encode() + b"\0" + head + frame, hashlib.sha256)
        return frame if hmac.compare_digest(mac, expected.digest()) else None

    # -- lifecycle ---------------------------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        try:
            await self.flush(CLOSE_WAIT_S)
        except StoreUnavailable:
            FAULTS.log("cached events not written at close", waiting=len(self._pending))
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            self._wake.set()
            await asyncio.wait((task,), timeout=CLOSE_WAIT_S)
        await self._client.aclose()
