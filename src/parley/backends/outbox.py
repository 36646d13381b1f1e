"""The outbox role: events an application wrote into its own database, inside its own
transactions, for Parley to publish once they are committed (`OutboxSource`), and the rows it
hands over (`OutboxRow`).

Theory of operation. The application inserts a row per event into a documented table in the
same transaction as the change the event announces; a rolled-back transaction leaves no row,
so no event is ever published for it. One node of a cluster at a time holds the source
(`claim`); it reads the committed rows that are not yet published in id order, publishes them,
and marks them (`mark_published`, `mark_failed`). The table's ids follow commit order within
each channel (the implementation must guarantee it: PostgreSQL's takes a per-channel lock
before it gives an id), so publishing in id order keeps each channel's order.

Exactly once: a row is published with the idempotency key `outbox-<id>`, so a row published
again after a crash between the publish and its mark is stored and delivered once (within the
history's idempotency window; a channel that keeps no history has no such memory: at least
once). Implementations: `postgres.outbox.PostgresOutbox`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One committed, unpublished event of the outbox table."""

    id: int
    app_id: str
    channel: str
    event: str
    data: str  # as the HTTP API's `data`: a string, delivered as it is


class OutboxSource(Protocol):
    """Committed outbox rows for the node that holds the source. Every method may raise
    StoreUnavailable when the database cannot be reached; the caller tries again later."""

    async def claim(self) -> bool:
        """Become the one node that publishes the outbox, if no other is; True when this
        node holds it (now or already). A node that loses its connection loses the claim."""

    async def pending(self, limit: int) -> Sequence[OutboxRow]:
        """Up to `limit` committed rows not yet published or failed, in id order."""

    async def mark_published(self, ids: Sequence[int]) -> None:
        """These rows are published: never handed over again."""

    async def mark_failed(self, row_id: int, reason: str) -> None:
        """This row can never be published (no such app, a bad channel...): never handed over
        again, the reason kept in the row for the application to read."""

    async def sweep(self, older_than_s: float) -> int:
        """Delete rows published (or failed) more than `older_than_s` ago; how many."""

    def on_insert(self, wake: Callable[[], None]) -> None:
        """Call `wake` when rows may have been committed (a notification); best effort: the
        caller also polls."""

    async def close(self) -> None:
        """Release the claim and the connection."""
