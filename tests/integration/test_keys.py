"""The key directory and signed channels, end to end in one process over real sockets: device
keys registered, endorsed and revoked over HTTP; the log chained, the head signed, every entry
on the read-only `parley-keys` channel; on a signed channel every forgery refused before
history and fan-out; an entry edited in the SQLite file behind the server's back detected."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from parley.protocol import directory, signed
from tests.support.inproc import InProcessApp, app_settings, serving
from tests.support.keys import (
    SIGNED,
    bearer,
    endorse,
    get,
    joined,
    public_of,
    register,
    signed_event,
)
from tests.support.pusher_async import AsyncApi, AsyncClientPool

pytestmark = [
    pytest.mark.integration,
    pytest.mark.app_options(store="sqlite", signed_channels="private-signed-*"),
    pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),
]


async def test_keys_are_registered_endorsed_revoked_and_the_log_is_chained_and_signed(
    app: InProcessApp, api: AsyncApi
) -> None:
    phone, laptop, stray = (Ed25519PrivateKey.generate() for _ in range(3))
    first = await register(api, app, "alice", phone, "phone")
    assert first.status == 201, first.body
    assert first.json() == {
        "kid": signed.key_id(signed.public_raw(phone)),
        "user_id": "alice",
        "device_id": "phone",
        "seq": 1,
        "unendorsed": False,
    }
    unendorsed = await register(api, app, "alice", laptop, "laptop")
    assert unendorsed.status == 400 and "endorse" in unendorsed.json()["error"]
    forged = endorse(app, stray, "alice", "laptop", laptop)
    refused = await register(api, app, "alice", laptop, "laptop", **forged)
    assert refused.status == 400 and "no current key of 'alice'" in refused.json()["error"]
    second = await register(
        api, app, "alice", laptop, "laptop", **endorse(app, phone, "alice", "laptop", laptop)
    )
    assert (second.status, second.json()["seq"]) == (201, 2)
    again = await register(api, app, "bob", laptop, "stolen")
    assert again.status == 409, again.body
    anonymous = await api.request("POST", f"/apps/{app.app.id}/keys", body=b"{}")
    assert anonymous.status == 401

    laptop_kid = second.json()["kid"]
    theft = await api.request(
        "DELETE", f"/apps/{app.app.id}/keys/{laptop_kid}", headers=bearer(app, "bob")
    )
    assert theft.status == 404
    revoked = await api.request(
        "DELETE", f"/apps/{app.app.id}/keys/{laptop_kid}", headers=bearer(app, "alice")
    )
    assert (revoked.status, revoked.json()["seq"]) == (200, 3)

    current = await get(api, app, "/keys/alice")
    assert [k["device_id"] for k in current["keys"]] == ["phone"]
    entries = [
        directory.KeyEntry.from_wire(e) for e in (await get(api, app, "/keys/log"))["entries"]
    ]
    assert [(e.seq, e.type, e.device_id) for e in entries] == [
        (1, "added", "phone"),
        (2, "added", "laptop"),
        (3, "revoked", "laptop"),
    ]
    assert entries[1].endorsed_by == first.json()["kid"]
    assert directory.chained(entries, None) is None
    head = await get(api, app, "/keys/head")
    assert (head["seq"], head["hash"]) == (3, entries[-1].hash())
    server_key = signed.from_b64url(head["public_key"])
    assert directory.head_valid(
        server_key, app.app.key, directory.Head(3, head["hash"], head["sig"])
    )
    page = await get(api, app, "/keys/log?after=1&limit=1")
    assert [e["seq"] for e in page["entries"]] == [2]
    for bad, named in (("limit=0", "'limit'"), ("after=x", "'after'"), ("limit=1001", "'limit'")):
        refused = await api.request(
            "GET", f"/apps/{app.app.id}/keys/log?{bad}", headers=bearer(app, "reader")
        )
        assert refused.status == 400 and named in refused.json()["error"], refused.body
    junk = await api.request(
        "POST", f"/apps/{app.app.id}/keys", body=b'{"device_id": "d", "ed25519": "not-a-key!"}',
        headers=bearer(app, "alice"),
    )  # fmt: skip
    assert junk.status == 400 and "'ed25519'" in junk.json()["error"]


async def test_an_app_may_allow_unendorsed_keys_and_they_are_marked(tmp_path: Path) -> None:
    settings = app_settings(tmp_path, keys_unendorsed=True, max_keys_per_user=2)
    async with serving(settings) as app:
        api = AsyncApi(app.http_url, app.app.id, app.app.key, app.app.secret)
        try:
            keys = [Ed25519PrivateKey.generate() for _ in range(3)]
            answers = [await register(api, app, "alice", k, f"d{i}") for i, k in enumerate(keys)]
            assert [a.status for a in answers] == [201, 201, 409]
            assert [a.json().get("unendorsed") for a in answers[:2]] == [False, True]
            assert "the limit is 2" in answers[2].json()["error"]
        finally:
            await api.close()


async def test_every_entry_is_on_the_read_only_keys_channel_and_in_its_history(
    app: InProcessApp, api: AsyncApi, clients: AsyncClientPool
) -> None:
    live = await clients.connect()
    await live.subscribe(directory.CHANNEL)
    key = Ed25519PrivateKey.generate()
    assert (await register(api, app, "alice", key, "phone")).status == 201
    frame = await live.expect(directory.EVENT, directory.CHANNEL)
    entry = directory.KeyEntry.from_wire(json.loads(frame["data"]))
    assert (entry.seq, entry.user_id, entry.kid) == (
        1,
        "alice",
        signed.key_id(signed.public_raw(key)),
    )
    assert frame["parley"]["publisher"] == {"type": "server", "app_id": app.app.id}

    late = await clients.connect()
    await late.subscribe(directory.CHANNEL)
    await late.send_event("parley:history", {"channel": directory.CHANNEL, "limit": 100})
    history = await late.expect("parley:history_page", directory.CHANNEL)
    logged = [json.loads(e["data"]) for e in history["data"]["events"]]
    assert logged == [entry.wire()]

    pushed = await api.signed(
        "POST",
        f"/apps/{app.app.id}/events",
        body={"name": directory.EVENT, "channel": directory.CHANNEL, "data": "{}"},
    )
    assert pushed.status == 403 and "key directory" in pushed.json()["error"]


async def test_a_signed_channel_refuses_every_forgery_and_delivers_what_verifies(
    app: InProcessApp, api: AsyncApi, clients: AsyncClientPool
) -> None:
    alice_key, old_key, bob_key, never = (Ed25519PrivateKey.generate() for _ in range(4))
    assert (await register(api, app, "alice", alice_key, "phone")).status == 201
    endorsed = endorse(app, alice_key, "alice", "old", old_key)
    old = await register(api, app, "alice", old_key, "old", **endorsed)
    assert old.status == 201
    assert (await register(api, app, "bob", bob_key, "phone")).status == 201
    assert (
        await api.request(
            "DELETE", f"/apps/{app.app.id}/keys/{old.json()['kid']}", headers=bearer(app, "alice")
        )
    ).status == 200
    alice, carol = await joined(clients, app, "alice"), await joined(clients, app, "carol")

    good = signed_event(app, alice_key, "alice", '{"text":"hi"}', mid="m-1")
    await alice.send(good)
    delivered = await carol.expect("client-msg", SIGNED)
    assert delivered["parley"]["sig"] == good["parley"]["sig"]
    assert delivered["parley"]["publisher"] == {"type": "user", "id": "alice"}

    now = int(time.time() * 1000)
    tampered = signed_event(app, alice_key, "alice", '{"text":"pay 10"}')
    tampered["data"] = '{"text":"pay 1000"}'
    forgeries = {
        "sender-mismatch": signed_event(app, bob_key, "bob", '{"text":"as bob"}'),
        "bad-signature": tampered,
        "replayed": good,
        "revoked-key": signed_event(app, old_key, "alice", '{"text":"old"}'),
        "clock-skew": signed_event(app, alice_key, "alice", "{}", ts=now - 6 * 60 * 1000),
        "unknown-key": signed_event(app, never, "alice", "{}"),
        "missing-signature": {"event": "client-msg", "channel": SIGNED, "data": "{}"},
        "malformed": {
            **good,
            "data": {"text": "an object"},
            "parley": {"sig": {**good["parley"]["sig"], "mid": "m-9"}},
        },
    }
    for reason, forgery in forgeries.items():
        await alice.send(forgery)
        error = await alice.expect_error(None, reason)
        assert error["message"].startswith(reason), error
    await carol.expect_quiet("no forgery reaches a subscriber")
    page = await api.signed("GET", f"/apps/{app.app.id}/channels/{SIGNED}/history")
    assert [e["data"] for e in page.json()["events"]] == ['{"text":"hi"}']


async def test_other_channels_pass_a_signature_through_unchecked(
    app: InProcessApp, clients: AsyncClientPool
) -> None:
    channel = "private-room"
    alice, carol = (
        await joined(clients, app, "alice", channel),
        await joined(clients, app, "carol", channel),
    )
    unregistered = signed_event(app, Ed25519PrivateKey.generate(), "alice", "{}", channel=channel)
    await alice.send(unregistered)
    await alice.send({"event": "client-msg", "channel": channel, "data": "plain"})
    first = await carol.expect("client-msg", channel)
    assert first["parley"]["sig"] == unregistered["parley"]["sig"]
    second = await carol.expect("client-msg", channel)
    assert second["data"] == "plain" and "sig" not in second["parley"]
    await alice.send({**unregistered, "parley": {"sig": {"kid": "x"}}})
    assert (await alice.expect_error(None, "malformed"))["message"].startswith(
        "malformed: parley.sig.kid"
    )


async def test_an_entry_edited_in_the_store_is_detected_by_a_client_that_kept_the_head(
    app: InProcessApp, api: AsyncApi
) -> None:
    for user in ("alice", "bob"):
        assert (await register(api, app, user, Ed25519PrivateKey.generate(), "phone")).status == 201
    kept = await get(api, app, "/keys/head")  # what a client verified and remembers
    before = [
        directory.KeyEntry.from_wire(e) for e in (await get(api, app, "/keys/log"))["entries"]
    ]
    assert before[-1].hash() == kept["hash"]

    # Someone with the database swaps bob's key for their own, behind the server's back.
    mallory = public_of(Ed25519PrivateKey.generate())
    with sqlite3.connect(app.settings.data_dir / "parley.db") as db:
        (text,) = db.execute(
            "SELECT entry FROM parley_key_log WHERE app_id = ? AND seq = 2", (app.app.id,)
        ).fetchone()
        swapped = {**json.loads(text), "ed25519": mallory}
        db.execute(
            "UPDATE parley_key_log SET entry = ? WHERE app_id = ? AND seq = 2",
            (json.dumps(swapped), app.app.id),
        )
    served = (await get(api, app, "/keys/log"))["entries"]
    assert served[1]["ed25519"] == mallory  # served as stored...
    with pytest.raises(ValueError, match="kid is not the key id of ed25519"):
        directory.KeyEntry.from_wire(served[1])  # ...and a client refuses it
    relabelled = directory.KeyEntry.from_wire(served[1], checked=False)
    assert relabelled.hash() != kept["hash"]  # nor does it lead to the head the client knew
