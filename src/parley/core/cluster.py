"""The cluster: what a node tells the others besides publications, and its presence lease.

Besides presence, a node tells the others what must act on every node: a `#server-to-user-*`
event (which keeps no history: it crosses as its frame), `terminate_connections`, and that a
channel's subscription count changed (their subscribers are told the cluster's new count). Grant
revocations and disabled users need nothing here: every node follows the shared store.

It is the broker's handler (`BrokerHandler`): publications and the end of an outage go to
`core.delivery` (the same bound methods, no frame in between), the nodes' own messages come
here. With a broker of one process nothing crosses and the lease never lapses: all of this is
idle.

Presence across nodes. The presence store is shared, so each node learns from it whether a
join or a leave changed the members; the node where it happened emits `MemberAdded` /
`MemberRemoved` and tells the other nodes (`Broker.broadcast`), which emit the same event with
`remote=True`: their subscribers are told, nothing else follows there.

The lease. The node writes its presence entries under `presence_key` (its id and a
generation) and keeps that key's lease alive every `presence_refresh_s`. When the lease has
lapsed (the node was paused or cut off from Redis longer than `node_lease_s`), its entries are
a reaper's to remove: the node takes a new generation and writes the entries of its live
connections again (a member that is new again is announced again); the old entries never
come back. Each tick the node also asks to reap: the one elected reaper gets the lapsed
leases, removes their entries and announces every member who left with them, within
`node_lease_s` + `presence_refresh_s` of the dead node's last heartbeat.

The channel counts (`backends.counts`) ride on the same lease: a shared store keeps the node's
numbers under `presence_key`, moves them to the new key when the node registers again
(`rekey`), and the reaper removes a dead node's numbers with its entries (`remove_node`; one
that fails is tried again at the next tick), so a dead node's subscriptions and connections
leave every node's answers within the same bound as its members. The channels it leaves
empty on every node are emitted as `ClusterVacated` (the `channel_vacated` webhook).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from parley import logs
from parley.backends.counts import Vacancy
from parley.core.events import ClusterVacated, MemberAdded, MemberRemoved
from parley.core.tasks import cancel
from parley.errors import StoreUnavailable

if TYPE_CHECKING:
    from parley.core.node import Node

FAULTS = logs.Refusals(per_second=1, level=logging.WARNING)


class Cluster:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.broker = node.broker
        self.presence = node.presence
        self.counts = node.counts
        self.events = node.events
        # the broker's handler: publications straight to delivery
        self.on_publication = node.delivery.on_publication
        self.on_reconnected = node.delivery.on_reconnected
        self.generation = 1
        self.presence_key = f"{node.node_id}.1"  # the node in the presence store
        self._registered = False
        self._task: asyncio.Task[None] | None = None
        self._dead_counts: set[str] = set()  # reaped nodes whose counts are still to remove

    def follow(self) -> None:
        self.events.subscribe(MemberAdded, self._member_added)
        self.events.subscribe(MemberRemoved, self._member_removed)

    # -- telling the others ------------------------------------------------------------------

    def _member_added(self, event: MemberAdded) -> None:
        if not event.remote:
            body = {"channel": event.channel, "user_id": event.user_id, "info": event.user_info}
            self.broker.broadcast("member_added", event.app_id, body)

    def _member_removed(self, event: MemberRemoved) -> None:
        if not event.remote:
            body = {"channel": event.channel, "user_id": event.user_id}
            self.broker.broadcast("member_removed", event.app_id, body)

    def send_to_user(self, app_id: str, user_id: str, frame: bytes) -> None:
        """A `#server-to-user-*` event (unstored: it crosses as its frame) for the user's
        connections on the other nodes."""
        body = {"user_id": user_id, "frame": frame.decode()}
        self.broker.broadcast("send_to_user", app_id, body)

    def terminate(self, app_id: str, user_id: str) -> None:
        """Close the user's connections on the other nodes (terminate_connections)."""
        self.broker.broadcast("terminate", app_id, {"user_id": user_id})

    def count_changed(self, app_id: str, channel: str) -> None:
        """This node's subscription count of `channel` changed and is written: the other
        nodes tell their subscribers the cluster's new count (core.pusher_frames)."""
        self.broker.broadcast("subscription_count", app_id, {"channel": channel})

    def on_cluster_message(self, kind: str, app_id: str, body: dict[str, Any]) -> None:
        hub = self.node.hubs.get(app_id)
        if hub is None:
            return
        if kind == "subscription_count":
            channel = body.get("channel")
            if isinstance(channel, str):
                self.node.pusher_frames.count_changed_elsewhere(app_id, channel)
            return
        user_id = body.get("user_id")
        if not isinstance(user_id, str):
            return
        if kind == "send_to_user":
            frame = body.get("frame")
            if isinstance(frame, str):
                hub.messages_out += hub.send_to_user(user_id, frame.encode(), None)
            return
        if kind == "terminate":
            self.node.terminate_user(hub.app, user_id)
            return
        channel = body.get("channel")
        if not isinstance(channel, str):
            return
        if kind == "member_added":
            self.events.emit(MemberAdded(app_id, channel, user_id, body.get("info"), "", True))
        elif kind == "member_removed":
            self.events.emit(MemberRemoved(app_id, channel, user_id, "", True))

    # -- the lease ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin the lease (when the store is reachable: else the first tick does); a node
        alone (the memory broker) has none."""
        if self.broker.engine == "memory":
            return
        try:
            self._registered = await self.presence.heartbeat(self.presence_key, False)
        except StoreUnavailable as exc:
            FAULTS.log("presence lease not begun", reason=exc.message)
        self._vacated(await self.counts.start(self.presence_key))
        self._task = asyncio.get_running_loop().create_task(self._keep())

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel(task)

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.node.settings.presence_refresh_s)
            try:
                await self.tick()
            except StoreUnavailable as exc:
                FAULTS.log("presence lease not renewed", reason=exc.message)

    async def tick(self) -> None:
        """Renew the lease (or take a new one and rewrite the live entries), then reap."""
        if not await self.presence.heartbeat(self.presence_key, self._registered):
            if self._registered:
                await self._register_again()
            else:
                self._registered = await self.presence.heartbeat(self.presence_key, False)
        for dead in await self.presence.reap(self.presence_key):
            self._dead_counts.add(dead)
            gone = await self.presence.remove_node(dead)
            logs.info("node reaped", node=dead, members_gone=len(gone))
            for departure in gone:
                self.events.emit(
                    MemberRemoved(departure.app_id, departure.channel, departure.user_id, "")
                )
        for dead in list(self._dead_counts):
            self._vacated(await self.counts.remove_node(dead))
            self._dead_counts.discard(dead)

    def _vacated(self, left: list[Vacancy]) -> None:
        """The channels a dead node (or this node's previous process) left empty."""
        for vacancy in left:
            self.events.emit(ClusterVacated(vacancy.app_id, vacancy.channel))

    async def _register_again(self) -> None:
        old = self.presence_key
        self.generation += 1
        self.presence_key = f"{self.node.node_id}.{self.generation}"
        self._registered = await self.presence.heartbeat(self.presence_key, False)
        rewritten = 0
        for hub in self.node.hubs.values():
            app = hub.app
            for channel in list(hub.channels.values()):
                if not channel.type.is_presence:
                    continue
                for session in list(channel.subscribers):
                    conn = session.conn
                    member = conn.subscriptions.get(channel.name) if conn else None
                    if member is None:
                        continue
                    new = await self.presence.add(
                        app.id,
                        channel.name,
                        member.user_id,
                        member.user_info,
                        node_id=self.presence_key,
                        connection_id=session.socket_id,
                        limit=0x7FFFFFFF,  # members already: never refused
                    )
                    rewritten += 1
                    if new:
                        self.events.emit(
                            MemberAdded(app.id, channel.name, member.user_id, member.user_info, "")
                        )
        logs.warning(
            "presence lease lapsed: registered again",
            old=old,
            new=self.presence_key,
            entries=rewritten,
        )
        try:
            await self.counts.rekey(self.presence_key)  # the channel counts follow
        except StoreUnavailable as exc:  # their next batch rewrites them under the new key
            FAULTS.log("channel counts not moved to the new lease", reason=exc.message)
