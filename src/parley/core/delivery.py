"""Delivery: how a publication (an HTTP API event or a client event) gets from the node that
took it to the subscribers on every node. It owns the outbox and its pump (store, then publish
to the broker) and the node's side of the broker (`on_publication`: order, encode once, cache,
fan out through the hub).

The sending side. `fan_out` queues an `Outgoing`; one pump serves the outbox in order, a
batch per `HistoryStore.append_many`, then hands each stored publication to
`Broker.publish` and resolves the `done` futures once the broker has it (the memory broker
delivers within `publish`). Nothing is published that is not stored; a failed append fails
its batch's futures and publishes nothing (a batch the store refused for another reason than
StoreUnavailable is tried again event by event, so one event it cannot take fails alone). A channel that keeps no history (its retention is
None) skips the store: its publications carry offset 0.

The ordering rule, kept per channel by every node (docs/architecture.md, "Ordering"):

- The history store assigns a channel's offsets, once per event, in the order the pump
  submits them; never the broker or a node.
- A node delivers offset N of a channel only after N-1.
- A publication at or below the last offset delivered is a duplicate and is dropped.
- A gap is filled from the store (`HistoryStore.since`) before anything after it is
  delivered. What arrives meanwhile waits, up to GAP_HOLD_LIMIT publications; beyond that,
  or when `since` cannot fill the gap, what waits is delivered as it is and the gap logged.
  A publication filled from the store has no sender to exclude.
- A publication of another epoch than the channel's resets the channel (its history was
  deleted: offsets start again at 1).
- The first publication a node receives for a channel since it became occupied there sets
  the channel's position: nothing before it is replayed.
- Publications of channels that keep no history (offset 0) bypass the rule.

The position (`last_offset`, `epoch`, `gap`) lives on the hub's `Channel`, so it goes with
the channel's last local subscriber. Each delivered publication is encoded once per node,
and on a cache channel that frame becomes the cached event (Pusher caches what the HTTP API
triggers there, not client events, even with nobody subscribed: the publishing node caches
what its broker will not bring back to it). In a cluster the publishing node also puts it in
the shared `CachedEvents` (backends.last_events: a batch off the message path, which never
fails the publish), for the nodes that did not receive it (core.subscriptions recalls it).
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache

from parley import logs
from parley.backends.broker import Broker
from parley.backends.history import Append, HistoryStore, Retention
from parley.backends.last_events import CachedEvents
from parley.core.conversations import CHANNEL_PREFIX as CONVERSATION_PREFIX
from parley.core.hub import AppHub, CachedEvent, Channel
from parley.errors import StoreUnavailable
from parley.protocol import frames
from parley.protocol.channels import channel_type, server_to_user_id
from parley.protocol.directory import CHANNEL as KEYS_CHANNEL
from parley.publication import Publication, StreamPosition
from parley.settings import Settings

# A store that cannot write fails every publish until it can: one line a second says so.
STORE_FAULTS = logs.Refusals(per_second=1, level=logging.WARNING)

# Publications held behind one channel's gap while it is filled from history, at most.
GAP_HOLD_LIMIT = 1000


# init=False: the __init__ below is compiled by mypyc; a dataclass-made one is not (5x slower)
@dataclass(slots=True, init=False)  # not frozen: built per message, and frozen __init__ is slower
class Outgoing:
    """A publication in the outbox: stored (when its channel keeps history), then published."""

    hub: AppHub
    publication: Publication
    exclude: str | None  # the socket id of the sender, not to deliver to
    cache: bool  # `caches(publication)`
    retention: Retention | None  # None: the channel keeps no history
    done: asyncio.Future[None] | None  # resolved once published

    def __init__(
        self,
        hub: AppHub,
        publication: Publication,
        exclude: str | None,
        cache: bool,
        retention: Retention | None,
        done: asyncio.Future[None] | None,
    ) -> None:
        self.hub = hub
        self.publication = publication
        self.exclude = exclude
        self.cache = cache
        self.retention = retention
        self.done = done


@dataclass(slots=True)
class Arrival:
    """A publication received behind a gap, waiting for the gap to be filled."""

    publication: Publication
    exclude: str | None


@dataclass(slots=True)
class Gap:
    """A channel's gap being filled from history: what arrived after it, by offset."""

    held: dict[int, Arrival]


