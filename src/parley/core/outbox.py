"""The outbox relay: publishes the events applications commit to their outbox table
(`backends.outbox`), each once, in order per channel, as if the app's backend had called the
HTTP API (publisher `server`).

One relay runs per node; only the node whose source is claimed publishes, the others ask
again every `poll_s` (so a dead node's outbox moves to another within that). A notification
wakes the relay at once; the poll is the fallback. A pass reads up to `BATCH` rows in id
order, queues them all on the node's outbox pump (which keeps their order, channel by
channel), waits until each is stored and delivered, and only then marks them published: a
crash in between publishes them again under the same idempotency key (`outbox-<id>`), which
the history stores once. A row that can never be published (unknown app, bad channel or
name, data too large) is marked failed with its reason, logged, and skipped. A database that
cannot be reached is logged (rate-limited) and tried again at the next poll.
"""

from __future__ import annotations

import asyncio
import logging
import time

from parley import logs
from parley.backends.outbox import OutboxRow, OutboxSource
from parley.core.node import Node
from parley.core.tasks import cancel
from parley.errors import StoreUnavailable
from parley.protocol.channels import channel_name_problem
from parley.protocol.events import event_name_problem
from parley.publication import Publication
from parley.waiting import wait_set

BATCH = 500
SWEEP_EVERY_S = 3600.0
KEEP_PUBLISHED_S = 86400.0  # published rows are deleted after a day

FAULTS = logs.Refusals(per_second=1, level=logging.WARNING)


class OutboxRelay:
    def __init__(self, node: Node, source: OutboxSource, poll_s: float = 1.0) -> None:
        self.node = node
        self.source = source
        self.poll_s = poll_s
        self.published = 0  # rows published by this node since it started
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._swept_at = 0.0

    def start(self) -> None:
        self.source.on_insert(self._wake.set)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel(task)
        await self.source.close()

    async def _run(self) -> None:
        holding = False
        while True:
            try:
                claimed = await self.source.claim()
                if claimed != holding:
                    holding = claimed
                    if claimed:
                        logs.info("outbox claimed", node_id=self.node.node_id)
                if claimed:
                    while await self.relay_once() == BATCH:
                        pass  # a full batch: there may be more
                    await self._sweep()
            except StoreUnavailable as exc:
                holding = False
                FAULTS.log("outbox unreachable", reason=exc.message)
            await wait_set(self._wake, self.poll_s)
            self._wake.clear()

    async def relay_once(self) -> int:
        """Publish one batch of pending rows; how many rows it read."""
        rows = await self.source.pending(BATCH)
        if not rows:
            return 0
        publishing: list[tuple[OutboxRow, asyncio.Task[list[Publication]]]] = []
        for row in rows:
            problem = self._problem(row)
            if problem is not None:
                await self.source.mark_failed(row.id, problem)
                logs.warning("outbox row failed", id=row.id, app_id=row.app_id, reason=problem)
                continue
            app = self.node.hubs[row.app_id].app
            # each task queues its row on the pump before its first await: in row order
            task = asyncio.ensure_future(
                self.node.publish(
                    app, row.event, row.data, [row.channel], idempotency_key=f"outbox-{row.id}"
                )
            )
            publishing.append((row, task))
        done = await asyncio.gather(*(t for _, t in publishing), return_exceptions=True)
        published = [
            row.id
            for (row, _), result in zip(publishing, done, strict=True)
            if not isinstance(result, BaseException)
        ]
        if published:
            await self.source.mark_published(published)
            self.published += len(published)
        failed = [r for r in done if isinstance(r, BaseException)]
        if failed:  # the history store could not take them: the rows stay, tried again
            raise StoreUnavailable(f"{len(failed)} outbox events not stored: {failed[0]}")
        return len(rows)

    def _problem(self, row: OutboxRow) -> str | None:
        hub = self.node.hubs.get(row.app_id)
        if hub is None:
            return f"No app {row.app_id!r}"
        app = hub.app
        problem = channel_name_problem(row.channel) or event_name_problem(
            row.event, app.max_event_name_length
        )
        if problem is not None:
            return problem
        size = len(row.data.encode())
        if size > app.max_event_bytes:
            return f"Event data is {size} bytes, the limit is {app.max_event_bytes}"
        return None

    async def _sweep(self) -> None:
        now = time.monotonic()
        if now - self._swept_at >= SWEEP_EVERY_S:
            self._swept_at = now
            deleted = await self.source.sweep(KEEP_PUBLISHED_S)
            if deleted:
                logs.info("outbox swept", rows=deleted)
