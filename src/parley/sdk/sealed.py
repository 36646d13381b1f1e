"""End-to-end encrypted messages between devices (`parley-box-v1`), sealed on the sender's
device for each recipient device with the X25519 keys of the key directory; the server relays
and stores ciphertext it cannot read. Sealed `data` is then signed like any event
(`protocol.signed`), so the recipient knows who sealed it.

For each recipient device (its `kid` in the directory) the sender derives a fresh key and
nonce: HKDF-SHA256 over the X25519 shared secret of its device key and the recipient's, with a
random 32-byte salt and an `info` binding the app, channel, sender and recipient; then
ChaCha20-Poly1305. A fresh key per message and recipient means a random nonce can never repeat
under one key. The sender seals for its own devices too, to read its history.

`data` of a sealed event: `{"v":"parley-box-v1","to":{"<kid>":{"salt":"…","ct":"…"},…}}`
(base64url). docs/protocol.md, "Encrypted conversations", has the lines of `info`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from parley.protocol.signed import b64url, from_b64url

VERSION: Final = "parley-box-v1"


class CannotOpen(Exception):
    """Not sealed for this device, or not as sealed: tampered, or another sender's."""


def x25519_public(key: X25519PrivateKey) -> str:
    """A device's X25519 public key, base64url, as registered in the directory."""
    return b64url(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def _key_and_nonce(
    mine: X25519PrivateKey,
    theirs: str,
    salt: bytes,
    app_key: str,
    channel: str,
    sender_kid: str,
    recipient_kid: str,
) -> tuple[bytes, bytes]:
    shared = mine.exchange(X25519PublicKey.from_public_bytes(from_b64url(theirs)))
    info = f"{VERSION}\n{app_key}\n{channel}\n{sender_kid}\n{recipient_kid}".encode()
    out = HKDF(algorithm=hashes.SHA256(), length=44, salt=salt, info=info).derive(shared)
    return out[:32], out[32:]


def seal(
    plaintext: str,
    mine: X25519PrivateKey,
    sender_kid: str,
    recipients: Mapping[str, str],
    *,
    app_key: str,
    channel: str,
) -> str:
    """`data` for an event on `channel`: `plaintext` sealed for each recipient device
    (`recipients`: kid -> X25519 public key, base64url, from the directory)."""
    to: dict[str, dict[str, str]] = {}
    for kid, public in recipients.items():
        salt = os.urandom(32)
        key, nonce = _key_and_nonce(mine, public, salt, app_key, channel, sender_kid, kid)
        ct = ChaCha20Poly1305(key).encrypt(nonce, plaintext.encode(), None)
        to[kid] = {"salt": b64url(salt), "ct": b64url(ct)}
    return orjson.dumps({"v": VERSION, "to": to}).decode()


def open_sealed(
    data: str,
    mine: X25519PrivateKey,
    my_kid: str,
    sender_kid: str,
    sender_public: str,
    *,
    app_key: str,
    channel: str,
) -> str:
    """The plaintext of sealed `data` for this device (`my_kid`), sealed by the device
    `sender_kid` whose X25519 public key the directory gives as `sender_public`."""
    try:
        box = orjson.loads(data)
        sealed = box["to"][my_kid] if box.get("v") == VERSION else None
        if sealed is None:
            raise CannotOpen(f"not {VERSION}")
        salt, ct = from_b64url(sealed["salt"]), from_b64url(sealed["ct"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CannotOpen(f"not sealed for {my_kid}") from exc
    key, nonce = _key_and_nonce(mine, sender_public, salt, app_key, channel, sender_kid, my_kid)
    try:
        return ChaCha20Poly1305(key).decrypt(nonce, ct, None).decode()
    except InvalidTag:
        raise CannotOpen("the ciphertext does not open: tampered, or another sender's") from None
