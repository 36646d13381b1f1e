"""An encrypted one-to-one conversation through a real server: alice seals for bob's device and
her own with their X25519 keys from the directory, signs the ciphertext, and sends it on a
signed channel; the server checks the signature, stores and relays ciphertext only (history,
the SQLite file and the log lines hold no plaintext); bob verifies and opens it, alice opens her
own copy from history, and neither a third user nor a tampered copy opens."""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from parley.protocol import signed
from parley.sdk.sealed import CannotOpen, open_sealed, seal, x25519_public
from parley.sdk.verifier import Verifier
from tests.support.inproc import InProcessApp
from tests.support.keys import get, joined, register
from tests.support.pusher_async import AsyncApi, AsyncClientPool

pytestmark = [
    pytest.mark.integration,
    pytest.mark.app_options(store="sqlite", signed_channels="private-signed-*"),
    pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),
]

CHANNEL = "private-signed-dm-alice-bob"
SECRET_TEXT = "meet at the north gate at noon"


class Device:
    def __init__(self, user: str) -> None:
        self.user = user
        self.signing = Ed25519PrivateKey.generate()
        self.sealing = X25519PrivateKey.generate()
        self.kid = signed.key_id(signed.public_raw(self.signing))


async def test_only_the_two_devices_read_what_the_server_stores_and_relays(
    app: InProcessApp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    api = AsyncApi(app.http_url, app.app.id, app.app.key, app.app.secret)
    pool = AsyncClientPool(app.ws_url)
    try:
        alice, bob, carol = Device("alice"), Device("bob"), Device("carol")
        for device in (alice, bob, carol):
            answer = await register(
                api, app, device.user, device.signing, "phone", x25519=x25519_public(device.sealing)
            )
            assert answer.status == 201, answer.body
        recipients = {
            k["kid"]: k["x25519"]
            for user in ("alice", "bob")
            for k in (await get(api, app, f"/keys/{user}"))["keys"]
        }
        assert set(recipients) == {alice.kid, bob.kid}

        data = seal(
            SECRET_TEXT, alice.sealing, alice.kid, recipients, app_key=app.app.key, channel=CHANNEL
        )
        sig = signed.sign(
            alice.signing, app.app.key, CHANNEL, "client-msg", "alice", data,
            mid=uuid.uuid4().hex, ts=int(time.time() * 1000),
        )  # fmt: skip
        sender, receiver = (
            await joined(pool, app, "alice", CHANNEL),
            await joined(pool, app, "bob", CHANNEL),
        )
        await sender.send(
            {"event": "client-msg", "channel": CHANNEL, "data": data, "parley": {"sig": sig.wire()}}
        )
        frame = await receiver.expect("client-msg", CHANNEL)

        head = await get(api, app, "/keys/head")
        verifier = Verifier(app.app.key, signed.from_b64url(head["public_key"]))
        verifier.extend_wire((await get(api, app, "/keys/log"))["entries"], head)
        assert verifier.verify(frame).status == "verified"
        sender_key = next(e for e in verifier.entries if e.kid == frame["parley"]["sig"]["kid"])
        assert sender_key.x25519 is not None
        opened = open_sealed(
            frame["data"], bob.sealing, bob.kid, sender_key.kid, sender_key.x25519,
            app_key=app.app.key, channel=CHANNEL,
        )  # fmt: skip
        assert opened == SECRET_TEXT

        page = await api.signed("GET", f"/apps/{app.app.id}/channels/{CHANNEL}/history")
        (stored,) = page.json()["events"]
        assert SECRET_TEXT not in page.body.decode()
        own = open_sealed(
            stored["data"], alice.sealing, alice.kid, alice.kid, x25519_public(alice.sealing),
            app_key=app.app.key, channel=CHANNEL,
        )  # fmt: skip
        assert own == SECRET_TEXT
        with pytest.raises(CannotOpen, match="not sealed for"):
            open_sealed(
                stored["data"], carol.sealing, carol.kid, alice.kid, x25519_public(alice.sealing),
                app_key=app.app.key, channel=CHANNEL,
            )  # fmt: skip
        box = json.loads(stored["data"])
        ct = box["to"][bob.kid]["ct"]
        box["to"][bob.kid]["ct"] = ("B" if ct[0] == "A" else "A") + ct[1:]
        tampered = json.dumps(box)
        with pytest.raises(CannotOpen):
            open_sealed(
                tampered, bob.sealing, bob.kid, alice.kid, x25519_public(alice.sealing),
                app_key=app.app.key, channel=CHANNEL,
            )  # fmt: skip
        with pytest.raises(CannotOpen):  # sealed for another channel: the info differs
            open_sealed(
                stored["data"], bob.sealing, bob.kid, alice.kid, x25519_public(alice.sealing),
                app_key=app.app.key, channel="private-signed-elsewhere",
            )  # fmt: skip
    finally:
        await pool.close_all()
        await api.close()
    await app.stop()  # everything written to disk
    on_disk = b"".join(p.read_bytes() for p in (tmp_path).rglob("*") if p.is_file())
    assert json.loads(data)["to"][bob.kid]["ct"].encode() in on_disk  # the ciphertext is there
    assert SECRET_TEXT.encode() not in on_disk
    assert "key directory entry" in caplog.text  # the server's log lines are captured
    assert SECRET_TEXT not in caplog.text
