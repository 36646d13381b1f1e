"""Grant matching and the in-memory GrantIndex: patterns, subjects, operations, expiry."""

from __future__ import annotations

import pytest

from parley.auth.grants import (
    Grant,
    GrantIndex,
    allowed,
    check_operations,
    check_resource,
    check_subject,
    check_ttl,
    expiry,
    resource_matches,
    subject_matches,
)

NOW = 1_800_000_000_000


def grant(
    id: str,
    subject: str = "ann",
    resource: str = "room",
    operations: tuple[str, ...] = ("read",),
    expires_at: int | None = None,
) -> Grant:
    return Grant(id, "app", subject, resource, operations, NOW - 1000, expires_at)


# -- matching ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "channel", "expected"),
    [
        ("room", "room", True),
        ("room", "room2", False),
        ("room", "Room", False),
        ("private-team-*", "private-team-a", True),
        ("private-team-*", "private-team-", True),  # `*` matches nothing too
        ("private-team-*", "private-team-a-b.c", True),
        ("private-team-*", "private-teams", False),
        ("private-team-*", "presence-team-a", False),
        ("*", "anything", True),
        ("*-log", "audit-log", True),
        ("*-log", "audit-log2", False),
        ("a*b*c", "abc", True),
        ("a*b*c", "a-x-b-y-c", True),
        ("a*b*c", "a-x-c-b", False),
        ("a.b", "aXb", False),  # `.` is a character, not a regex
        ("a;b*", "a;b;c", True),
        ("#server-to-user-*", "#server-to-user-ann", True),
        ("room?", "room1", False),  # only `*` is special
        ("room?", "room?", True),
        ("room[1]", "room1", False),
    ],
)
def test_resource_matches(resource: str, channel: str, expected: bool) -> None:
    assert resource_matches(resource, channel) is expected


def test_subject_matches() -> None:
    assert subject_matches("ann", "ann")
    assert not subject_matches("ann", "bob")
    assert not subject_matches("ann", "Ann")
    assert subject_matches("*", "bob")
    assert not subject_matches("*", None)  # "*" is any identified user, not anyone
    assert not subject_matches("ann", None)


def test_allowed_takes_the_first_unexpired_grant_that_allows() -> None:
    expired = grant("g0", operations=("read", "write"), expires_at=NOW)
    reader = grant("g1")
    writer = grant("g2", subject="*", resource="ro*", operations=("write",))
    grants = [expired, reader, writer]
    assert allowed(grants, "ann", "room", "read", NOW) is reader
    assert allowed(grants, "ann", "room", "read", NOW - 1) is expired  # before its expiry
    assert allowed(grants, "ann", "room", "write", NOW) is writer
    assert allowed(grants, "bob", "room", "write", NOW) is writer
    assert allowed(grants, "bob", "room", "read", NOW) is None
    assert allowed(grants, None, "room", "write", NOW) is None
    assert allowed(grants, "ann", "room", "presence", NOW) is None
    assert allowed(grants, "ann", "room", "manage", NOW) is None
    assert allowed([], "ann", "room", "read", NOW) is None


def test_manage_implies_nothing_else() -> None:
    admin = grant("g", operations=("manage",))
    for operation in ("read", "write", "presence"):
        assert allowed([admin], "ann", "room", operation, NOW) is None
    assert allowed([admin], "ann", "room", "manage", NOW) is admin


def test_grant_helpers() -> None:
    g = grant("g", resource="team-*", expires_at=NOW)
    assert g.is_pattern and not grant("h").is_pattern
    assert g.expired(NOW) and not g.expired(NOW - 1)
    assert not grant("h").expired(2**62)
    assert g.covers("ann", "team-a") and not g.covers("bob", "team-a")
    assert g.covers("ann", "team-a") and not g.allows("ann", "team-a", "read", NOW)


# -- validation --------------------------------------------------------------------------------


