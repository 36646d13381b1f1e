"""Signed messages: the bytes a sender signs, and how a signature is named and checked.

The wire is fixed in docs/protocol.md ("Signed messages"); the server (on signed channels) and
every SDK build the same canonical bytes from the same ten fields, so a signature made by one
verifies in all. Keys are Ed25519 (the `cryptography` library); a key's id is derived from its
public key, so it cannot be chosen. Pure functions: no store, no clock of its own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

VERSION: Final = "parley-sig-v1"
MID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
KID_RE: Final = re.compile(r"[A-Za-z0-9_-]{22}")
HEAD_RE: Final = re.compile(r"0:|[1-9][0-9]{0,18}:[0-9a-f]{64}")
NO_HEAD: Final = "0:"  # the head a sender names before it has read the directory
MAX_TS: Final = 2**53 - 1  # what JavaScript's numbers hold exactly

# What a recipient (an SDK) reports for an event; the server refuses with the same reasons.
VERIFIED: Final = "verified"
SERVER_VERIFIED: Final = "server-verified"  # not signed: the server stamped the sender
UNVERIFIED: Final = "unverified"
REASONS: Final = (
    "unknown-key",
    "revoked-key",
    "bad-signature",
    "sender-mismatch",
    "replayed",
    "clock-skew",
    "fork-suspected",
    "malformed",
    "missing-signature",
)


def b64url(raw: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def from_b64url(text: str) -> bytes:
    """The bytes of unpadded base64url `text`; ValueError when it is not exactly that."""
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:
        raise ValueError("not unpadded base64url") from exc
    if b64url(raw) != text:  # non-canonical trailing bits
        raise ValueError("not canonical base64url")
    return raw


def key_id(public_raw: bytes) -> str:
    """`kid`: base64url(SHA-256(raw 32-byte public key)), first 22 characters."""
    if len(public_raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return b64url(hashlib.sha256(public_raw).digest())[:22]


def public_raw(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32 bytes of a key's public half."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True, slots=True)
class Signature:
    """A client event's `parley.sig`: which key (`kid`) signed which message (`mid`) when
    (`ts`, Unix ms), having verified which directory head (`head`, "SEQ:HASH")."""

    kid: str
    mid: str
    ts: int
    head: str
    sig: str  # base64url of the 64-byte Ed25519 signature

    def wire(self) -> dict[str, Any]:
        return {"kid": self.kid, "mid": self.mid, "ts": self.ts, "head": self.head, "sig": self.sig}


def parse_signature(value: Any) -> Signature:
    """A `parley.sig` object as received; ValueError naming the first field that is wrong."""
    if not isinstance(value, dict):
        raise ValueError("parley.sig must be an object {kid, mid, ts, head, sig}")
    extra = set(value) - {"kid", "mid", "ts", "head", "sig"}
    if extra:
        raise ValueError(f"parley.sig has unknown fields: {', '.join(sorted(extra))}")
    kid, mid, ts, head, sig = (value.get(k) for k in ("kid", "mid", "ts", "head", "sig"))
    if not isinstance(kid, str) or not KID_RE.fullmatch(kid):
        raise ValueError("parley.sig.kid must be 22 base64url characters")
    if not isinstance(mid, str) or not MID_RE.fullmatch(mid):
        raise ValueError("parley.sig.mid must match [A-Za-z0-9_-]{1,64}")
    if isinstance(ts, bool) or not isinstance(ts, int) or not 0 <= ts <= MAX_TS:
        raise ValueError("parley.sig.ts must be whole milliseconds since the Unix epoch")
    if not isinstance(head, str) or not HEAD_RE.fullmatch(head):
        raise ValueError("parley.sig.head must be SEQ:HASH (or 0: before any directory)")
    if not isinstance(sig, str):
        raise ValueError("parley.sig.sig must be base64url")
    try:
        if len(from_b64url(sig)) != 64:
            raise ValueError
    except ValueError:
        raise ValueError("parley.sig.sig must be a base64url 64-byte Ed25519 signature") from None
    return Signature(kid, mid, ts, head, sig)


def canonical_bytes(
    app_key: str, channel: str, event: str, user_id: str, signature: Signature, data: str
) -> bytes:
    """The ten lines a sender signs, joined by \\n (docs/protocol.md). ValueError when a field
    holds a line break (it would let two messages share their bytes)."""
    lines = [
        VERSION,
        app_key,
        channel,
        event,
        user_id,
        signature.kid,
        signature.mid,
        str(signature.ts),
        hashlib.sha256(data.encode("utf-8")).hexdigest(),
        signature.head,
    ]
    if any("\n" in line for line in lines):
        raise ValueError("a signed field may not contain a line break")
    return "\n".join(lines).encode("utf-8")


def sign(
    private: Ed25519PrivateKey,
    app_key: str,
    channel: str,
    event: str,
    user_id: str,
    data: str,
    *,
    mid: str,
    ts: int,
    head: str = NO_HEAD,
) -> Signature:
    """Sign one event as its sender does."""
    unsigned = Signature(key_id(public_raw(private)), mid, ts, head, "")
    message = canonical_bytes(app_key, channel, event, user_id, unsigned, data)
    return Signature(unsigned.kid, mid, ts, head, b64url(private.sign(message)))


def signature_valid(public: bytes, message: bytes, signature: str) -> bool:
    """Whether `signature` (base64url) is `public`'s Ed25519 signature of `message`."""
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(from_b64url(signature), message)
    except (InvalidSignature, ValueError):
        return False
    return True
