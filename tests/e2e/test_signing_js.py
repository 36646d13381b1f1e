"""The JavaScript signing library (clients/js/parley-signing.mjs, on @noble/curves) and the
Python reference (parley.protocol.signed) agree byte for byte: for one key and one message with
non-ASCII data they derive the same kid, build the same canonical bytes and make the same
Ed25519 signature, and each verifies the other's; JS refuses a signature over tampered data,
and both refuse a field holding a line break. Each case runs tests/e2e/signing_vectors.mjs."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from parley.protocol import signed
from tests.conftest import require
from tests.support.server import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.node]

SCRIPT = ROOT / "tests" / "e2e" / "signing_vectors.mjs"
SEED = bytes(range(32))
KEY = Ed25519PrivateKey.from_private_bytes(SEED)
PUBLIC = signed.public_raw(KEY)
MESSAGE: dict[str, Any] = {
    "appKey": "app-key",
    "channel": "private-room",
    "event": "client-message",
    "userId": "alice",
    "data": '{"text":"héllo ✓"}',
    "mid": "m-0001",
    "ts": 1_700_000_000_123,
    "head": "7:" + "ab" * 32,
}


@pytest.fixture
def noble(node_modules: Path) -> None:
    require((node_modules / "@noble" / "curves").is_dir(), "node_modules missing: run `npm ci`")


def python_sign(message: dict[str, Any]) -> signed.Signature:
    return signed.sign(
        KEY,
        message["appKey"],
        message["channel"],
        message["event"],
        message["userId"],
        message["data"],
        mid=message["mid"],
        ts=message["ts"],
        head=message["head"],
    )


def python_canonical(message: dict[str, Any], sig: signed.Signature) -> bytes:
    return signed.canonical_bytes(
        message["appKey"],
        message["channel"],
        message["event"],
        message["userId"],
        sig,
        message["data"],
    )


def run_js(message: dict[str, Any], python_sig: str) -> tuple[int, dict[str, Any]]:
    """Run signing_vectors.mjs on `message`; its exit code and the JSON it printed."""
    request = {"seed_hex": SEED.hex(), **message, "python_sig": python_sig}
    done = subprocess.run(
        [shutil.which("node") or "node", str(SCRIPT)],
        cwd=ROOT,
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=30,
    )
    try:
        return done.returncode, json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"node signing_vectors.mjs exited {done.returncode} without JSON\n"
            f"--- stdout ---\n{done.stdout}--- stderr ---\n{done.stderr}",
            pytrace=False,
        )


@pytest.mark.usefixtures("noble")
def test_python_and_js_agree_on_kid_bytes_and_signature() -> None:
    py = python_sign(MESSAGE)
    code, js = run_js(MESSAGE, py.sig)
    assert code == 0, js
    assert js["kid"] == py.kid == signed.key_id(PUBLIC)
    canonical = python_canonical(MESSAGE, py)
    assert bytes.fromhex(js["canonical_hex"]) == canonical
    assert "héllo ✓".encode() not in canonical  # data is signed by its hash, not inline
    assert js["sig"] == py.sig  # Ed25519 is deterministic
    assert js["verifies_python"] is True
    assert signed.signature_valid(PUBLIC, canonical, js["sig"])


@pytest.mark.usefixtures("noble")
def test_js_refuses_a_signature_over_tampered_data() -> None:
    py = python_sign(MESSAGE)
    tampered = {**MESSAGE, "data": MESSAGE["data"].replace("é", "e"), "tampered": True}
    code, js = run_js(tampered, py.sig)
    assert code == 0, js
    assert js["verifies_python"] is False
    assert js["sig"] != py.sig
    assert not signed.signature_valid(PUBLIC, python_canonical(tampered, py), py.sig)


@pytest.mark.usefixtures("noble")
@pytest.mark.parametrize("field", ["channel", "userId", "mid"])
def test_a_field_with_a_line_break_is_refused_by_both(field: str) -> None:
    broken = {**MESSAGE, field: MESSAGE[field] + "\nx"}
    with pytest.raises(ValueError, match="line break"):
        python_sign(broken)
    code, js = run_js(broken, python_sign(MESSAGE).sig)
    assert code == 1
    assert "line break" in js["error"]
