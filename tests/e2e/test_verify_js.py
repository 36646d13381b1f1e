"""The JavaScript verifier (clients/js/parley-verify.mjs) and the Python one
(parley.sdk.verifier) give the same verdicts, refuse the same rewritten directories with the
same message and raise the same alerts. No server: each scenario's directory, heads and
delivered frames are built here with parley.protocol, run through both verifiers (the JS one
by tests/e2e/verify_cases.mjs), compared with each other and with the verdicts expected."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from parley.protocol import directory, signed
from parley.protocol.directory import Head, KeyEntry
from parley.sdk.verifier import DirectoryRewritten, Verifier
from tests.conftest import require
from tests.support.server import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.node]

SCRIPT = ROOT / "tests" / "e2e" / "verify_cases.mjs"
APP_KEY = "app-key"
ROOM = "private-room"
EVENT = "client-msg"
DATA = '{"text":"héllo ✓"}'
T0 = 1_795_000_000_000
REVOKED_AT = T0 + 600_000  # alice's laptop key is revoked then
NOW = T0 + 3_600_000
SKEW = 6 * 60 * 1000

SERVER = Ed25519PrivateKey.generate()
OTHER_SERVER = Ed25519PrivateKey.generate()
ALICE, ALICE_LAPTOP, BOB, STRANGER, PLANTED = (
    Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32) for n in range(1, 6)
)


def pub(key: Ed25519PrivateKey) -> str:
    return signed.b64url(signed.public_raw(key))


def kid(key: Ed25519PrivateKey) -> str:
    return signed.key_id(signed.public_raw(key))


def x25519() -> str:
    public = X25519PrivateKey.generate().public_key()
    return signed.b64url(public.public_bytes(Encoding.Raw, PublicFormat.Raw))


def added(
    last: KeyEntry | None, user: str, device: str, key: Ed25519PrivateKey, ts: int, **more: Any
) -> KeyEntry:
    fields = {"x25519": None, **more}
    return directory.next_entry(
        last,
        type="added",
        user_id=user,
        device_id=device,
        kid=kid(key),
        ed25519=pub(key),
        ts=ts,
        **fields,
    )


def build_log() -> list[KeyEntry]:
    """alice's phone, bob's laptop, alice's laptop (endorsed by her phone), that one revoked."""
    phone = added(None, "alice", "phone", ALICE, T0, x25519=x25519())
    bob = added(phone, "bob", "laptop", BOB, T0 + 1000)
    endorsement = ALICE.sign(
        directory.endorsement_bytes(APP_KEY, "alice", "laptop", pub(ALICE_LAPTOP))
    )
    laptop = added(
        bob,
        "alice",
        "laptop",
        ALICE_LAPTOP,
        T0 + 2000,
        x25519=x25519(),
        endorsed_by=kid(ALICE),
        endorsement=signed.b64url(endorsement),
    )
    revoked = directory.next_entry(
        laptop,
        type="revoked",
        user_id="alice",
        device_id="laptop",
        kid=laptop.kid,
        ed25519=laptop.ed25519,
        x25519=laptop.x25519,
        ts=REVOKED_AT,
    )
    return [phone, bob, laptop, revoked]


LOG = build_log()


def head_of(
    entries: list[KeyEntry], signer: Ed25519PrivateKey = SERVER, app_key: str = APP_KEY
) -> Head:
    """The server's signed head of `entries` ("0" and "" while empty)."""
    seq, hash_ = (entries[-1].seq, entries[-1].hash()) if entries else (0, "")
    return directory.sign_head(signer, app_key, seq, hash_)


def edited(entry: KeyEntry, **changes: Any) -> KeyEntry:
    return KeyEntry(**{**entry.wire(), **changes})


def delivered(
    sig: dict[str, Any] | None,
    *,
    stamped: int = NOW,
    publisher: dict[str, Any] | None = None,
    channel: str = ROOM,
    data: Any = DATA,
) -> dict[str, Any]:
    """An event frame as the server delivers it, `publisher` stamped (alice unless given)."""
    parley: dict[str, Any] = {
        "publisher": publisher or {"type": "user", "id": "alice"},
        "ts": stamped,
    }
    if sig is not None:
        parley["sig"] = sig
    return {"event": EVENT, "channel": channel, "data": data, "parley": parley}


def said(
    key: Ed25519PrivateKey,
    mid: str,
    *,
    ts: int = NOW,
    stamped: int | None = None,
    head: str = signed.NO_HEAD,
    user: str = "alice",
    channel: str = ROOM,
) -> dict[str, Any]:
    """`key` signs DATA as `user` and the server stamps alice 250 ms later (or at `stamped`)."""
    sig = signed.sign(key, APP_KEY, channel, EVENT, user, DATA, mid=mid, ts=ts, head=head)
    return delivered(sig.wire(), stamped=ts + 250 if stamped is None else stamped, channel=channel)


