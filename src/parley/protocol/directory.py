"""The key directory's wire: its entries, how each is chained to the one before, the signed
head, and the endorsement by which a user's existing key vouches for a new device.

An app's directory is an append-only log of `added` and `revoked` entries. Each entry names
`prev`, the hash of the entry before it (the empty string for seq 1), so a log can only be
extended: a client that remembers a head (seq, hash) detects a log that no longer leads to it.
The server signs the head with its own Ed25519 directory key. Pure: no store, no clock.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from parley.protocol.signed import b64url, from_b64url, key_id, signature_valid

EntryType = Literal["added", "revoked"]
HEAD_VERSION: Final = "parley-head-v1"
ENDORSE_VERSION: Final = "parley-endorse-v1"
CHANNEL: Final = "parley-keys"  # the server-written channel whose history is the log
EVENT: Final = "parley:key"  # each entry's event on that channel
DEVICE_ID_MAX = 64


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One entry of the log. `endorsed_by`/`endorsement`: the kid of an existing key of the
    same user and its signature over the new key (`endorsement_bytes`); `unendorsed` when the
    app allowed an addition without one while the user held keys."""

    seq: int
    type: EntryType
    user_id: str
    device_id: str
    kid: str
    ed25519: str  # base64url raw public key
    x25519: str | None
    ts: int  # Unix ms
    prev: str  # hash of entry seq-1; "" for seq 1
    endorsed_by: str | None = None
    endorsement: str | None = None
    unendorsed: bool = False

    def wire(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "type": self.type,
            "user_id": self.user_id,
            "device_id": self.device_id,
            "kid": self.kid,
            "ed25519": self.ed25519,
            "x25519": self.x25519,
            "ts": self.ts,
            "prev": self.prev,
            "endorsed_by": self.endorsed_by,
            "endorsement": self.endorsement,
            "unendorsed": self.unendorsed,
        }

    @staticmethod
    def from_wire(value: Any, *, checked: bool = True) -> KeyEntry:
        """An entry as served; ValueError when it is not one. A store reads its own entries
        unchecked: it serves what it holds, and the clients' chain check judges it."""
        if not isinstance(value, dict) or set(value) != set(FIELDS):
            raise ValueError("a key directory entry has exactly the fields " + ", ".join(FIELDS))
        entry = KeyEntry(**value)
        problem = entry.problem() if checked else None
        if problem is not None:
            raise ValueError(f"entry {value.get('seq')!r}: {problem}")
        return entry

    def problem(self) -> str | None:
        """What is wrong with the entry's fields, or None."""
        if isinstance(self.seq, bool) or not isinstance(self.seq, int) or self.seq < 1:
            return "seq must be a whole number >= 1"
        if self.type not in ("added", "revoked"):
            return "type must be added or revoked"
        if isinstance(self.ts, bool) or not isinstance(self.ts, int) or self.ts < 0:
            return "ts must be whole milliseconds"
        texts = (self.user_id, self.device_id, self.kid, self.ed25519, self.prev)
        if not all(isinstance(t, str) for t in texts):
            return "user_id, device_id, kid, ed25519 and prev are strings"
        optional = (self.x25519, self.endorsed_by, self.endorsement)
        if not all(t is None or isinstance(t, str) for t in optional):
            return "x25519, endorsed_by and endorsement are strings or null"
        if not isinstance(self.unendorsed, bool):
            return "unendorsed is true or false"
        try:
            if key_id(from_b64url(self.ed25519)) != self.kid:
                return "kid is not the key id of ed25519"
        except ValueError:
            return "ed25519 must be a base64url 32-byte public key"
        return None

    def encoded(self) -> bytes:
        """The canonical encoding: the wire object as JSON with sorted keys, no spaces."""
        return orjson.dumps(self.wire(), option=orjson.OPT_SORT_KEYS)

    def hash(self) -> str:
        """Lowercase hex SHA-256 of `encoded()`: the next entry's `prev`, a head's hash."""
        return hashlib.sha256(self.encoded()).hexdigest()


FIELDS: Final = tuple(KeyEntry.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class Head:
    """The log's last entry (`seq` 0 and hash "" while empty), signed by the server."""

    seq: int
    hash: str
    sig: str  # base64url Ed25519 over `head_bytes`

    def wire(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash, "sig": self.sig}

    def named(self) -> str:
        """As a signed message names it: "SEQ:HASH"."""
        return f"{self.seq}:{self.hash}"


def head_bytes(app_key: str, seq: int, hash: str) -> bytes:
    return f"{HEAD_VERSION}\n{app_key}\n{seq}\n{hash}".encode()


def sign_head(server_key: Ed25519PrivateKey, app_key: str, seq: int, hash: str) -> Head:
    return Head(seq, hash, b64url(server_key.sign(head_bytes(app_key, seq, hash))))


def head_valid(server_public: bytes, app_key: str, head: Head) -> bool:
    return signature_valid(server_public, head_bytes(app_key, head.seq, head.hash), head.sig)


def endorsement_bytes(app_key: str, user_id: str, device_id: str, ed25519: str) -> bytes:
    """What an existing key of `user_id` signs to vouch for a new device's key."""
    kid = key_id(from_b64url(ed25519))
    return f"{ENDORSE_VERSION}\n{app_key}\n{user_id}\n{device_id}\n{kid}\n{ed25519}".encode()


def chained(entries: list[KeyEntry], after: KeyEntry | None) -> str | None:
    """Why `entries` (consecutive, oldest first) do not extend `after`; None when they do."""
    previous = after
    for entry in entries:
        expected_seq = 1 if previous is None else previous.seq + 1
        if entry.seq != expected_seq:
            return f"entry {entry.seq} follows {expected_seq - 1}"
        if entry.prev != ("" if previous is None else previous.hash()):
            return f"entry {entry.seq} does not chain to the entry before it"
        previous = entry
    return None


def next_entry(last: KeyEntry | None, **fields: Any) -> KeyEntry:
    """The entry after `last`, chained to it."""
    return KeyEntry(
        seq=1 if last is None else last.seq + 1, prev="" if last is None else last.hash(), **fields
    )
