"""Server-generated device keys (`server_generated_keys`, off by default): the server makes a
device's Ed25519 and X25519 pairs, registers the public halves as POST /keys would (cap,
endorsement rules, `parley-keys`), and hands the private halves over once, with
`Cache-Control: no-store`. They sign what a signed channel accepts and a verifier reports
`verified`, and neither the SQLite file nor a log line holds them."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from parley.core.keys import GeneratedKeys
from parley.protocol import directory, signed
from parley.sdk.sealed import x25519_public
from parley.sdk.verifier import Verifier
from parley.settings import load_settings, unknown_variables
from tests.support.inproc import InProcessApp
from tests.support.keys import (
    SIGNED,
    bearer,
    endorse,
    get,
    joined,
    register,
    signed_event,
)
from tests.support.pusher_async import ApiResponse, AsyncApi, AsyncClientPool

pytestmark = [
    pytest.mark.integration,
    pytest.mark.app_options(
        store="sqlite", signed_channels="private-signed-*", server_generated_keys=True
    ),
    pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),
]


async def generate(
    api: AsyncApi, app: InProcessApp, user: str, body: Any, *, raw: bytes | None = None
) -> ApiResponse:
    return await api.request(
        "POST",
        f"/apps/{app.app.id}/keys/generate",
        body=raw if raw is not None else json.dumps(body).encode(),
        headers=bearer(app, user),
    )


@pytest.mark.app_options(store="sqlite", signed_channels="private-signed-*")
async def test_off_by_default_a_403_naming_the_setting(app: InProcessApp, api: AsyncApi) -> None:
    assert app.app.server_generated_keys is False
    for body in ({"device_id": "kiosk"}, {}):  # refused before the body is looked at
        refused = await generate(api, app, "alice", body)
        assert refused.status == 403, refused.body
        assert "server_generated_keys" in refused.json()["error"]
        assert refused.json()["status"] == 403
    assert (await get(api, app, "/keys/log"))["entries"] == []


async def test_a_generated_pair_is_handed_over_once_and_signs_what_the_server_accepts(
    app: InProcessApp,
    api: AsyncApi,
    clients: AsyncClientPool,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    live = await clients.connect()
    await live.subscribe(directory.CHANNEL)

    made = await generate(api, app, "alice", {"device_id": "kiosk"})
    assert made.status == 201, made.body
    assert made.headers["cache-control"] == "no-store"
    answer = made.json()
    assert set(answer) == {
        "kid", "user_id", "device_id", "seq", "unendorsed",
        "ed25519", "x25519", "ed25519_private", "x25519_private",
    }  # fmt: skip
    assert (answer["user_id"], answer["device_id"], answer["seq"], answer["unendorsed"]) == (
        "alice",
        "kiosk",
        1,
        False,
    )
    ed_seed = signed.from_b64url(answer["ed25519_private"])
    x_seed = signed.from_b64url(answer["x25519_private"])
    assert len(ed_seed) == len(x_seed) == 32
    key = Ed25519PrivateKey.from_private_bytes(ed_seed)
    sealing = X25519PrivateKey.from_private_bytes(x_seed)
    kid = signed.key_id(signed.public_raw(key))
    assert answer["kid"] == kid
    assert answer["ed25519"] == signed.b64url(signed.public_raw(key))
    assert answer["x25519"] == x25519_public(sealing)

    # The directory entry, over HTTP and on parley-keys, is what POST /keys would have made.
    (current,) = (await get(api, app, "/keys/alice"))["keys"]
    assert (current["kid"], current["x25519"]) == (kid, x25519_public(sealing))
    assert current["endorsed_by"] is None and current["unendorsed"] is False
    frame = await live.expect(directory.EVENT, directory.CHANNEL)
    assert json.loads(frame["data"]) == current
    assert "private" not in frame["data"]

    # The handed-over key signs a message the signed channel accepts...
    alice, carol = await joined(clients, app, "alice"), await joined(clients, app, "carol")
    sent = signed_event(app, key, "alice", '{"text":"from the kiosk"}')
    await alice.send(sent)
    delivered = await carol.expect("client-msg", SIGNED)
    assert delivered["parley"]["sig"]["kid"] == kid
    # ...and a verifier reading the directory finds it the current key of alice.
    head = await get(api, app, "/keys/head")
    verifier = Verifier(
        app.app.key, signed.from_b64url(head["public_key"]), own_user_id="alice", own_kids=[kid]
    )
    verifier.extend_wire((await get(api, app, "/keys/log"))["entries"], head)
    verdict = verifier.verify(delivered)
    assert (verdict.status, verdict.user_id, verdict.kid) == ("verified", "alice", kid)
    assert verifier.alerts == []

    # The server kept no copy: not in its files, not in a log line.
    await app.stop()  # everything written to disk
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "parley.db" for p in files)
    on_disk = b"".join(p.read_bytes() for p in files)
    assert answer["ed25519"].encode() in on_disk  # the public key is there
    for seed, text in ((ed_seed, answer["ed25519_private"]), (x_seed, answer["x25519_private"])):
        for form in (seed, text.encode(), seed.hex().encode()):
            assert form not in on_disk
        for form_text in (text, seed.hex()):
            assert form_text not in caplog.text
    assert "key directory entry" in caplog.text  # the server's log lines are captured


async def test_a_second_device_follows_the_endorsement_rules(
    app: InProcessApp, api: AsyncApi
) -> None:
    first = await generate(api, app, "alice", {"device_id": "kiosk"})
    assert first.status == 201, first.body
    # An endorsement would sign the new key, which does not exist before the request: a user
    # who holds keys gets no server-generated one unless the app accepts unendorsed keys.
    second = await generate(api, app, "alice", {"device_id": "kiosk-2"})
    assert second.status == 400, second.body
    assert "keys_unendorsed" in second.json()["error"]
    # The generated key endorses a key made on a device, as any key of alice's does.
    kiosk = Ed25519PrivateKey.from_private_bytes(
        signed.from_b64url(first.json()["ed25519_private"])
    )
    laptop = Ed25519PrivateKey.generate()
    unendorsed = await register(api, app, "alice", laptop, "laptop")
    assert unendorsed.status == 400 and "endorse" in unendorsed.json()["error"]
    endorsed = await register(
        api, app, "alice", laptop, "laptop", **endorse(app, kiosk, "alice", "laptop", laptop)
    )
    assert endorsed.status == 201, endorsed.body
    assert endorsed.json()["seq"] == 2
    # Another user's first key needs no endorsement.
    bob = await generate(api, app, "bob", {"device_id": "kiosk"})
    assert (bob.status, bob.json()["seq"]) == (201, 3)
    entries = (await get(api, app, "/keys/log"))["entries"]
    assert [(e["user_id"], e["device_id"]) for e in entries] == [
        ("alice", "kiosk"),
        ("alice", "laptop"),
        ("bob", "kiosk"),
    ]
    assert entries[1]["endorsed_by"] == first.json()["kid"]


@pytest.mark.app_options(
    store="sqlite", server_generated_keys=True, keys_unendorsed=True, max_keys_per_user=2
)
async def test_where_unendorsed_keys_are_allowed_they_are_marked_and_capped(
    app: InProcessApp, api: AsyncApi
) -> None:
    answers = [await generate(api, app, "alice", {"device_id": f"d{i}"}) for i in range(3)]
    assert [a.status for a in answers] == [201, 201, 409]
    assert [a.json()["unendorsed"] for a in answers[:2]] == [False, True]
    assert "the limit is 2" in answers[2].json()["error"]
    assert "ed25519_private" not in answers[2].json()
    assert len((await get(api, app, "/keys/alice"))["keys"]) == 2


async def test_bad_requests_are_refused_with_a_reason_and_add_nothing(
    app: InProcessApp, api: AsyncApi
) -> None:
    bad: list[tuple[bytes, str]] = [
        (b"{not json", "Request body is"),
        (b"[]", "JSON object"),
        (b"{}", "'device_id'"),
        (b'{"device_id": 7}', "'device_id'"),
        (b'{"device_id": "has space"}', "'device_id'"),
        (b'{"device_id": ""}', "'device_id'"),
        (json.dumps({"device_id": "d" * 65}).encode(), "'device_id'"),
        (
            b'{"device_id": "d", "ed25519": "A6EHv_POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg"}',
            "ed25519",
        ),
        (b'{"device_id": "d", "endorsed_by": "k", "endorsement": "s"}', "endorsement"),
        (b'{"device_id": "d", "endorsed_by": "k"}', "endorse"),
    ]
    for raw, named in bad:
        refused = await generate(api, app, "alice", None, raw=raw)
        assert refused.status == 400, (raw, refused.body)
        assert named in refused.json()["error"], (raw, refused.body)
        assert "cache-control" not in refused.headers
    anonymous = await api.request(
        "POST", f"/apps/{app.app.id}/keys/generate", body=b'{"device_id": "d"}'
    )
    assert anonymous.status == 401 and "Bearer" in anonymous.json()["error"]
    assert (await get(api, app, "/keys/log"))["entries"] == []


async def test_the_route_leaves_the_user_and_kid_routes_alone(
    app: InProcessApp, api: AsyncApi
) -> None:
    # A user named "generate" is still read, and revoking a kid "generate" is still a 404.
    assert (await get(api, app, "/keys/generate")) == {"user_id": "generate", "keys": []}
    gone = await api.request(
        "DELETE", f"/apps/{app.app.id}/keys/generate", headers=bearer(app, "alice")
    )
    assert gone.status == 404
    made = await generate(api, app, "generate", {"device_id": "kiosk"})
    assert made.status == 201, made.body
    (key,) = (await get(api, app, "/keys/generate"))["keys"]
    assert key["kid"] == made.json()["kid"]
    revoked = await api.request(
        "DELETE", f"/apps/{app.app.id}/keys/{key['kid']}", headers=bearer(app, "generate")
    )
    assert revoked.status == 200
    wrong = await api.request(
        "PUT", f"/apps/{app.app.id}/keys/generate", headers=bearer(app, "alice")
    )
    assert wrong.status == 405


def test_the_setting_comes_from_the_file_and_the_environment(tmp_path: Path) -> None:
    env = {"PARLEY_DATA_DIR": str(tmp_path), "PARLEY_APP_ID": "7"}
    env |= {"PARLEY_APP_KEY": "k", "PARLEY_APP_SECRET": "s"}
    assert load_settings(env=env).apps[0].server_generated_keys is False
    on = {**env, "PARLEY_APP_SERVER_GENERATED_KEYS": "true"}
    assert load_settings(env=on).apps[0].server_generated_keys is True
    assert unknown_variables(on) == []
    config = tmp_path / "parley.toml"
    config.write_text('[[apps]]\nid = "1"\nkey = "a"\nsecret = "x"\nserver_generated_keys = true\n')
    assert load_settings(env={}, config_file=config).apps[0].server_generated_keys is True


def test_generated_keys_do_not_show_their_seeds_in_a_repr() -> None:
    entry = directory.next_entry(
        None,
        type="added",
        user_id="alice",
        device_id="kiosk",
        kid=signed.key_id(b"\x01" * 32),
        ed25519=signed.b64url(b"\x01" * 32),
        x25519=None,
        ts=0,
    )
    made = GeneratedKeys(entry, "SEED-ED25519", "SEED-X25519")
    assert "SEED" not in repr(made) and "SEED" not in str(made)