class Scenario:
    """Steps for both verifiers and what each should give."""

    def __init__(self, own_user_id: str | None = None, own_kids: Iterable[str] = ()) -> None:
        self.request: dict[str, Any] = {
            "app_key": APP_KEY,
            "server_public_key": pub(SERVER),
            "own_user_id": own_user_id,
            "own_kids": list(own_kids),
            "steps": [],
        }
        self.expected: list[str] = []
        self.alerts: list[str] = []
        self.named_head = signed.NO_HEAD

    def extend(self, entries: list[KeyEntry], head: Head | None, expect: str = "ok") -> None:
        wire = {
            "entries": [e.wire() for e in entries],
            "head": None if head is None else head.wire(),
        }
        self.request["steps"].append({"extend": wire})
        self.expected.append(expect)

    def verify(self, frame: dict[str, Any], expect: str) -> None:
        self.request["steps"].append({"verify": frame})
        self.expected.append(expect)


def summary(result: dict[str, Any]) -> str:
    """ "ok", "DirectoryRewritten: why", or "status[:reason] user"."""
    if "ok" in result:
        return "ok"
    if "error" in result:
        return f"{result['error']}: {result['message']}"
    reason = f":{result['reason']}" if result["reason"] else ""
    return f"{result['status']}{reason} {result['user_id']}"


def verdicts() -> Scenario:
    """One frame for each verdict, on the full directory."""
    s = Scenario(own_user_id="alice", own_kids=[kid(ALICE), kid(ALICE_LAPTOP)])
    s.extend(LOG, head_of(LOG))
    s.named_head = f"4:{LOG[3].hash()}"
    first = said(ALICE, "m-1", head=s.named_head)
    s.verify(first, "verified alice")
    s.verify(first, "unverified:replayed alice")
    # Replays are per sender: bob's own "m-1" is not alice's.
    bobs = signed.sign(BOB, APP_KEY, ROOM, EVENT, "bob", DATA, mid="m-1", ts=NOW, head=s.named_head)
    from_bob = delivered(bobs.wire(), stamped=NOW + 250, publisher={"type": "user", "id": "bob"})
    s.verify(from_bob, "verified bob")
    s.verify(said(ALICE, "m-1", head=s.named_head, channel="private-other"), "verified alice")
    s.verify({**said(ALICE, "m-2"), "data": '{"text":"hello"}'}, "unverified:bad-signature alice")
    s.verify(said(BOB, "m-3"), "unverified:sender-mismatch alice")
    s.verify(said(STRANGER, "m-4"), "unverified:unknown-key alice")
    s.verify(said(ALICE_LAPTOP, "m-5", ts=REVOKED_AT + 1000), "unverified:revoked-key alice")
    s.verify(said(ALICE_LAPTOP, "m-6", ts=REVOKED_AT - 1000), "verified alice")
    s.verify(said(ALICE, "m-7", ts=NOW - SKEW, stamped=NOW), "unverified:clock-skew alice")
    s.verify(said(ALICE, "m-8", ts=NOW + SKEW, stamped=NOW), "unverified:clock-skew alice")
    s.verify(delivered(None), "server-verified alice")
    wrong = "1:" + "0" * 64
    s.verify(said(ALICE, "m-9", head=wrong), "unverified:fork-suspected alice")
    s.verify(said(ALICE, "m-10", head="9:" + "0" * 64), "verified alice")  # beyond ours: can't tell
    bad_kid = {**said(ALICE, "m-11")["parley"]["sig"], "kid": "not a kid!"}
    s.verify(delivered(bad_kid), "unverified:malformed alice")
    sig = said(ALICE, "m-12")["parley"]["sig"]
    s.verify(delivered({**sig, "extra": 1}), "unverified:malformed alice")
    s.verify(delivered(sig, data={"text": "héllo ✓"}), "unverified:malformed alice")
    server = {"type": "server", "id": "alice"}
    s.verify(delivered(sig, publisher=server), "unverified:sender-mismatch alice")
    s.verify({**delivered(sig), "parley": {"sig": sig}}, "unverified:sender-mismatch None")
    return s


def rewritten() -> Scenario:
    """A served directory that does not extend the one verified is refused, nothing taken."""
    s = Scenario()
    rewritten = "DirectoryRewritten: "
    s.extend(LOG[:2], head_of(LOG[:2]))
    forged = [edited(LOG[0], device_id="stolen"), *LOG[1:3]]
    s.extend(forged, head_of(LOG[:3]), rewritten + "entry 1 differs from the one verified before")
    s.verify(said(ALICE_LAPTOP, "m-1"), "unverified:unknown-key alice")  # entry 3 not taken
    laptop = edited(LOG[2], device_id="stolen")
    s.extend(
        [laptop, LOG[3]], head_of(LOG), rewritten + "entry 4 does not chain to the entry before it"
    )
    s.extend(LOG[3:], head_of(LOG), rewritten + "entry 4 follows 2")
    s.extend(LOG[:3], head_of(LOG), rewritten + "the head names entry 4, not served")
    odd = directory.sign_head(SERVER, APP_KEY, 3, LOG[1].hash())
    s.extend(LOG[:3], odd, rewritten + "the head's hash is not that of entry 3")
    mislabelled = edited(LOG[2], kid=LOG[0].kid)  # a kid that is not its key's
    s.extend([mislabelled], None, rewritten + "entry 3: kid is not the key id of ed25519")
    s.extend(LOG, head_of(LOG))
    s.named_head = f"4:{LOG[3].hash()}"
    s.verify(said(ALICE_LAPTOP, "m-2", ts=REVOKED_AT - 1), "verified alice")
    return s


