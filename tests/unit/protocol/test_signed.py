"""protocol.signed and protocol.directory: the test vector of docs/protocol.md (read from the
page, so the page and the code cannot drift apart), what a `parley.sig` must look like, and
the key directory's chain and signed head."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from parley.protocol import directory, signed

DOC = Path(__file__).resolve().parents[3] / "docs" / "protocol.md"


def doc_vector() -> dict[str, Any]:
    block = re.search(r"```json vector\n(.*?)```", DOC.read_text(), re.S)
    assert block is not None, "docs/protocol.md has no vector block"
    vector: dict[str, Any] = json.loads(block.group(1))
    return vector


def test_the_documented_vector_is_what_the_code_makes_and_verifies() -> None:
    v = doc_vector()
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["seed_hex"]))
    public = signed.public_raw(key)
    assert signed.b64url(public) == v["public"]
    assert signed.key_id(public) == v["kid"]
    made = signed.sign(
        key, v["app_key"], v["channel"], v["event"], v["user_id"], v["data"],
        mid=v["mid"], ts=v["ts"], head=v["head"],
    )  # fmt: skip
    assert made == signed.Signature(v["kid"], v["mid"], v["ts"], v["head"], v["sig"])
    canonical = signed.canonical_bytes(
        v["app_key"], v["channel"], v["event"], v["user_id"], made, v["data"]
    )
    assert canonical == v["canonical"].encode()
    assert signed.signature_valid(public, canonical, v["sig"])
    tampered = canonical.replace(b"alice", b"mallory")
    assert not signed.signature_valid(public, tampered, v["sig"])


GOOD: dict[str, Any] = {
    "kid": "Vkdap1RjR0wChd9dvyvKtz",
    "mid": "m-1",
    "ts": 1,
    "head": "3:" + "0" * 64,
    "sig": signed.b64url(bytes(64)),
}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"kid": "short"}, "kid"),
        ({"mid": "has space"}, "mid"),
        ({"mid": "x" * 65}, "mid"),
        ({"ts": 1.5}, "ts"),
        ({"ts": True}, "ts"),
        ({"ts": -1}, "ts"),
        ({"head": "3:abc"}, "head"),
        ({"head": "0:" + "0" * 64}, "head"),
        ({"sig": signed.b64url(bytes(63))}, "sig"),
        ({"sig": signed.b64url(bytes(64)) + "="}, "sig"),
        ({"extra": 1}, "unknown fields"),
    ],
)
def test_a_malformed_signature_is_refused_naming_its_field(
    change: dict[str, Any], named: str
) -> None:
    assert signed.parse_signature(GOOD) == signed.Signature(**GOOD)
    with pytest.raises(ValueError, match=named):
        signed.parse_signature({**GOOD, **change})


def test_a_line_break_in_any_signed_field_is_refused() -> None:
    sig = signed.parse_signature(GOOD)
    signed.canonical_bytes("k", "c", "e", "u", sig, "data\nmay hold breaks")
    for fields in (("k\n", "c", "e", "u"), ("k", "c\n", "e", "u"), ("k", "c", "e", "u\n")):
        with pytest.raises(ValueError, match="line break"):
            signed.canonical_bytes(*fields, sig, "d")


def test_base64url_is_strict() -> None:
    assert signed.from_b64url("AAEC") == b"\x00\x01\x02"
    for bad in ("AAE=", "AA+C", "A", "AB"):  # padding, base64 alphabet, length, extra bits
        with pytest.raises(ValueError):
            signed.from_b64url(bad)


def entry(last: directory.KeyEntry | None, user: str = "alice") -> directory.KeyEntry:
    public = signed.b64url(bytes([len(user)] * 32))
    return directory.next_entry(
        last,
        type="added",
        user_id=user,
        device_id="phone",
        kid=signed.key_id(signed.from_b64url(public)),
        ed25519=public,
        x25519=None,
        ts=5,
    )


def test_entries_chain_and_an_edited_entry_breaks_the_chain() -> None:
    first = entry(None)
    second = entry(first, "bob")
    assert (first.seq, first.prev, second.seq, second.prev) == (1, "", 2, first.hash())
    assert directory.chained([first, second], None) is None
    assert directory.chained([second], first) is None
    edited = directory.KeyEntry(**{**first.wire(), "user_id": "mallory"})
    assert (
        directory.chained([edited, second], None) == "entry 2 does not chain to the entry before it"
    )
    assert directory.chained([second], None) == "entry 2 follows 0"
    assert directory.KeyEntry.from_wire(json.loads(second.encoded())) == second


def test_the_head_is_signed_by_the_server_key_for_one_app() -> None:
    server = Ed25519PrivateKey.generate()
    head = directory.sign_head(server, "app-key", 2, "ab" * 32)
    public = signed.public_raw(server)
    assert directory.head_valid(public, "app-key", head)
    assert not directory.head_valid(public, "other-app", head)
    assert not directory.head_valid(public, "app-key", directory.Head(3, head.hash, head.sig))
    other = signed.public_raw(Ed25519PrivateKey.generate())
    assert not directory.head_valid(other, "app-key", head)