def test_validation() -> None:
    assert check_subject("*") == "*" and check_subject("a@b.c") == "a@b.c"
    for bad in ("", "a b", "a*", "x" * 129, None):
        with pytest.raises(ValueError, match="subject"):
            check_subject(bad)
    assert check_resource("private-*") == "private-*"
    for bad_resource in ("", "a b", "a/b", "x" * 201, 5):
        with pytest.raises(ValueError, match="resource"):
            check_resource(bad_resource)
    assert check_operations(["write", "read", "write"]) == ("read", "write")
    assert check_operations(iter(["presence"])) == ("presence",)
    for ops in ([], ["read", "delete"], "read"):
        with pytest.raises(ValueError, match="operations"):
            check_operations(ops)
    assert check_ttl(None) is None and check_ttl(5) == 5.0
    for ttl in (0, -1, True, "5", float("nan"), float("inf")):
        with pytest.raises(ValueError, match="ttl_s"):
            check_ttl(ttl)
    assert expiry(NOW, None) is None
    assert expiry(NOW, 1.5) == NOW + 1500
    assert expiry(NOW, 1e-9) == NOW + 1


# -- GrantIndex --------------------------------------------------------------------------------


def test_index_answers_like_allowed() -> None:
    grants = [
        grant("exact-ann"),
        grant("exact-any", subject="*", resource="lobby", operations=("read", "write")),
        grant("pattern-ann", resource="team-*", operations=("presence",)),
        grant("pattern-any", subject="*", resource="news-*"),
        grant("pattern-bob", subject="bob", resource="*", operations=("manage",)),
        grant("old", resource="attic", expires_at=NOW),
    ]
    index = GrantIndex(grants)
    cases = [
        (user, channel, op)
        for user in ("ann", "bob", "carol", None)
        for channel in ("room", "lobby", "team-x", "news-1", "attic", "other")
        for op in ("read", "write", "presence", "manage")
    ]
    for user, channel, op in cases:
        expected = allowed(grants, user, channel, op, NOW)
        found = index.allowed(user, channel, op, NOW)
        assert (found is None) == (expected is None), (user, channel, op)
        if found is not None:
            assert found.allows(user, channel, op, NOW)
    assert index.allowed("ann", "attic", "read", NOW - 1) is grants[-1]


def test_index_add_remove_replace() -> None:
    index = GrantIndex()
    assert len(index) == 0 and index.allowed("ann", "room", "read", NOW) is None
    g = grant("g")
    index.add(g)
    assert "g" in index and index.get("g") is g and len(index) == 1
    assert index.allowed("ann", "room", "read", NOW) is g
    replaced = grant("g", resource="hall")  # same id: replaces
    index.add(replaced)
    assert len(index) == 1 and list(index) == [replaced]
    assert index.allowed("ann", "room", "read", NOW) is None
    assert index.allowed("ann", "hall", "read", NOW) is replaced
    assert index.remove("g") is replaced
    assert index.remove("g") is None
    assert "g" not in index and index.allowed("ann", "hall", "read", NOW) is None
    pattern = grant("p", subject="*", resource="x-*")
    index.add(pattern)
    assert index.for_subject("*") == [pattern] and index.for_subject("ann") == []
    assert list(index.candidates("ann", "x-1")) == [pattern]
    assert list(index.candidates(None, "x-1")) == []
    index.remove("p")
    assert len(index) == 0


def test_index_grants_lists_unexpired() -> None:
    live, old = grant("live"), grant("old", expires_at=NOW)
    index = GrantIndex([live, old])
    assert index.grants() == [live, old]
    assert index.grants(NOW) == [live]
    assert index.grants(NOW - 1) == [live, old]


def test_index_expiry() -> None:
    index = GrantIndex()
    assert index.next_expiry() is None and index.expired(NOW) == []
    forever = grant("forever")
    late = grant("late", expires_at=NOW + 300)
    soon = grant("soon", expires_at=NOW + 100)
    sooner = grant("sooner", expires_at=NOW + 50)
    for g in (forever, late, soon, sooner):
        index.add(g)
    assert index.next_expiry() == NOW + 50
    index.remove("sooner")
    assert index.next_expiry() == NOW + 100
    index.add(grant("soon", expires_at=NOW + 200))  # replaced with a later expiry
    assert index.next_expiry() == NOW + 200
    assert index.expired(NOW + 199) == []
    assert [g.id for g in index.expired(NOW + 300)] == ["soon", "late"]
    assert index.next_expiry() is None
    assert list(index) == [forever]
    assert index.allowed("ann", "room", "read", NOW + 10**9) is forever


def test_index_stays_small_after_many_replacements() -> None:
    index = GrantIndex()
    for i in range(1000):
        index.add(grant("g", expires_at=NOW + i))
    assert len(index) == 1
    assert len(index._expiries) < 200
    assert index.next_expiry() == NOW + 999
    assert [g.id for g in index.expired(NOW + 999)] == ["g"]