def foreign_head() -> Scenario:
    """A head not signed by the pinned key, or for another app, is refused, nothing taken."""
    s = Scenario()
    refused = "DirectoryRewritten: the head is not signed by the server's directory key"
    s.extend(LOG, head_of(LOG, signer=OTHER_SERVER), refused)
    s.extend(LOG, head_of(LOG, app_key="other-app"), refused)
    s.verify(said(ALICE, "m-1"), "unverified:unknown-key alice")
    s.extend(LOG, head_of(LOG))
    s.named_head = f"4:{LOG[3].hash()}"
    s.verify(said(ALICE, "m-1"), "verified alice")
    return s


def incremental() -> Scenario:
    """The directory taken piecemeal, known entries served again, heads old and new."""
    s = Scenario(own_user_id="bob", own_kids=[kid(BOB)])
    s.extend([], head_of([]))
    s.extend(LOG[:1], None)
    s.extend(LOG[:2], head_of(LOG[:2]))
    s.extend(LOG, None)  # two known, two new
    s.extend(LOG[1:], head_of(LOG[:3]))  # all known; an older head is still the log's
    s.named_head = f"3:{LOG[2].hash()}"
    s.verify(said(ALICE, "m-1", head=s.named_head), "verified alice")
    return s


def own_key_alert() -> Scenario:
    """A key of alice's that her devices did not add raises one alert; it still verifies."""
    own = [kid(ALICE), kid(ALICE_LAPTOP)]
    s = Scenario(own_user_id="alice", own_kids=own)
    planted = added(LOG[-1], "alice", "evil", PLANTED, NOW - 1000, unendorsed=True)
    s.extend(LOG, head_of(LOG))
    s.extend([*LOG, planted], head_of([*LOG, planted]))
    s.alerts = [kid(PLANTED)]
    s.named_head = f"5:{planted.hash()}"
    s.verify(said(PLANTED, "m-1"), "verified alice")
    return s


SCENARIOS: dict[str, Callable[[], Scenario]] = {
    "verdicts": verdicts,
    "rewritten": rewritten,
    "foreign-head": foreign_head,
    "incremental": incremental,
    "own-key-alert": own_key_alert,
}


@pytest.fixture
def noble(node_modules: Path) -> None:
    require((node_modules / "@noble" / "curves").is_dir(), "node_modules missing: run `npm ci`")


def run_python(request: dict[str, Any]) -> dict[str, Any]:
    """What verify_cases.mjs prints, from the Python Verifier."""
    request = json.loads(json.dumps(request))  # exactly the JSON the JS side reads
    on_alert: list[str] = []
    verifier = Verifier(
        request["app_key"],
        signed.from_b64url(request["server_public_key"]),
        own_user_id=request["own_user_id"],
        own_kids=request["own_kids"],
        on_alert=lambda entry: on_alert.append(entry.kid),
    )
    results: list[dict[str, Any]] = []
    for step in request["steps"]:
        if "verify" in step:
            verdict = verifier.verify(step["verify"])
            results.append(
                {
                    "status": verdict.status,
                    "reason": verdict.reason,
                    "user_id": verdict.user_id,
                    "kid": verdict.kid,
                }
            )
            continue
        try:
            verifier.extend_wire(step["extend"]["entries"], step["extend"]["head"])
        except DirectoryRewritten as exc:
            results.append({"error": "DirectoryRewritten", "message": str(exc)})
        else:
            results.append({"ok": True})
    return {
        "results": results,
        "alerts": [entry.kid for entry in verifier.alerts],
        "on_alert": on_alert,
        "named_head": verifier.named_head(),
    }


def run_js(request: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [shutil.which("node") or "node", str(SCRIPT)],
        cwd=ROOT,
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode == 0:
        try:
            result: dict[str, Any] = json.loads(done.stdout)
        except json.JSONDecodeError:
            pass
        else:
            return result
    pytest.fail(
        f"node verify_cases.mjs exited {done.returncode}\n"
        f"--- stdout ---\n{done.stdout}--- stderr ---\n{done.stderr}",
        pytrace=False,
    )


@pytest.mark.usefixtures("noble")
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_python_and_js_verifiers_agree(name: str) -> None:
    scenario = SCENARIOS[name]()
    python = run_python(scenario.request)
    js = run_js(scenario.request)
    assert js == python
    assert [summary(result) for result in python["results"]] == scenario.expected
    assert python["alerts"] == python["on_alert"] == scenario.alerts
    assert python["named_head"] == scenario.named_head
