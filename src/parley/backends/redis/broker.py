"""`RedisBroker`: the broker between the nodes of a cluster, over Redis pub/sub.

Channels. A node SUBSCRIBEs to `{prefix}:{app_id}:{channel}` for each channel it has local
subscribers for, and to `{prefix}:cluster` always: the nodes' own messages (`broadcast`:
presence changes, terminations), a header (format, origin, kind, app id) and a JSON body,
sealed the same way. Redis pub/sub channels are global to a Redis
server (the database number in the URL does not separate them): the prefix is what keeps
several clusters on one Redis apart.

Messages. A publication crosses as one message: a 32-byte HMAC-SHA256 under the cluster
secret, then a JSON header (format version, origin node, app id, the socket id to exclude,
channel, event, publisher, offset, epoch, ts, id, extras), a newline, and the data's JSON as
the node encoded it. The HMAC covers the Redis channel name and the rest, so a message moved
to another channel fails too. A message whose HMAC does not verify, or that cannot be read,
is dropped, counted (`stats()["refused"]`) and logged at most once a second.

Delivery. A publication goes to this node's own handler within `publish` (as the memory
broker does), and to Redis through one writer task that pipelines what was published since
its last round trip, in order; messages coming back from Redis with this node's id are
skipped. So per channel, a node's publications reach every node in the order published, and
the node that published them sees them at once.

Subscribing. `subscribe` returns None when the channel's Redis subscription is in place, and
otherwise a future resolved once Redis confirms it: the node answers the client's subscribe
after that, so no publication made after the client was told it is subscribed can miss this
node. While Redis is unreachable it returns None: the node's subscribers get its own
publications at once and the others' after the outage (below).

Outages. The reader and the writer reconnect with exponential back-off and jitter (0.1 s up to
5 s). A network cut resets nothing: the reader pings Redis on its connection after
`PING_EVERY_S` of silence and takes the link as lost when no answer comes within
`PONG_TIMEOUT_S`; a drain that Redis does not answer within `DRAIN_TIMEOUT_S` does the same. The loss is logged once and the recovery once; `check` fails meanwhile (/readyz says
503 naming the broker) and `stats()["connected"]` is 0. What is published meanwhile waits in
order, up to `max_waiting` publications, and is sent once Redis is back; `drain` does not wait
for Redis while it is away (the publications are stored: history has them), and raises
StoreUnavailable once more than `max_waiting` wait, so an HTTP publish answers 503 rather than
promise a delivery it cannot make. Once subscribed again, the handler's `on_reconnected` fills
from history what the node's channels missed (publications of other nodes made meanwhile).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from parley import logs
from parley.backends.broker import BrokerHandler
from parley.backends.redis import connect
from parley.errors import StoreUnavailable
from parley.publication import NO_EXTRAS, Publication, Publisher, StreamPosition
from parley.settings import without_password

FORMAT: Final = 1  # the header's first field: the message format's version
MAC_BYTES: Final = 32
BACKOFF_FIRST_S: Final = 0.1
BACKOFF_MAX_S: Final = 5.0
CLOSE_WAIT_S = 2.0  # how long close waits for the reader and the writer to end
DRAIN_TIMEOUT_S: Final = 5.0  # a connected Redis that takes longer than this is a fault
# The reader pings Redis on its subscription connection this often while nothing else comes,
# and takes a link that answers nothing for PONG_TIMEOUT_S as lost: a network cut drops
# packets without resetting anything, and pub/sub alone would wait for ever.
PING_EVERY_S = 2.0
PONG_TIMEOUT_S = 3.0
CHECK_TIMEOUT_S = 2.0  # /readyz's ping

REFUSED = logs.Refusals(per_second=1, level=logging.WARNING)
LINK_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


def backoff(attempt: int) -> float:
    """Seconds to wait before reconnect attempt `attempt` (0, 1, ...): exponential, capped,
    with full jitter so that nodes cut off together do not come back together."""
    return random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**attempt))


class RedisBroker:
    """A `backends.broker.Broker` over Redis pub/sub."""

    engine = "redis"

    def __init__(
        self,
        url: str,
        *,
        secret: bytes,
        prefix: str,
        node_id: str,
        max_waiting: int = 10_000,
    ) -> None:
        self.url = url
        self._secret = secret
        self.prefix = prefix
        self.node_id = node_id
        self.max_waiting = max_waiting
        self._cluster = f"{prefix}:cluster"
        self._cluster_key = self._cluster.encode()
        self._client: Any = None  # redis.asyncio.Redis
        self._handler: BrokerHandler | None = None
        self._deliver: Callable[[str, Publication, str | None], None] | None = None
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        # subscriptions: what the node wants (app id -> channels), and in Redis terms
        self._local: dict[str, set[str]] = {}
        self._wanted: set[str] = set()  # Redis channel names
        self._confirmed: set[str] = set()  # subscribed in Redis, confirmed
        self._pending: dict[str, asyncio.Future[None]] = {}  # Redis channel -> confirmation
        self._changed = asyncio.Event()  # `_wanted` changed: the reader syncs it
        self._pubsub: Any = None
        # publishing: messages waiting for the writer, and how many were queued and sent
        self._outgoing: deque[tuple[str, bytes]] = deque()
        self._queued = 0
        self._sent = 0
        self._write = asyncio.Event()
        self._drains: list[tuple[int, asyncio.Future[None]]] = []
        # the link's state, as /readyz and /metrics see it
        self.connected = False
        self.reconnects = 0
        self.refused = 0
        self.dropped = 0  # publications not sent: more than max_waiting waited for Redis
        self._ever_connected = False
        self._unreachable_logged = False  # the current outage is logged
        self._write_failing = False
        self._stale = False  # the link is taken as lost: the reader connects anew

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, handler: BrokerHandler) -> None:
        self._handler = handler
        self._deliver = handler.on_publication
        self._client = connect.client(self.url, socket_connect_timeout=2, health_check_interval=10)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read()), loop.create_task(self._write_out())]

    async def close(self) -> None:
        self._closed = True
        self._deliver = None
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # bounded: redis-py's Pipeline.execute can return normally after its task was
            # cancelled, and a loop that carries on then waits forever
            await asyncio.wait(self._tasks, timeout=CLOSE_WAIT_S)
        self._tasks = []
        for _, future in self._drains:
            if not future.done():
                future.set_exception(RuntimeError("broker closed"))
        self._drains.clear()
        for future in self._pending.values():
            if not future.done():
                future.set_result(None)
        self._pending.clear()
        if self._pubsub is not None:
            try:
                await self._pubsub.aclose()
            except Exception:
                pass
            self._pubsub = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        self._local.clear()

    async def check(self) -> None:
        if self._closed or self._deliver is None:
            raise RuntimeError("not running")
        if not self.connected:
            raise RuntimeError(f"Redis at {without_password(self.url)} is unreachable")
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                await self._client.ping()
        except TimeoutError:
            raise RuntimeError(
                f"Redis at {without_password(self.url)} did not answer within {CHECK_TIMEOUT_S} s"
            ) from None

    def stats(self) -> dict[str, int]:
        return {
            "connected": int(self.connected),
            "reconnects": self.reconnects,
            "refused": self.refused,
            "dropped": self.dropped,
            "waiting": len(self._outgoing),
        }

    # -- subscriptions -----------------------------------------------------------------------

    def key(self, app_id: str, channel: str) -> str:
        """The Redis channel of a Parley channel (channel names hold no ':')."""
        return f"{self.prefix}:{app_id}:{channel}"

    def subscribe(self, app_id: str, channel: str) -> asyncio.Future[None] | None:
        self._local.setdefault(app_id, set()).add(channel)
        key = self.key(app_id, channel)
        if key not in self._wanted:
            self._wanted.add(key)
            self._changed.set()
        if key in self._confirmed or not self.connected:
            return None
        future = self._pending.get(key)
        if future is None:
            future = self._pending[key] = asyncio.get_running_loop().create_future()
        return future

    def unsubscribe(self, app_id: str, channel: str) -> None:
        channels = self._local.get(app_id)
        if channels is not None:
            channels.discard(channel)
            if not channels:
                del self._local[app_id]
        key = self.key(app_id, channel)
        if key in self._wanted:
            self._wanted.discard(key)
            self._confirmed.discard(key)
            self._changed.set()

    # -- publishing --------------------------------------------------------------------------

    def publish(self, app_id: str, publication: Publication, exclude: str | None) -> None:
        deliver = self._deliver
        if deliver is None:
            raise RuntimeError("broker is not running")
        channels = self._local.get(app_id)
        if channels is not None and publication.channel in channels:
            deliver(app_id, publication, exclude)
        key = self.key(app_id, publication.channel)
        outgoing = self._outgoing
        if len(outgoing) >= self.max_waiting:  # Redis has been away long: the oldest goes
            outgoing.popleft()
            self._sent += 1  # given up on: no drain waits for it (history has it)
            self.dropped += 1
        outgoing.append((key, self.seal(key, encode(self.node_id, app_id, publication, exclude))))
        self._queued += 1
        self._write.set()

    def broadcast(self, kind: str, app_id: str, body: dict[str, Any]) -> None:
        if self._deliver is None:
            raise RuntimeError("broker is not running")
        payload = orjson.dumps([FORMAT, self.node_id, kind, app_id]) + b"\n" + orjson.dumps(body)
        self._outgoing.append((self._cluster, self.seal(self._cluster, payload)))
        self._queued += 1
        self._write.set()

    async def drain(self) -> None:
        target = self._queued
        if self._sent >= target:
            return
        if not self.connected:
            if len(self._outgoing) >= self.max_waiting:
                raise StoreUnavailable(
                    f"Redis is unreachable and {len(self._outgoing)} events wait for it: "
                    "stored, but not sent to the other nodes"
                )
            return  # sent once Redis is back; stored meanwhile
        future = asyncio.get_running_loop().create_future()
        self._drains.append((target, future))
        done, _ = await asyncio.wait((future,), timeout=DRAIN_TIMEOUT_S)  # never swallows a cancel
        if not done:  # a link that takes nothing (a network cut): lost, as an outage is
            self._lose(RedisTimeoutError(f"Redis took nothing for {DRAIN_TIMEOUT_S} s"))
            await self.drain()  # as while Redis is away: queued, or refused beyond max_waiting

    def _lose(self, exc: BaseException) -> None:
        """Take the link as lost though no call failed: the reader connects anew."""
        if self.connected:
            self._link_lost(exc)
        self._stale = True

    def seal(self, key: str, payload: bytes) -> bytes:
        """The message as it crosses: its HMAC, then the payload."""
        mac = hmac.new(self._secret, key.encode() + b"\0" + payload, hashlib.sha256).digest()
        return mac + payload

    def unseal(self, key: bytes, message: bytes) -> bytes | None:
        """The payload of a message whose HMAC verifies, else None."""
        mac, payload = message[:MAC_BYTES], message[MAC_BYTES:]
        expected = hmac.new(self._secret, key + b"\0" + payload, hashlib.sha256).digest()
        return payload if hmac.compare_digest(mac, expected) else None

    async def _write_out(self) -> None:
        attempt = 0
        while not self._closed:
            await self._write.wait()
            self._write.clear()
            # while the reader is away (subscriptions not in place), what waits stays queued
            while self._outgoing and self.connected:
                batch = list(self._outgoing)
                try:
                    pipe = self._client.pipeline(transaction=False)
                    for key, message in batch:
                        pipe.publish(key, message)
                    await pipe.execute()
                except LINK_ERRORS as exc:
                    if not self._write_failing:
                        self._write_failing = True
                        logs.warning(
                            "broker publish failed, retrying",
                            engine="redis",
                            error=str(exc) or type(exc).__name__,
                            waiting=len(self._outgoing),
                        )
                    await asyncio.sleep(backoff(attempt))
                    attempt += 1
                    continue
                attempt = 0
                self._write_failing = False
                for _ in batch:
                    self._outgoing.popleft()
                self._sent += len(batch)
                self._release_drains()

    def _release_drains(self) -> None:
        sent, waiting = self._sent, self._drains
        if waiting:
            self._drains = [(t, f) for t, f in waiting if t > sent]
            for target, future in waiting:
                if target <= sent and not future.done():
                    future.set_result(None)

    # -- receiving ---------------------------------------------------------------------------

    async def _read(self) -> None:
        attempt = 0
        while not self._closed:
            pubsub = self._client.pubsub()
            self._pubsub = pubsub
            subscribed = set(self._wanted)
            self._changed.clear()
            self._stale = False
            loop = asyncio.get_running_loop()
            try:
                await pubsub.subscribe(self._cluster, *subscribed)
                # the clock is read only when a poll comes back empty, not per message
                heard = loop.time()  # the last empty poll after the link brought something
                fresh = False  # something came since `heard` was set
                pinged: float | None = None  # an unanswered ping's time
                while not self._closed:
                    if self._changed.is_set():
                        self._changed.clear()
                        subscribed = await self._sync(pubsub, subscribed)
                    message = await pubsub.get_message(timeout=0.05)
                    if message is not None:
                        attempt = 0
                        fresh, pinged = True, None
                        self._on_message(message)
                    else:
                        now = loop.time()
                        if fresh:
                            heard, fresh = now, False
                        elif pinged is not None and now - pinged > PONG_TIMEOUT_S:
                            raise RedisTimeoutError(f"no answer to a ping for {PONG_TIMEOUT_S} s")
                        elif pinged is None and now - heard > PING_EVERY_S:
                            pinged = now
                            await pubsub.ping()
                    if self._stale:
                        raise RedisTimeoutError(f"Redis took nothing for {DRAIN_TIMEOUT_S} s")
            except (*LINK_ERRORS, RedisError) as exc:
                self._link_lost(exc)
            finally:
                self._confirmed.clear()
                try:
                    await pubsub.aclose()
                except Exception:
                    pass
            await asyncio.sleep(backoff(attempt))
            attempt += 1

    async def _sync(self, pubsub: Any, subscribed: set[str]) -> set[str]:
        wanted = set(self._wanted)
        adding, dropping = wanted - subscribed, subscribed - wanted
        if adding:
            await pubsub.subscribe(*adding)
        if dropping:
            await pubsub.unsubscribe(*dropping)
        return wanted

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "message":
            self._received(message["channel"], message["data"])
        elif kind == "subscribe":
            key = message["channel"].decode()
            if key == self._cluster:
                self._link_back()
            if key in self._wanted:
                self._confirmed.add(key)
                future = self._pending.pop(key, None)
                if future is not None and not future.done():
                    future.set_result(None)

    def _received(self, key: bytes, message: bytes) -> None:
        payload = self.unseal(key, message)
        if payload is None:
            self._refuse("message without a valid HMAC", key)
            return
        if key == self._cluster_key:
            self._cluster_message(key, payload)
            return
        try:
            origin, app_id, publication, exclude = decode(payload)
        except (ValueError, TypeError, IndexError, orjson.JSONDecodeError) as exc:
            self._refuse(f"unreadable message: {exc}", key)
            return
        if origin == self.node_id:
            return  # delivered here within `publish`
        channels = self._local.get(app_id)
        deliver = self._deliver
        if deliver is not None and channels is not None and publication.channel in channels:
            deliver(app_id, publication, exclude)

    def _cluster_message(self, key: bytes, payload: bytes) -> None:
        head, _, body = payload.partition(b"\n")
        try:
            version, origin, kind, app_id = orjson.loads(head)
            data = orjson.loads(body)
            if version != FORMAT or not isinstance(data, dict) or not isinstance(kind, str):
                raise ValueError("unknown cluster message")
        except (ValueError, TypeError) as exc:
            self._refuse(f"unreadable cluster message: {exc}", key)
            return
        if origin == self.node_id:
            return
        on_message = getattr(self._handler, "on_cluster_message", None)
        if on_message is not None:
            on_message(kind, str(app_id), data)

    def _refuse(self, reason: str, key: bytes) -> None:
        self.refused += 1
        REFUSED.log(
            "broker message dropped", reason=reason, redis_channel=key.decode(errors="replace")
        )

    # -- the link ----------------------------------------------------------------------------

    def _link_lost(self, exc: BaseException) -> None:
        """The reader's connection failed (or could not be made): logged once per outage."""
        if self.connected or not self._unreachable_logged:
            self._unreachable_logged = True
            logs.warning(
                "broker disconnected" if self.connected else "broker unreachable",
                engine="redis",
                url=without_password(self.url),
                error=str(exc) or type(exc).__name__,
                waiting=len(self._outgoing),
            )
            self._ever_connected = self._ever_connected or self.connected
        self.connected = False
        self._confirmed.clear()
        # the subscribes waiting for a confirmation are answered: the outage's catch-up
        # (on_reconnected) covers what they would have missed
        for future in self._pending.values():
            if not future.done():
                future.set_result(None)
        self._pending.clear()
        # drains waiting for a Redis that went away return: the events are stored
        for _, future in self._drains:
            if not future.done():
                future.set_result(None)
        self._drains.clear()

    def _link_back(self) -> None:
        """The reader is subscribed again (or for the first time)."""
        if self.connected:
            return
        again = self._ever_connected
        self.connected = True
        self._unreachable_logged = False
        self._ever_connected = True
        self._write.set()
        logs.info(
            "broker connected",
            engine="redis",
            url=without_password(self.url),
            node_id=self.node_id,
            waiting=len(self._outgoing),
        )
        if again:
            self.reconnects += 1
            on_reconnected = getattr(self._handler, "on_reconnected", None)
            if on_reconnected is not None:
                on_reconnected()


