"""Grants, the Access Manager model: the `Grant` value, its validation, and the pure decision of
whether some grant lets a user read, write, enter presence on or manage a channel.

No I/O and no clock: time comes in as `now_ms`. Storing grants is `backends.grants`' job.

A grant gives a subject (a user id, or "*" for any identified user) operations on a resource
(an exact channel name, or a pattern where `*` stands for any run of characters, possibly
none). Grants only ever add rights: there is no deny, and `manage` implies nothing else.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from parley.auth.tokens import USER_ID_RE

Operation = Literal["read", "write", "presence", "manage"]
OPERATIONS: tuple[str, ...] = ("manage", "presence", "read", "write")  # sorted
ANY_USER = "*"
MAX_RESOURCE = 200
_RESOURCE_RE = re.compile(r"[A-Za-z0-9_\-=@,.;#*]+")


@dataclass(frozen=True, slots=True)
class Grant:
    """`operations` is a non-empty, sorted tuple of OPERATIONS; times are Unix milliseconds."""

    id: str
    app_id: str
    subject: str  # a user id, or "*": any identified user
    resource: str  # a channel name, or a pattern with `*`
    operations: tuple[str, ...]
    created_at: int
    expires_at: int | None  # None: until revoked
    granted_by: str | None = None

    @property
    def is_pattern(self) -> bool:
        return "*" in self.resource

    def expired(self, now_ms: int) -> bool:
        """Expired from `expires_at` on (the instant itself included)."""
        return self.expires_at is not None and self.expires_at <= now_ms

    def covers(self, user_id: str | None, channel: str) -> bool:
        """Whether the grant speaks of this user on this channel, whatever the operation and
        expiry: the subscriptions to look at again when it is revoked or expires."""
        return subject_matches(self.subject, user_id) and resource_matches(self.resource, channel)

    def allows(self, user_id: str | None, channel: str, operation: str, now_ms: int) -> bool:
        return (
            operation in self.operations
            and not self.expired(now_ms)
            and self.covers(user_id, channel)
        )


# -- validation ----------------------------------------------------------------------------------


def check_subject(subject: object) -> str:
    if subject == ANY_USER:
        return ANY_USER
    if not isinstance(subject, str) or not USER_ID_RE.fullmatch(subject):
        raise ValueError(
            "grant subject must be '*' or a user id of 1 to 128 characters of"
            f" A-Z, a-z, 0-9 and _ - = @ , . ;, got {subject!r}"
        )
    return subject


def check_resource(resource: object) -> str:
    if (
        not isinstance(resource, str)
        or len(resource) > MAX_RESOURCE
        or not _RESOURCE_RE.fullmatch(resource)
    ):
        raise ValueError(
            f"grant resource must be a channel name or pattern of 1 to {MAX_RESOURCE}"
            f" characters of A-Z, a-z, 0-9 and _ - = @ , . ; # *, got {resource!r}"
        )
    return resource


def check_operations(operations: Iterable[str]) -> tuple[str, ...]:
    """The operations as a grant holds them: deduplicated and sorted."""
    if isinstance(operations, str):  # "read" would otherwise read as r, e, a, d
        raise ValueError("grant operations must be a collection of names, not one string")
    given = list(operations)
    unknown = [op for op in given if op not in OPERATIONS]
    if not given or unknown:
        raise ValueError(
            f"grant operations must be a non-empty subset of {', '.join(OPERATIONS)}; got {given!r}"
        )
    return tuple(sorted(set(given)))


def check_ttl(ttl_s: object) -> float | None:
    if ttl_s is None:
        return None
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or not 0 < ttl_s < 2**40:
        raise ValueError(f"grant ttl_s must be a number of seconds > 0 (or None), got {ttl_s!r}")
    return float(ttl_s)


def expiry(created_at: int, ttl_s: float | None) -> int | None:
    """`expires_at` for a grant made at `created_at` living `ttl_s` (at least 1 ms)."""
    return None if ttl_s is None else created_at + max(1, round(ttl_s * 1000))


# -- matching ------------------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _pattern(resource: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in resource.split("*")), re.DOTALL)


def resource_matches(resource: str, channel: str) -> bool:
    """Exact equality, or for a pattern: each `*` matches any run of characters (none too).
    No other character is special."""
    if "*" not in resource:
        return resource == channel
    return _pattern(resource).fullmatch(channel) is not None


def subject_matches(subject: str, user_id: str | None) -> bool:
    """ "*" matches any identified user; anything else only that user id."""
    if user_id is None:
        return False
    return subject in (ANY_USER, user_id)


def allowed(
    grants: Iterable[Grant], user_id: str | None, channel: str, operation: str, now_ms: int
) -> Grant | None:
    """The first unexpired grant that lets `user_id` do `operation` on `channel`, or None."""
    for grant in grants:
        if grant.allows(user_id, channel, operation, now_ms):
            return grant
    return None


class GrantIndex:
    """The grants a server holds in memory, indexed for the question asked on every subscribe
    and publish: exact resources by (subject, channel), patterns by subject.

    Expired grants never allow anything; `expired(now_ms)` takes them out, and `next_expiry`
    says when to call it next.
    """

    def __init__(self, grants: Iterable[Grant] = ()) -> None:
        self._by_id: dict[str, Grant] = {}
        self._exact: dict[tuple[str, str], dict[str, Grant]] = {}  # (subject, channel)
        self._patterns: dict[str, dict[str, Grant]] = {}  # subject
        self._expiries: list[tuple[int, str]] = []  # heap; stale entries skipped lazily
        for grant in grants:
            self.add(grant)

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, grant_id: object) -> bool:
        return grant_id in self._by_id

    def __iter__(self) -> Iterator[Grant]:
        return iter(list(self._by_id.values()))

    def get(self, grant_id: str) -> Grant | None:
        return self._by_id.get(grant_id)

    def grants(self, now_ms: int | None = None) -> list[Grant]:
        """Every held grant; only the unexpired ones at `now_ms` when it is given."""
        return [g for g in self._by_id.values() if now_ms is None or not g.expired(now_ms)]

    def add(self, grant: Grant) -> None:
        """Hold `grant`, replacing one with the same id."""
        self.remove(grant.id)
        self._by_id[grant.id] = grant
        self._bucket(grant, create=True)[grant.id] = grant
        if grant.expires_at is not None:
            heapq.heappush(self._expiries, (grant.expires_at, grant.id))

    def remove(self, grant_id: str) -> Grant | None:
        """Forget the grant; None when it was not held."""
        grant = self._by_id.pop(grant_id, None)
        if grant is None:
            return None
        bucket = self._bucket(grant, create=False)
        bucket.pop(grant_id, None)
        if not bucket:
            if grant.is_pattern:
                del self._patterns[grant.subject]
            else:
                del self._exact[(grant.subject, grant.resource)]
        if len(self._expiries) > 2 * len(self._by_id) + 64:  # too many stale entries
            self._expiries = [
                (g.expires_at, g.id) for g in self._by_id.values() if g.expires_at is not None
            ]
            heapq.heapify(self._expiries)
        return grant

    def _bucket(self, grant: Grant, *, create: bool) -> dict[str, Grant]:
        if grant.is_pattern:
            if create:
                return self._patterns.setdefault(grant.subject, {})
            return self._patterns.get(grant.subject, {})
        key = (grant.subject, grant.resource)
        if create:
            return self._exact.setdefault(key, {})
        return self._exact.get(key, {})

    def candidates(self, user_id: str | None, channel: str) -> Iterator[Grant]:
        """Every held grant that covers (user_id, channel), expired or not: exact grants to the
        user, exact grants to "*", then patterns for the user, then patterns for "*"."""
        if user_id is None:
            return
        subjects = (user_id, ANY_USER) if user_id != ANY_USER else (ANY_USER,)
        for subject in subjects:
            yield from self._exact.get((subject, channel), {}).values()
        for subject in subjects:
            for grant in self._patterns.get(subject, {}).values():
                if resource_matches(grant.resource, channel):
                    yield grant

    def allowed(
        self, user_id: str | None, channel: str, operation: str, now_ms: int
    ) -> Grant | None:
        """A held, unexpired grant letting `user_id` do `operation` on `channel`, or None."""
        for grant in self.candidates(user_id, channel):
            if operation in grant.operations and not grant.expired(now_ms):
                return grant
        return None

    def for_subject(self, subject: str) -> list[Grant]:
        """The grants naming exactly this subject (a user id or "*")."""
        return [g for g in self._by_id.values() if g.subject == subject]

    def next_expiry(self) -> int | None:
        """The earliest `expires_at` among held grants, None when none expires."""
        while self._expiries:
            at, grant_id = self._expiries[0]
            grant = self._by_id.get(grant_id)
            if grant is not None and grant.expires_at == at:
                return at
            heapq.heappop(self._expiries)  # removed or replaced since it was pushed
        return None

    def expired(self, now_ms: int) -> list[Grant]:
        """Remove and return every held grant expired at `now_ms`, earliest first."""
        gone: list[Grant] = []
        while (at := self.next_expiry()) is not None and at <= now_ms:
            _, grant_id = heapq.heappop(self._expiries)
            grant = self.remove(grant_id)
            if grant is not None:
                gone.append(grant)
        return gone