def caches(publication: Publication) -> bool:
    """Does this publication become its channel's cached event? The HTTP API's events on cache
    channels do; client events do not."""
    return publication.publisher.kind == "server" and channel_type(publication.channel).cache


def encode(publication: Publication) -> bytes:
    """The frame of a publication: with its position when stored, without when not."""
    if publication.position.offset:
        return frames.stored_event(publication)
    return frames.unstored_event(publication)


class Delivery:
    """The outbox, its pump, and this node's broker handler, for all the node's apps."""

    def __init__(
        self,
        settings: Settings,
        hubs: dict[str, AppHub],
        history: HistoryStore,
        broker: Broker,
        last_events: CachedEvents | None = None,
    ) -> None:
        self.settings = settings
        self.hubs = hubs
        self.history = history
        self.broker = broker
        # the cluster's last events of cache channels, when shared (else the hubs' caches are)
        self.last_events = last_events if last_events is not None and last_events.shared else None
        self._publish = broker.publish  # bound once: no method lookup per publication
        self.retention = lru_cache(maxsize=4096)(self._retention)
        self._outbox: list[Outgoing] = []
        self._pump: asyncio.Task[None] | None = None
        self._fills: set[asyncio.Task[None]] = set()
        # a channel's position when the broker began delivering it here (`occupied`)
        self._starts: dict[tuple[str, str], StreamPosition] = {}
        # told of each stored publication of a conversation channel, on the node that took it
        # (core.bots: webhooks to the bots there, conversation references)
        self.on_conversation_event: Callable[[str, Publication], None] | None = None

    # -- the sending side --------------------------------------------------------------------

    def fan_out(
        self,
        hub: AppHub,
        publication: Publication,
        exclude: str | None = None,
        done: asyncio.Future[None] | None = None,
        cache: bool = False,
    ) -> None:
        """Queue a publication: it is appended to its channel's history (when it keeps one),
        then published to the broker, so nothing is delivered that is not durable. One pump
        serves the queue in order, a batch per commit; `done` resolves once it is published
        (delivered, with the memory broker), or fails with the append. `cache` is
        `caches(publication)`, which the caller knows without asking (a client event: no)."""
        retention = self.retention(publication.channel)
        self._outbox.append(Outgoing(hub, publication, exclude, cache, retention, done))
        if self._pump is None:
            self._pump = asyncio.get_running_loop().create_task(self._pump_outbox())

    async def _pump_outbox(self) -> None:
        try:
            while self._outbox:
                batch, self._outbox = self._outbox, []
                await self._serve(batch)
        finally:
            self._pump = None

    async def _serve(self, batch: list[Outgoing]) -> None:
        """Store one batch, then publish it; resolve or fail its futures."""
        appends = [
            Append(o.hub.app.id, o.publication, o.retention)
            for o in batch
            if o.retention is not None
        ]
        refused: Exception | None = None
        try:
            stored = iter(await self.history.append_many(appends) if appends else ())
        except StoreUnavailable as exc:  # a full disk, a database away: no traceback
            STORE_FAULTS.log(
                "history append failed: events not delivered", events=len(batch), reason=exc.message
            )
            _fail(batch, exc)
            return
        except Exception as exc:
            refused = exc
        if refused is not None:
            # Awaited outside the except block: compiled code must not suspend inside one.
            if len(appends) > 1:  # one event may be what the store refused: each alone, in order
                for o in batch:
                    await self._serve([o])
                return
            logs.error(
                "history append failed: event not delivered",
                channel=batch[0].publication.channel,
                error=repr(refused),
            )
            _fail(batch, refused)
            return
        publish = self._publish
        watch = self.on_conversation_event
        shared = self.last_events
        try:
            for o in batch:
                publication = o.publication
                if o.retention is not None:
                    result = next(stored)
                    if result.duplicate:  # stored and published before
                        continue
                    publication = result.publication
                    if watch is not None and publication.channel.startswith(CONVERSATION_PREFIX):
                        watch(o.hub.app.id, publication)
                hub = o.hub
                if o.cache:
                    frame = None
                    if publication.channel not in hub.channels:
                        frame = encode(publication)
                        cache(hub, publication, frame)  # nobody here
                    if shared is not None:  # the cluster's last event: written in a batch
                        position = publication.position
                        shared.put(
                            hub.app.id,
                            publication.channel,
                            frame if frame is not None else encode(publication),
                            hub.app.cache_ttl_s,
                            position.offset,
                            position.epoch,
                        )
                publish(hub.app.id, publication, o.exclude)
            await self.broker.drain()
        except StoreUnavailable as exc:  # the broker's server is away for too long
            STORE_FAULTS.log(
                "broker publish failed: events stored, not sent to the other nodes",
                events=len(batch),
                reason=exc.message,
            )
            _fail(batch, exc)
            return
        except Exception as exc:
            logs.error("broker publish failed: events stored, not delivered", events=len(batch))
            _fail(batch, exc)
            return
        for o in batch:
            done = o.done
            if done is not None and not done.done():
                done.set_result(None)

    def _retention(self, name: str) -> Retention | None:
        """How long `name` keeps history, or None when it keeps none. A conversation's
        channel always keeps some: a rule can set its retention, not turn it off."""
        if server_to_user_id(name) is not None:
            return None
        if name == KEYS_CHANNEL:  # its history is the key directory's log: all of it
            return Retention(None, None)
        for rule in self.settings.history:
            if fnmatch.fnmatchcase(name, rule.pattern):
                if not rule.enabled:
                    if name.startswith(CONVERSATION_PREFIX):
                        continue  # always kept: acts, unread counts and bots read it
                    return None
                return Retention(rule.max_count, rule.max_age_s)
        return Retention(self.settings.history_max_count, self.settings.history_max_age_s)

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        """The pump and the gap fills running now."""
        return [t for t in (self._pump, *self._fills) if t is not None]

    async def idle(self) -> None:
        """Return once the outbox is empty and no gap is being filled."""
        while tasks := self.tasks:
            await asyncio.wait(tasks)

    # -- the node's side of the broker -------------------------------------------------------

    def occupied(self, hub: AppHub, name: str) -> Awaitable[None] | None:
        """The channel is getting its first local subscriber: have its publications
        delivered here. None when they are; else what to await before telling the client.

        A broker that makes the node wait (one shared with other nodes) may bring the other
        nodes' earlier publications after this node's own later ones: the channel's position
        is then read from history once the broker delivers here (`_start`), so that what
        comes after it is delivered in order, gaps filled, and nothing after it is taken for
        a duplicate."""
        confirming = self.broker.subscribe(hub.app.id, name)
        if confirming is None or self.retention(name) is None:
            return confirming
        return asyncio.ensure_future(self._start(hub, name, confirming))

    async def _start(self, hub: AppHub, name: str, confirming: Awaitable[None]) -> None:
        await confirming
        try:
            position = await self.history.position(hub.app.id, name)
        except Exception as exc:  # the first publication sets the position, as without
            STORE_FAULTS.log("channel position not read", channel=name, reason=repr(exc))
            return
        self._starts[(hub.app.id, name)] = position

    def vacated(self, hub: AppHub, name: str) -> None:
        """The channel's last local subscriber left."""
        self._starts.pop((hub.app.id, name), None)
        self.broker.unsubscribe(hub.app.id, name)

    def on_reconnected(self) -> None:
        """The broker is back after an outage: what the other nodes published meanwhile did
        not arrive. Each channel with a position is filled from history, as a gap is."""
        for hub in self.hubs.values():
            for channel in hub.channels.values():
                if channel.last_offset and channel.gap is None:
                    self._start_fill(hub, channel, Gap({}))

    def on_publication(self, app_id: str, publication: Publication, exclude: str | None) -> None:
        """The broker's delivery of a stored publication: in order, once, to every local
        subscriber of its channel but the sender."""
        hub = self.hubs.get(app_id)
        if hub is None:
            return
        channel = hub.channels.get(publication.channel)
        if channel is None:  # its last subscriber here left since the broker was told
            if caches(publication):
                cache(hub, publication, encode(publication))
            return
        offset = publication.position.offset
        if offset:
            if (
                offset == channel.last_offset + 1
                and channel.gap is None
                and publication.position.epoch == channel.epoch
            ):
                channel.last_offset = offset
            elif not self._in_order(hub, channel, publication, exclude):
                return
        deliver(hub, channel, publication, exclude)

    def _in_order(
        self, hub: AppHub, channel: Channel, publication: Publication, exclude: str | None
    ) -> bool:
        """The ordering rule past its common case: True when `publication` is to be delivered
        now (the channel's position moved to it), False when it was dropped or held."""
        position = publication.position
        offset = position.offset
        if position.epoch != channel.epoch:
            first = not channel.epoch
            channel.epoch = position.epoch
            channel.gap = None  # what waited belongs to the old epoch
            channel.last_offset = offset - 1 if first else 0
            start = self._starts.pop((hub.app.id, channel.name), None) if first else None
            if start is not None and start.epoch == position.epoch:
                channel.last_offset = start.offset  # read when the broker began delivering
        gap: Gap | None = channel.gap
        if gap is not None and len(gap.held) >= GAP_HOLD_LIMIT:
            logs.warning(
                "gap not filled in time: delivered as received",
                app_id=hub.app.id,
                channel=channel.name,
                after=channel.last_offset,
                held=len(gap.held),
            )
            release(hub, channel, gap)
            gap = None
        if offset <= channel.last_offset:
            return False  # a duplicate
        if gap is not None:
            if offset not in gap.held:
                gap.held[offset] = Arrival(publication, exclude)
            return False
        if offset == channel.last_offset + 1:
            channel.last_offset = offset
            return True
        self._start_fill(hub, channel, Gap({offset: Arrival(publication, exclude)}))
        return False

    def _start_fill(self, hub: AppHub, channel: Channel, gap: Gap) -> None:
        channel.gap = gap
        task = asyncio.get_running_loop().create_task(self._fill(hub, channel, gap))
        self._fills.add(task)
        task.add_done_callback(self._fills.discard)

    async def _fill(self, hub: AppHub, channel: Channel, gap: Gap) -> None:
        """Deliver what a gap misses from history, then what waited behind it, until no gap
        is left; stop when the channel is reset, given up on, or gone from this node."""
        name = channel.name
        while True:
            after = StreamPosition(channel.last_offset, channel.epoch)
            try:
                missed = await self.history.since(
                    hub.app.id, name, after, self.settings.recovery_limit
                )
            except Exception:
                logs.error("gap fill failed", app_id=hub.app.id, channel=name)
                missed = None
            if channel.gap is not gap or hub.channels.get(name) is not channel:
                return
            if missed is None:
                logs.warning(
                    "gap not filled from history: delivered as received",
                    app_id=hub.app.id,
                    channel=name,
                    after=after.offset,
                    held=len(gap.held),
                )
                release(hub, channel, gap)
                return
            held = gap.held
            # Up to what the broker brought: a later publication read from history may still
            # be on its way here with its sender to exclude (this node's own client event).
            limit = max(held) if held else None
            for publication in missed:
                offset = publication.position.offset
                if limit is not None and offset > limit:
                    break
                if offset > channel.last_offset:
                    channel.last_offset = offset
                    arrival = held.pop(offset, None)
                    if arrival is not None:  # the broker's copy knows its sender
                        deliver(hub, channel, arrival.publication, arrival.exclude)
                    else:
                        deliver(hub, channel, publication, None)
            while (arrival := held.pop(channel.last_offset + 1, None)) is not None:
                channel.last_offset += 1
                deliver(hub, channel, arrival.publication, arrival.exclude)
            for offset in [o for o in held if o <= channel.last_offset]:
                del held[offset]  # duplicates
            if not held:
                channel.gap = None
                return


def deliver(hub: AppHub, channel: Channel, publication: Publication, exclude: str | None) -> None:
    """Encode once, cache on a cache channel, and write to every local subscriber but the
    sender."""
    data = encode(publication)
    if channel.type.cache and publication.publisher.kind == "server":  # `caches`, cheaper
        cache(hub, publication, data)
    peer = hub.sessions.get(exclude) if exclude is not None else None
    hub.messages_out += hub.broadcast_to(channel, data, peer, publication.position.offset)


def release(hub: AppHub, channel: Channel, gap: Gap) -> None:
    """Give up on a gap: deliver what waited behind it, in order."""
    channel.gap = None
    for offset in sorted(gap.held):
        if offset > channel.last_offset:
            channel.last_offset = offset
            arrival = gap.held[offset]
            deliver(hub, channel, arrival.publication, arrival.exclude)
    gap.held.clear()


def cache(hub: AppHub, publication: Publication, data: bytes) -> None:
    hub.cache[publication.channel] = CachedEvent(
        data, publication.event, publication.data, time.monotonic() + hub.app.cache_ttl_s
    )


def _fail(batch: list[Outgoing], exc: Exception) -> None:
    for o in batch:
        if o.done is not None and not o.done.done():
            o.done.set_exception(exc)
