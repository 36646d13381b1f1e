"""parley.sdk.verifier against a real server: a late joiner builds the directory from the
`parley-keys` channel's history and verifies what was said before it came; a new key reaches a
live subscriber and verifies at once; a revoked key's later signatures are `revoked-key` while
its earlier ones stay verified; every forgery on an unchecked channel gets its reason; an
edited directory and a key added behind a user's back are caught."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from parley.protocol import directory, signed
from parley.sdk.verifier import DirectoryRewritten, Verdict, Verifier
from tests.support.inproc import InProcessApp, app_settings, serving
from tests.support.keys import (
    bearer,
    endorse,
    get,
    joined,
    register,
    signed_event,
)
from tests.support.pusher_async import AsyncApi, AsyncClient, AsyncClientPool

pytestmark = [
    pytest.mark.integration,
    pytest.mark.app_options(store="sqlite"),
    pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),
]

ROOM = "private-room"  # not a signed channel: the server passes signatures through


async def verifier_from_channel(
    app: InProcessApp, api: AsyncApi, client: AsyncClient, **options: Any
) -> Verifier:
    """A client's verifier: the server key pinned, the log read from parley-keys' history."""
    head = await get(api, app, "/keys/head")
    verifier = Verifier(app.app.key, signed.from_b64url(head["public_key"]), **options)
    await client.subscribe(directory.CHANNEL)
    await client.send_event("parley:history", {"channel": directory.CHANNEL, "limit": 100})
    page = await client.expect("parley:history_page", directory.CHANNEL)
    verifier.extend_wire([json.loads(e["data"]) for e in page["data"]["events"]], head)
    return verifier


async def said(sender: AsyncClient, listener: AsyncClient, event: dict[str, Any]) -> dict[str, Any]:
    await sender.send(event)
    frame: dict[str, Any] = await listener.expect("client-msg", event["channel"])
    return frame


def verdict(status: str, reason: str | None = None, user: str | None = "alice") -> Any:
    class Matches:
        def __eq__(self, other: object) -> bool:
            return isinstance(other, Verdict) and (other.status, other.reason, other.user_id) == (
                status,
                reason,
                user,
            )

        def __repr__(self) -> str:
            return f"Verdict({status}, {reason}, {user})"

    return Matches()


async def test_a_late_joiner_verifies_earlier_messages_then_follows_rotation_and_revocation(
    app: InProcessApp, api: AsyncApi, clients: AsyncClientPool
) -> None:
    phone, laptop = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    assert (await register(api, app, "alice", phone, "phone")).status == 201
    alice, bob = await joined(clients, app, "alice", ROOM), await joined(clients, app, "bob", ROOM)
    before = await said(
        alice, bob, signed_event(app, phone, "alice", '{"t":"early"}', channel=ROOM)
    )

    carol_conn = await joined(clients, app, "carol", ROOM)
    carol = await verifier_from_channel(app, api, carol_conn)
    assert carol.verify(before) == verdict("verified")

    endorsed = endorse(app, phone, "alice", "laptop", laptop)
    assert (await register(api, app, "alice", laptop, "laptop", **endorsed)).status == 201
    live = await carol_conn.expect(directory.EVENT, directory.CHANNEL)
    carol.extend([directory.KeyEntry.from_wire(json.loads(live["data"]))])
    rotated = await said(
        alice, carol_conn, signed_event(app, laptop, "alice", '{"t":"new"}', channel=ROOM)
    )
    assert carol.verify(rotated) == verdict("verified")

    kid = signed.key_id(signed.public_raw(phone))
    revoked = await api.request(
        "DELETE", f"/apps/{app.app.id}/keys/{kid}", headers=bearer(app, "alice")
    )
    assert revoked.status == 200
    live = await carol_conn.expect(directory.EVENT, directory.CHANNEL)
    carol.extend([directory.KeyEntry.from_wire(json.loads(live["data"]))])
    ts = int(time.time() * 1000) + 1  # after the revocation
    late = await said(
        alice, carol_conn, signed_event(app, phone, "alice", '{"t":"late"}', channel=ROOM, ts=ts)
    )
    assert carol.verify(late) == verdict("unverified", "revoked-key")
    fresh = await verifier_from_channel(app, api, await joined(clients, app, "dave", ROOM))
    assert fresh.verify(before) == verdict("verified")  # signed before the revocation


async def test_each_forgery_on_an_unchecked_channel_gets_its_reason(
    app: InProcessApp, api: AsyncApi, clients: AsyncClientPool
) -> None:
    alice_key, bob_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    assert (await register(api, app, "alice", alice_key, "phone")).status == 201
    assert (await register(api, app, "bob", bob_key, "phone")).status == 201
    alice, carol_conn = (
        await joined(clients, app, "alice", ROOM),
        await joined(clients, app, "carol", ROOM),
    )
    carol = await verifier_from_channel(app, api, carol_conn)

    good = await said(
        alice, carol_conn, signed_event(app, alice_key, "alice", '{"t":1}', channel=ROOM)
    )
    assert carol.verify(good) == verdict("verified")
    assert carol.verify(good) == verdict("unverified", "replayed")
    assert carol.verify({**good, "data": '{"t":2}'}) == verdict("unverified", "bad-signature")
    as_bob = await said(alice, carol_conn, signed_event(app, bob_key, "bob", "{}", channel=ROOM))
    assert carol.verify(as_bob) == verdict("unverified", "sender-mismatch")
    stranger = signed_event(app, Ed25519PrivateKey.generate(), "alice", "{}", channel=ROOM)
    assert carol.verify(await said(alice, carol_conn, stranger)) == verdict(
        "unverified", "unknown-key"
    )
    stale = signed_event(
        app, alice_key, "alice", "{}", channel=ROOM, ts=int(time.time() * 1000) - 600_000
    )
    assert carol.verify(await said(alice, carol_conn, stale)) == verdict("unverified", "clock-skew")
    plain = await said(alice, carol_conn, {"event": "client-msg", "channel": ROOM, "data": "hi"})
    assert carol.verify(plain) == verdict("server-verified")

    # A sender that was shown another directory names a head we do not have at that seq.
    forked = signed.sign(
        alice_key, app.app.key, ROOM, "client-msg", "alice", "{}",
        mid="forked-1", ts=int(time.time() * 1000), head="1:" + "f" * 64,
    )  # fmt: skip
    event = {"event": "client-msg", "channel": ROOM, "data": "{}", "parley": {"sig": forked.wire()}}
    assert carol.verify(await said(alice, carol_conn, event)) == verdict(
        "unverified", "fork-suspected"
    )
    honest = signed.sign(
        alice_key, app.app.key, ROOM, "client-msg", "alice", "{}",
        mid="honest-1", ts=int(time.time() * 1000), head=carol.named_head(),
    )  # fmt: skip
    event = {"event": "client-msg", "channel": ROOM, "data": "{}", "parley": {"sig": honest.wire()}}
    assert carol.verify(await said(alice, carol_conn, event)) == verdict("verified")


async def test_a_directory_edited_in_the_store_is_refused_by_the_verifier(
    app: InProcessApp, api: AsyncApi
) -> None:
    for user in ("alice", "bob"):
        assert (await register(api, app, user, Ed25519PrivateKey.generate(), "phone")).status == 201
    head = await get(api, app, "/keys/head")
    verifier = Verifier(app.app.key, signed.from_b64url(head["public_key"]))
    verifier.extend_wire((await get(api, app, "/keys/log"))["entries"], head)

    # Someone with the database swaps bob's key for theirs, kid and all.
    raw = signed.public_raw(Ed25519PrivateKey.generate())
    mallory = {"ed25519": signed.b64url(raw), "kid": signed.key_id(raw)}
    with sqlite3.connect(app.settings.data_dir / "parley.db") as db:
        (text,) = db.execute(
            "SELECT entry FROM parley_key_log WHERE app_id = ? AND seq = 2", (app.app.id,)
        ).fetchone()
        db.execute(
            "UPDATE parley_key_log SET entry = ? WHERE app_id = ? AND seq = 2",
            (json.dumps({**json.loads(text), **mallory}), app.app.id),
        )
    entries = (await get(api, app, "/keys/log"))["entries"]
    half = [entries[0], {**entries[1], "kid": json.loads(text)["kid"]}]  # the key alone
    with pytest.raises(DirectoryRewritten, match="kid is not the key id of ed25519"):
        Verifier(app.app.key, signed.from_b64url(head["public_key"])).extend_wire(half)
    with pytest.raises(DirectoryRewritten, match="entry 2 differs"):
        verifier.extend_wire(entries)
    newcomer = Verifier(app.app.key, signed.from_b64url(head["public_key"]))
    with pytest.raises(DirectoryRewritten, match="hash is not that of entry 2"):
        newcomer.extend_wire(entries, await get(api, app, "/keys/head"))
    forged_head = {**head, "sig": signed.b64url(Ed25519PrivateKey.generate().sign(b"x"))}
    with pytest.raises(DirectoryRewritten, match="not signed"):
        Verifier(app.app.key, signed.from_b64url(head["public_key"])).extend_wire([], forged_head)


async def test_a_key_added_for_a_user_behind_their_back_raises_an_alert(tmp_path: Path) -> None:
    async with serving(app_settings(tmp_path, keys_unendorsed=True)) as app:
        api = AsyncApi(app.http_url, app.app.id, app.app.key, app.app.secret)
        try:
            mine = Ed25519PrivateKey.generate()
            assert (await register(api, app, "alice", mine, "phone")).status == 201
            head = await get(api, app, "/keys/head")
            alerts: list[directory.KeyEntry] = []
            alice = Verifier(
                app.app.key,
                signed.from_b64url(head["public_key"]),
                own_user_id="alice",
                own_kids={signed.key_id(signed.public_raw(mine))},
                on_alert=alerts.append,
            )
            alice.extend_wire((await get(api, app, "/keys/log"))["entries"], head)
            assert alerts == []
            # Someone holding a token for alice (the operator can mint one) adds a key.
            planted = Ed25519PrivateKey.generate()
            assert (await register(api, app, "alice", planted, "evil")).status == 201
            alice.extend_wire((await get(api, app, "/keys/log?after=1"))["entries"])
            assert [(e.device_id, e.unendorsed) for e in alerts] == [("evil", True)]
        finally:
            await api.close()
