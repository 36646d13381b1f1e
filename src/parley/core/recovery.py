"""Recovery: what a client missed (`parley:resume`) and pages of a channel's history
(`parley:history` and the HTTP API), read from the history store.

A resume holds the live events of its subscriber while it replays (the hub queues them
behind the replay, with their offsets), so no live event overtakes it: the replay goes first,
then `parley:resumed`, then the live events it did not already replay. When the store cannot
recover (another epoch, trimmed, over `recovery_limit`), nothing is replayed and
`recovered: false` says so; the live events follow all the same.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from parley import logs
from parley.backends.history import HistoryStore, Retention
from parley.core.hub import AppHub
from parley.core.session import Session
from parley.errors import ParleyError
from parley.protocol import frames
from parley.protocol.connection import HistoryQuery, HistoryRequest, Resume
from parley.publication import StreamPosition
from parley.settings import AppConfig


class Recovery:
    def __init__(
        self,
        history: HistoryStore,
        retention: Callable[[str], Retention | None],
        recovery_limit: int,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self.history = history
        self.retention = retention
        self.recovery_limit = recovery_limit
        self._spawn = spawn  # the node's: its tasks are awaited at shutdown
        # shows a page of a conversation channel as its messages are now (core.conversations)
        self.fold: Callable[[AppConfig, str, dict[str, Any]], Awaitable[None]] | None = None
        self.fold_prefix = ""

    def request(self, session: Session, hub: AppHub, command: Resume | HistoryRequest) -> None:
        """A `parley:resume` or `parley:history` from a subscribed session: answered later."""
        channel = command.channel
        if self.retention(channel) is None:
            session.send(frames.error_frame(None, f"Channel {channel} keeps no history", channel))
        elif isinstance(command, Resume):
            self._spawn(self.resume(session, hub, channel, command.offset, command.epoch))
        else:
            self._spawn(self.history_page(session, hub, channel, command.query))

    async def resume(
        self, session: Session, hub: AppHub, name: str, offset: int, epoch: str
    ) -> None:
        channel = hub.channels.get(name)
        if channel is None or session not in channel.subscribers:
            return
        held: list[tuple[int, bytes]] = []
        channel.subscribers[session] = held
        try:
            missed = await self.history.since(
                hub.app.id, name, StreamPosition(offset, epoch), self.recovery_limit
            )
        finally:
            still_here = (
                channel.subscribers.get(session, None) is held and session in channel.subscribers
            )
            if still_here:
                channel.subscribers[session] = None
        if not still_here:
            return
        last = offset
        if missed is not None:
            for publication in missed:
                session.send(frames.stored_event(publication))
            if missed:
                last = missed[-1].position.offset
        recovered = missed is not None
        session.send(
            frames.frame("parley:resumed", {"channel": name, "recovered": recovered}, name)
        )
        for held_offset, data in held:
            if not recovered or held_offset > last:
                session.send(data)
        logs.debug(
            "resumed",
            app_id=hub.app.id,
            socket_id=session.socket_id,
            channel=name,
            recovered=recovered,
            replayed=len(missed or ()),
        )

    async def history_page(
        self, session: Session, hub: AppHub, name: str, query: HistoryQuery
    ) -> None:
        try:
            page = await self.read_history(hub.app, name, query)
        except ParleyError as exc:
            session.send(frames.error_frame(None, exc.message, name))
            return
        session.send(frames.frame("parley:history_page", page, name))

    async def read_history(self, app: AppConfig, name: str, query: HistoryQuery) -> dict[str, Any]:
        """A page of history as the API and `parley:history` answer it."""
        page = await self.history.read(
            app.id,
            name,
            after=query.after,
            before=query.before,
            limit=query.limit,
            direction=query.direction,
        )
        events = []
        for publication in page.publications:
            item: dict[str, Any] = {
                "event": publication.event,
                "data": publication.data,
                "parley": publication.parley(),
            }
            if publication.user_id is not None:
                item["user_id"] = publication.user_id
            events.append(item)
        answer = {"channel": name, "epoch": page.epoch, "events": events, "next": page.next}
        if self.fold is not None and name.startswith(self.fold_prefix):
            await self.fold(app, name, answer)
        return answer