def encode(node_id: str, app_id: str, publication: Publication, exclude: str | None) -> bytes:
    """A publication's payload: the header's JSON, a newline, the data's JSON."""
    position = publication.position
    extras = publication.extras
    header = orjson.dumps(
        [
            FORMAT,
            node_id,
            app_id,
            exclude,
            publication.channel,
            publication.event,
            orjson.Fragment(publication.publisher.json()),
            position.offset,
            position.epoch,
            publication.ts,
            publication.id,
            dict(extras) if extras else None,
        ]
    )
    return header + b"\n" + publication.data_bytes()


def decode(payload: bytes) -> tuple[str, str, Publication, str | None]:
    """(origin node, app id, publication, exclude) of a payload; ValueError when malformed."""
    head, newline, data = payload.partition(b"\n")
    if not newline:
        raise ValueError("no data")
    fields = orjson.loads(head)
    if not isinstance(fields, list) or len(fields) != 12 or fields[0] != FORMAT:
        raise ValueError("unknown message format")
    _, origin, app_id, exclude, channel, event, publisher, offset, epoch, ts, id_, extras = fields
    for text in (origin, app_id, channel, event, epoch, id_):
        if not isinstance(text, str):
            raise ValueError("a text field is not text")
    if exclude is not None and not isinstance(exclude, str):
        raise ValueError("exclude is not text")
    if not isinstance(offset, int) or not isinstance(ts, int):
        raise ValueError("offset or ts is not a number")
    if extras is not None and not isinstance(extras, dict):
        raise ValueError("extras is not an object")
    publication = Publication(
        channel,
        event,
        orjson.loads(data),
        Publisher.from_wire(publisher),
        StreamPosition(offset, epoch),
        ts,
        id_,
        extras or NO_EXTRAS,
        data_json=data,
    )
    return origin, app_id, publication, exclude
