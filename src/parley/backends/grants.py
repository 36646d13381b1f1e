"""The grant role: what a store of Access Manager grants must promise (`GrantStore`), the change
feed (`GrantChange`) by which servers sharing one database follow each other's grants, and the
helpers the implementations share. The `Grant` value and all matching live in `auth.grants`.

It knows nothing of sessions or the wire; the server keeps the active grants in a `GrantIndex`.

Theory of operation. A grant is created once and never edited. Revoking keeps the row as a
tombstone (`deleted_at`) for an hour, so `changes_since` can report the deletion to every
server that polls; expiry needs no report, as each server sees `expires_at` itself. `sweep`
removes tombstones and grants expired more than an hour ago.
"""

from __future__ import annotations

import abc
import builtins
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from parley.auth.grants import (
    Grant,
    check_operations,
    check_resource,
    check_subject,
    check_ttl,
    expiry,
)
from parley.backends.lifecycle import StoreLifecycle

__all__ = [  # Grant is re-exported: it is the value the store trades in
    "GRANT_COLUMNS",
    "ChangeKind",
    "Grant",
    "GrantChange",
    "GrantStore",
    "changes_from_rows",
    "grant_from_row",
    "grant_row",
    "new_grant",
]

ChangeKind = Literal["created", "deleted"]
TOMBSTONE_KEEP_MS = 3_600_000  # how long a deletion stays visible to `changes_since`
SWEEP_EVERY_MS = 60_000  # stores sweep at start and then at most this often, on writes
MAX_GRANTED_BY = 200


@dataclass(frozen=True, slots=True)
class GrantChange:
    """One entry of the change feed: a grant was created or deleted at `at` (Unix ms)."""

    kind: ChangeKind
    grant: Grant
    at: int


class GrantStore(StoreLifecycle, abc.ABC):
    """Grants per app, with expiry and revocation, shared by every server on the same database.

    Grants are keyed by (app_id, id). Every method may be called concurrently from many tasks.
    Expired grants are never returned by `get`, `list` or `active`, nor deleted by `delete`.
    Implementations: `MemoryGrantStore`, `SqliteGrantStore`, `PostgresGrantStore`; each takes a
    `clock` (Unix seconds), and a durable one its technology's database handle
    (`backends.database`), opened and migrated by its owner.
    """

    what = "grant store"

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(clock)
        self._swept_at = 0

    async def started(self) -> None:
        await self.sweep()  # the database handle, if any, is open and migrated

    @abc.abstractmethod
    async def create(
        self,
        app_id: str,
        subject: str,
        resource: str,
        operations: Iterable[str],
        ttl_s: float | None = None,
        granted_by: str | None = None,
    ) -> Grant:
        """Store a new grant with a fresh random id and return it.

        ValueError when `subject` is neither "*" nor a valid user id, `resource` is not a
        channel name or pattern (charset `[A-Za-z0-9_\\-=@,.;#*]`, at most 200 characters),
        `operations` is empty or names something other than read, write, presence and manage,
        `ttl_s` is not a number > 0, or `granted_by` is not a string of at most 200 characters.
        """

    @abc.abstractmethod
    async def get(self, app_id: str, grant_id: str) -> Grant | None:
        """The grant, or None when unknown, deleted or expired."""

    @abc.abstractmethod
    async def list(
        self, app_id: str, subject: str | None = None, resource: str | None = None
    ) -> builtins.list[Grant]:
        """The app's unexpired grants, oldest first; only those whose subject (resource) is
        exactly `subject` (`resource`) when given. A pattern is matched as a string here."""

    @abc.abstractmethod
    async def delete(self, app_id: str, grant_id: str) -> Grant | None:
        """Revoke the grant and return it; None when unknown, already deleted or expired."""

    @abc.abstractmethod
    async def active(self, app_id: str) -> builtins.list[Grant]:
        """Every unexpired grant of the app, oldest first: what a server loads at start."""

    @abc.abstractmethod
    async def changes_since(self, app_id: str | None, since_ms: int) -> builtins.list[GrantChange]:
        """Creations and deletions stamped at or after `since_ms`, in the order they happened
        (a grant's creation before its deletion); of every app when `app_id` is None.

        Deletions are kept for an hour. Stamps come from the clock of the process that made
        the change, so a poller should ask from a little before the last `at` it saw and apply
        changes idempotently (add by id, remove by id). A created grant may be expired by now.
        """

    async def sweep(self) -> int:
        """Physically remove tombstones and grants expired more than an hour ago; return how
        many rows went. Stores call it themselves; no answer depends on it."""
        self.check_running()
        self._swept_at = self.now_ms()
        return await self._remove_before(self._swept_at - TOMBSTONE_KEEP_MS)

    async def _sweep_when_due(self, now_ms: int) -> None:
        """`sweep` on a write, at most every SWEEP_EVERY_MS."""
        if now_ms - self._swept_at >= SWEEP_EVERY_MS:
            await self.sweep()

    @abc.abstractmethod
    async def _remove_before(self, cutoff: int) -> int:
        """Remove the grants deleted or expired before `cutoff` (Unix ms); how many."""


# -- shared by the implementations ---------------------------------------------------------------


def new_grant(
    app_id: str,
    subject: str,
    resource: str,
    operations: Iterable[str],
    ttl_s: float | None,
    granted_by: str | None,
    now_ms: int,
) -> Grant:
    """Validate the arguments of `create` and make the grant, with a fresh id."""
    if not isinstance(app_id, str) or not app_id:
        raise ValueError("app_id must be a non-empty string")
    if granted_by is not None and (
        not isinstance(granted_by, str) or len(granted_by) > MAX_GRANTED_BY
    ):
        raise ValueError(f"granted_by must be a string of at most {MAX_GRANTED_BY} characters")
    return Grant(
        id=secrets.token_urlsafe(16),
        app_id=app_id,
        subject=check_subject(subject),
        resource=check_resource(resource),
        operations=check_operations(operations),
        created_at=now_ms,
        expires_at=expiry(now_ms, check_ttl(ttl_s)),
        granted_by=granted_by,
    )


# The columns a durable store keeps, in the order of `grant_row` and `grant_from_row`.
GRANT_COLUMNS = "id, app_id, subject, resource, operations, created_at, expires_at, granted_by"


def grant_row(grant: Grant) -> tuple[Any, ...]:
    return (
        grant.id,
        grant.app_id,
        grant.subject,
        grant.resource,
        ",".join(grant.operations),
        grant.created_at,
        grant.expires_at,
        grant.granted_by,
    )


def grant_from_row(row: Sequence[Any]) -> Grant:
    id_, app_id, subject, resource, operations, created_at, expires_at, granted_by = row
    return Grant(
        id=id_,
        app_id=app_id,
        subject=subject,
        resource=resource,
        operations=tuple(operations.split(",")),
        created_at=created_at,
        expires_at=expires_at,
        granted_by=granted_by,
    )


def changes_from_rows(rows: Iterable[Sequence[Any]], since_ms: int) -> list[GrantChange]:
    """The change feed from rows of GRANT_COLUMNS followed by deleted_at."""
    changes: list[GrantChange] = []
    for row in rows:
        grant = grant_from_row(row[:-1])
        deleted_at = row[-1]
        if grant.created_at >= since_ms:
            changes.append(GrantChange("created", grant, grant.created_at))
        if deleted_at is not None and deleted_at >= since_ms:
            changes.append(GrantChange("deleted", grant, deleted_at))
    changes.sort(key=_change_order)
    return changes


def _change_order(change: GrantChange) -> tuple[int, int, str]:
    return (change.at, 0 if change.kind == "created" else 1, change.grant.id)
