"""Pusher webhooks: a consumer of the domain events that queues each webhook in the store, and
a dispatcher that POSTs them, signed, retrying with backoff until they are delivered or
dead-lettered.

`Webhooks` turns `ChannelOccupied`, `ChannelVacated`, `MemberAdded`, `MemberRemoved`,
`ClientEventSent`, `CacheMiss` and `SubscriptionCountChanged` into Pusher's webhook events
(docs/protocol.md, "Webhooks"). `channel_vacated` and `member_removed` wait `webhook_hold_s`
and are dropped, with the `channel_occupied` / `member_added` that undoes them, when the
channel or member comes back meanwhile (a page reload makes no noise). In a cluster (channel
counts that are `shared`), occupancy is the cluster's: the writer asks the counts, in order,
whether a node's first subscriber occupied the channel everywhere (`occupy`), whether its
last one left it empty everywhere (`vacate`, which begins a hold there), and, once the hold
is over, whether it stayed so (`settle`), so that one node sends each webhook and a reload
onto another node makes no noise either; `ClusterVacated` (a dead node's channels) is sent
at once. A counts store that cannot answer within ASK_TIMEOUT_S is logged and the webhook
sent anyway: a duplicate rather than a loss, and a Redis outage stalls no subscription. Events are written to
the `WebhookQueue` in the order they happened, one job per target URL and channel (several
events in one job with `webhook_batch_ms`). The dispatcher claims due jobs (one at a time per
URL and channel, so each channel's webhooks arrive in order), POSTs `{time_ms, events}` with
`X-Pusher-Key` and `X-Pusher-Signature` made at each attempt (a retry carries a fresh
`time_ms`, as the SDKs' five-minute window needs), and on a failure tries again after an
exponential backoff with jitter, for `webhook_retry_s`, then buries the job in the dead
letters. It runs in its own tasks: a slow or dead receiver never slows message delivery.
An outcome is recorded only while the dispatcher's claim holds: a job whose lease ran out
meanwhile and was claimed again belongs to that claim (`Stats.lost_claims`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import aiohttp
import orjson

from parley import logs
from parley.backends.counts import ChannelCounts
from parley.backends.webhooks import WebhookJob, WebhookQueue
from parley.core.events import (
    CacheMiss,
    ChannelOccupied,
    ChannelVacated,
    ClientEventSent,
    ClusterVacated,
    ConversationChanged,
    EventBus,
    MemberAdded,
    MemberRemoved,
    SubscriptionCountChanged,
)
from parley.errors import StoreUnavailable
from parley.settings import Settings

CLAIM_BATCH = 64
IDLE_POLL_S = 1.0  # the dispatcher looks for due retries at least this often
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 600.0
USER_AGENT = "parley-webhooks"
# How long the writer waits for the cluster's counts (occupancy, holds, subscription counts)
# before it takes them as away: a subscription's answer waits behind the writer.
ASK_TIMEOUT_S = 1.0

Event = dict[str, Any]
# What the writer awaits before it stores an event (or instead of one): keep it?
Check = Callable[[], Awaitable[bool]]


@dataclass(slots=True)
class Handed:
    """One item for the writer: `event` to store, when `check` (if any) says so."""

    app_id: str
    event: Event | None
    check: Check | None = None


@dataclass(slots=True)
class Held:
    """A vacated or member_removed event waiting out the hold."""

    app_id: str
    event: Event
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class Stats:
    queued: int = 0
    delivered: int = 0
    failed_attempts: int = 0
    buried: int = 0
    suppressed: int = 0  # vacated/occupied and removed/added pairs dropped by the hold
    lost_claims: int = 0  # outcomes not recorded: the job was claimed again after the lease
    last_errors: dict[str, str] = field(default_factory=dict)


def signature(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Webhooks:
    def __init__(
        self,
        settings: Settings,
        events: EventBus,
        queue: WebhookQueue,
        counts: ChannelCounts | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.apps = {app.id: app for app in settings.apps if app.webhooks}  # the app's own
        self.all_apps = {app.id: app for app in settings.apps}
        # a bot's webhook credentials (key, secret) by app and bot id: set with core.bots
        self.bot_credentials: Callable[[str, str], Awaitable[tuple[str, str] | None]] | None = None
        self.events = events
        self.queue = queue
        self.clock = clock
        self.stats = Stats()
        self._held: dict[tuple[str, str, str], Held] = {}  # (app, kind, key) -> held event
        # occupancy decided by the cluster's counts (else by this node, with `_held`)
        self.counts = counts if counts is not None and counts.shared else None
        # the cluster's holds running here: their timers, and what ends one at once
        self._settles: dict[object, tuple[asyncio.TimerHandle, Callable[[bool], None]]] = {}
        self._out: asyncio.Queue[Handed] = asyncio.Queue()
        self._handed = 0  # events handed to the writer so far
        self._written = 0  # of those, how many are in the store
        self._writes: list[tuple[int, asyncio.Future[None]]] = []  # waiting in `written`
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._http: aiohttp.ClientSession | None = None

    @property
    def enabled(self) -> bool:
        """Are webhooks of the apps' own configured (the dispatcher runs anyway, for bots)?"""
        return bool(self.apps)

    def wake(self) -> None:
        """Something was queued: the dispatcher looks now."""
        self._wake.set()

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.webhook_timeout_s)
        self._http = aiohttp.ClientSession(timeout=timeout, headers={"User-Agent": USER_AGENT})
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._dispatch_loop(), name="parley-webhooks-dispatch")]
        if not self.enabled:
            return
        bus = self.events
        bus.subscribe(ChannelOccupied, self._occupied)
        bus.subscribe(ChannelVacated, self._vacated)
        bus.subscribe(ClusterVacated, self._cluster_vacated)
        bus.subscribe(MemberAdded, self._member_added)
        bus.subscribe(MemberRemoved, self._member_removed)
        bus.subscribe(ClientEventSent, self._client_event)
        bus.subscribe(CacheMiss, self._cache_miss)
        bus.subscribe(ConversationChanged, self._conversation_changed)
        if any(app.subscription_count for app in self.apps.values()):
            bus.subscribe(SubscriptionCountChanged, self._subscription_count)
        self._tasks.append(loop.create_task(self._write_loop(), name="parley-webhooks-write"))
        logs.info(
            "webhooks",
            apps=len(self.apps),
            targets=sum(len(a.webhooks) for a in self.apps.values()),
        )

    async def close(self) -> None:
        """Queue what is held (it happened), write what is waiting, stop."""
        for held in list(self._held.values()):
            if held.timer is not None:
                held.timer.cancel()
            self._hand(held.app_id, held.event)
        self._held.clear()
        if self._tasks:
            await self._drained()
            if self._settles:  # the cluster's holds begun here end now
                for timer, settle in list(self._settles.values()):
                    timer.cancel()
                    settle(True)
                await self._drained()
            self._closing = True  # the loops stop at their next turn...
            self._wake.set()
            for task in self._tasks:
                task.cancel()  # ...or now, wherever they wait
            await asyncio.wait(self._tasks, timeout=self.settings.shutdown_grace_s)
            self._tasks = []
        for _, future in self._writes:  # nothing more will be written: let them answer
            if not future.done():
                future.set_result(None)
        self._writes = []
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _drained(self) -> None:
        try:
            async with asyncio.timeout(self.settings.shutdown_grace_s):
                await self._out.join()
        except TimeoutError:
            logs.warning("webhooks not queued at shutdown", events=self._out.qsize())

    # -- domain events in ----------------------------------------------------------------------

    def _wants(self, app_id: str, name: str) -> bool:
        app = self.apps.get(app_id)
        return app is not None and any(t.wants(name) for t in app.webhooks)

    def _emit(self, app_id: str, event: Event) -> None:
        if self._wants(app_id, event["name"]):
            self._hand(app_id, event)

    def _hand(self, app_id: str, event: Event | None, check: Check | None = None) -> None:
        self._handed += 1
        self._out.put_nowait(Handed(app_id, event, check))

    async def written(self) -> None:
        """Return once every webhook event emitted so far is in the queue's store: an HTTP
        call whose change emits some awaits this before it answers (a conversation created,
        a request answered), so a webhook is never lost after its action was acknowledged."""
        if self._written >= self._handed or not self._tasks:
            return
        future = asyncio.get_running_loop().create_future()
        self._writes.append((self._handed, future))
        await future

    @property
    def handed(self) -> int:
        """How many webhook events were emitted so far (`stored_within` waits for them)."""
        return self._handed

    async def stored_within(self, timeout_s: float) -> bool:
        """`written`, for at most `timeout_s`: whether every event emitted so far is stored
        (a subscription's answer waits for this: core.subscriptions)."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.written()
        except TimeoutError:
            return False
        return True

    def _hold(self, app_id: str, kind: str, key: str, event: Event) -> None:
        if app_id not in self.apps:
            return
        held = Held(app_id, event)
        self._held[(app_id, kind, key)] = held
        loop = asyncio.get_running_loop()
        held.timer = loop.call_later(
            self.settings.webhook_hold_s, self._release, (app_id, kind, key), held
        )

    def _release(self, slot: tuple[str, str, str], held: Held) -> None:
        if self._held.get(slot) is held:
            del self._held[slot]
            self._hand(held.app_id, held.event)

    def _undoes(self, app_id: str, kind: str, key: str) -> bool:
        """Whether a held event of `kind` for `key` is undone: both are dropped."""
        held = self._held.pop((app_id, kind, key), None)
        if held is None:
            return False
        if held.timer is not None:
            held.timer.cancel()
        self.stats.suppressed += 1
        return True

    def _occupied(self, e: ChannelOccupied) -> None:
        counts = self.counts
        if counts is not None:  # the cluster's: the writer asks
            if e.app_id in self.apps:
                event = {"name": "channel_occupied", "channel": e.channel}
                wanted = event if self._wants(e.app_id, "channel_occupied") else None
                occupy = partial(counts.occupy, e.app_id, e.channel)
                self._hand(e.app_id, wanted, partial(_asked, occupy))
        elif not self._undoes(e.app_id, "channel_vacated", e.channel):
            self._emit(e.app_id, {"name": "channel_occupied", "channel": e.channel})

    def _vacated(self, e: ChannelVacated) -> None:
        event = {"name": "channel_vacated", "channel": e.channel}
        counts = self.counts
        if counts is None:
            self._hold(e.app_id, "channel_vacated", e.channel, event)
        elif e.app_id in self.apps:  # the cluster's: the writer asks, then holds
            hold_s = self.settings.webhook_hold_s
            empty = partial(counts.vacate, e.app_id, e.channel, hold_s)
            self._hand(
                e.app_id, None, partial(self._cluster_hold, e.app_id, e.channel, event, empty)
            )

    async def _cluster_hold(
        self, app_id: str, key: str, event: Event, begun: Callable[[], Awaitable[bool]]
    ) -> bool:
        """The writer's step for a departure in a cluster (a channel empty here, a member
        gone): `begun` says whether a hold began in the counts (the channel is empty
        everywhere; a member's hold always begins); at its end `settle` decides whether
        `event` is sent. Nothing is stored now. A counts store that cannot answer: `event`
        is sent at once."""
        try:
            held = await _asked(begun)
        except StoreUnavailable as exc:
            logs.warning("webhook hold not begun in the cluster: sent", reason=exc.message)
            self._emit(app_id, event)
            return False
        if held:
            slot = object()

            def settle(now: bool = False) -> None:
                if self._settles.pop(slot, None) is not None:
                    self._settle(app_id, key, event, now=now)

            timer = asyncio.get_running_loop().call_later(self.settings.webhook_hold_s, settle)
            self._settles[slot] = (timer, settle)
        return False

    def _settle(self, app_id: str, key: str, event: Event, *, now: bool) -> None:
        assert self.counts is not None
        if self._wants(app_id, event["name"]):
            settle = partial(self.counts.settle, app_id, key, now=now)
            self._hand(app_id, event, partial(_asked, settle))

    def _cluster_vacated(self, e: ClusterVacated) -> None:
        self._emit(e.app_id, {"name": "channel_vacated", "channel": e.channel})

    def _members_quiet(self, app_id: str, channel: str) -> bool:
        """Are member events off on `channel` (the app's `presence_events_off`)?"""
        app = self.apps.get(app_id)
        return app is not None and app.member_events_off(channel)

    def _member_added(self, e: MemberAdded) -> None:
        if e.remote or self._members_quiet(e.app_id, e.channel):
            return  # the node the member joined on sends it; none where member events are off
        key = f"{e.channel}\n{e.user_id}"
        event = {"name": "member_added", "channel": e.channel, "user_id": e.user_id}
        counts = self.counts
        if counts is not None:  # back within a hold begun on any node: neither is sent
            if e.app_id in self.apps:
                wanted = event if self._wants(e.app_id, "member_added") else None
                back = partial(_not, counts.returned, e.app_id, key)
                self._hand(e.app_id, wanted, partial(_asked, back))
        elif not self._undoes(e.app_id, "member_removed", key):
            self._emit(e.app_id, event)

    def _member_removed(self, e: MemberRemoved) -> None:
        if e.remote or self._members_quiet(e.app_id, e.channel):
            return
        key = f"{e.channel}\n{e.user_id}"
        event = {"name": "member_removed", "channel": e.channel, "user_id": e.user_id}
        counts = self.counts
        if counts is None:
            self._hold(e.app_id, "member_removed", key, event)
        elif e.app_id in self.apps:
            begun = partial(counts.hold, e.app_id, key, self.settings.webhook_hold_s)
            self._hand(e.app_id, None, partial(self._cluster_hold, e.app_id, key, event, begun))

    def _client_event(self, e: ClientEventSent) -> None:
        p = e.publication
        event: Event = {
            "name": "client_event",
            "channel": p.channel,
            "event": p.event,
            "data": p.data,
            "socket_id": e.socket_id,
        }
        if p.channel.startswith("presence-") and p.publisher.user_id is not None:
            event["user_id"] = p.publisher.user_id
        self._emit(e.app_id, event)

    def _conversation_changed(self, e: ConversationChanged) -> None:
        if e.change.startswith("bot_"):
            event: Event = {"name": e.change, "channel": e.channel, "bot_id": e.bot_id}
            if e.conversation_id:
                event["conversation_id"] = e.conversation_id
        else:
            event = {
                "name": f"conversation_{e.change}",
                "channel": e.channel,
                "conversation_id": e.conversation_id,
            }
            if e.bot_id is not None:
                event["bot_id"] = e.bot_id
        if e.user_id is not None:
            event["user_id"] = e.user_id
        event["by"] = e.by
        self._emit(e.app_id, event)

    def _cache_miss(self, e: CacheMiss) -> None:
        self._emit(e.app_id, {"name": "cache_miss", "channel": e.channel})

    def _subscription_count(self, e: SubscriptionCountChanged) -> None:
        app = self.apps.get(e.app_id)
        if app is None or not app.subscription_count or e.channel.startswith("presence-"):
            return
        event = {"name": "subscription_count", "channel": e.channel, "subscription_count": e.count}
        counts = self.counts
        if counts is None:
            self._emit(e.app_id, event)
        elif self._wants(e.app_id, "subscription_count"):  # the cluster's count, read
            count = partial(_cluster_count, counts, e.app_id, event)
            self._hand(e.app_id, event, partial(_asked, count))

    # -- into the store ------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        batch_s = self.settings.webhook_batch_ms / 1000
        while True:
            first = await self._out.get()
            taken = [first]
            if batch_s > 0:
                deadline = asyncio.get_running_loop().time() + batch_s
                try:
                    async with asyncio.timeout_at(deadline):
                        while True:
                            taken.append(await self._out.get())
                except TimeoutError:
                    pass
            await self._store(await self._checked(taken))
            self._written += len(taken)
            for _ in taken:
                self._out.task_done()
            self._wake.set()
            if self._writes:
                waiting = []
                for upto, future in self._writes:
                    if upto <= self._written:
                        if not future.done():
                            future.set_result(None)
                    else:
                        waiting.append((upto, future))
                self._writes = waiting

    async def _checked(self, taken: list[Handed]) -> list[tuple[str, Event]]:
        """The events to store, in order: each with a check, only if it says so (a check
        that fails is logged and its event kept)."""
        kept: list[tuple[str, Event]] = []
        for item in taken:
            keep = True
            if item.check is not None:
                try:
                    keep = await item.check()
                except StoreUnavailable as exc:
                    logs.warning("channel occupancy not asked: webhook sent", reason=exc.message)
            if keep and item.event is not None:
                kept.append((item.app_id, item.event))
        return kept

    async def _store(self, taken: list[tuple[str, Event]]) -> None:
        """Queue `taken` (in order), grouped by target and channel; tried until stored."""
        jobs: dict[tuple[str, str, str], list[Event]] = {}
        for app_id, event in taken:
            for target in self.apps[app_id].webhooks:
                if target.wants(event["name"]):
                    jobs.setdefault((app_id, target.url, event["channel"]), []).append(event)
        for (app_id, url, channel), events in jobs.items():
            while True:
                failed = False
                try:
                    await self.queue.enqueue(app_id, url, channel, orjson.dumps(events).decode())
                    break
                except StoreUnavailable as exc:
                    logs.warning("webhook not queued yet: store unavailable", reason=exc.message)
                    failed = True
                except Exception:
                    logs.error("queueing a webhook failed, trying again")
                    failed = True
                if failed:  # waited outside the except blocks
                    await asyncio.sleep(1.0)
            self.stats.queued += 1

    # -- out to the receivers ------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        lease_ms = int((self.settings.webhook_timeout_s + 30) * 1000)
        while not self._closing:
            try:
                jobs = await self.queue.claim(CLAIM_BATCH, lease_ms)
            except StoreUnavailable as exc:
                logs.warning("webhook queue unavailable", reason=exc.message)
                jobs = []
            except Exception:  # a store's fault must not end the dispatcher: next poll
                logs.error("claiming webhooks failed")
                jobs = []
            if jobs:
                await asyncio.gather(*(self._deliver(job) for job in jobs))
                continue
            self._wake.clear()
            try:  # asyncio.timeout, not wait_for: 3.11's wait_for may swallow a cancellation
                async with asyncio.timeout(IDLE_POLL_S):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _deliver(self, job: WebhookJob) -> None:
        credentials = await self._credentials(job)
        error = await self._post(job, *credentials) if credentials else "no credentials to sign"
        try:
            if error is None:
                if await self.queue.delivered(job.id, job.claim):
                    self.stats.delivered += 1
                else:
                    self._lost_claim(job, "delivered")
                return
            self.stats.failed_attempts += 1
            self.stats.last_errors[job.url] = error
            now_ms = int(self.clock() * 1000)
            if now_ms - job.created_ms >= self.settings.webhook_retry_s * 1000:
                if not await self.queue.bury(job.id, job.claim, error):
                    self._lost_claim(job, "dead-lettered")
                    return
                self.stats.buried += 1
                logs.warning("webhook dead-lettered", app_id=job.app_id, url=job.url, error=error)
                return
            delay = min(BACKOFF_FIRST_S * 2**job.attempts, BACKOFF_MAX_S)
            delay *= random.uniform(0.5, 1.0)  # jitter: receivers coming back are not stormed
            if not await self.queue.retry(job.id, job.claim, now_ms + int(delay * 1000), error):
                self._lost_claim(job, "retried")
                return
            logs.info(
                "webhook failed, retrying", url=job.url, attempt=job.attempts + 1, error=error
            )
        except StoreUnavailable as exc:  # the lease runs out and the job is claimed again
            logs.warning("webhook outcome not recorded", reason=exc.message)
        except Exception:
            logs.error("recording a webhook's outcome failed", job=job.id)

    def _lost_claim(self, job: WebhookJob, outcome: str) -> None:
        """The job's lease ran out before its outcome was recorded, and another claim has it."""
        self.stats.lost_claims += 1
        logs.warning(
            "webhook outcome not recorded: claimed by another dispatcher after the lease ran out",
            outcome=outcome,
            job=job.id,
            url=job.url,
        )

    async def _credentials(self, job: WebhookJob) -> tuple[str, str] | None:
        """The key and secret a job is signed with: its app's, or its bot's."""
        if job.bot_id:
            if self.bot_credentials is None:
                return None
            try:
                return await self.bot_credentials(job.app_id, job.bot_id)
            except Exception:
                logs.error("reading a bot's credentials failed", bot_id=job.bot_id)
                return None
        app = self.all_apps.get(job.app_id)
        return (app.key, app.secret) if app is not None else None

    async def _post(self, job: WebhookJob, key: str, secret: str) -> str | None:
        """POST the job now, signed now; None when the receiver took it (2xx), else why not."""
        assert self._http is not None
        body = b'{"time_ms":%d,"events":%s}' % (int(self.clock() * 1000), job.events.encode())
        headers = {
            "Content-Type": "application/json",
            "X-Pusher-Key": key,
            "X-Pusher-Signature": signature(secret, body),
        }
        try:
            async with self._http.post(job.url, data=body, headers=headers) as response:
                if 200 <= response.status < 300:
                    return None
                return f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"[:300]


async def _not(check: Callable[[str, str], Awaitable[bool]], app_id: str, key: str) -> bool:
    return not await check(app_id, key)


async def _cluster_count(counts: ChannelCounts, app_id: str, event: Event) -> bool:
    """A subscription_count webhook's count, read from the cluster's counts."""
    event["subscription_count"] = await counts.subscriptions(app_id, event["channel"])
    return True


async def _asked(call: Check) -> bool:
    """A question to the cluster's counts, bounded by ASK_TIMEOUT_S (StoreUnavailable past
    it, as when Redis refuses): an unreachable Redis must not stall the writer."""
    try:
        async with asyncio.timeout(ASK_TIMEOUT_S):
            return await call()
    except TimeoutError:
        raise StoreUnavailable(f"the channel counts did not answer in {ASK_TIMEOUT_S} s") from None
