"""The client side of signed messages: follow an app's key directory and verify events.

A `Verifier` is what an app embeds (the JavaScript module `clients/js/parley-verify.mjs` has
the same API). It pins the server's directory key, takes the directory's entries as they come
(from `GET /keys/log`, or the `parley-keys` channel's history and live events) and refuses a
directory that no longer extends what it verified before (`DirectoryRewritten`). Each event
gets exactly one `Verdict`: `verified`, `server-verified` (not signed: only the server's stamp
vouches for the sender), or `unverified` with a reason. It alerts its app when the directory
shows a key for the app's own user that this device did not add.

It trusts nothing in a message but the signature: the sender is the stamped
`parley.publisher`, the key comes from the directory, never from the message.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from parley.protocol.directory import Head, KeyEntry, chained, head_valid
from parley.protocol.signed import (
    SERVER_VERIFIED,
    UNVERIFIED,
    VERIFIED,
    Signature,
    canonical_bytes,
    from_b64url,
    parse_signature,
    signature_valid,
)

CLOCK_SKEW_MS: Final = 5 * 60 * 1000  # a signature's ts against the server's stamp
REPLAY_KEEP: Final = 10_000  # message ids remembered per channel, the newest


class DirectoryRewritten(Exception):
    """The directory served no longer extends the one verified before, or its head is not
    signed by the pinned server key: rewritten or forked directory detected."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a recipient may believe of one event. `user_id` is the stamped sender."""

    status: str  # verified | server-verified | unverified
    reason: str | None = None  # for unverified: one of protocol.signed.REASONS
    user_id: str | None = None
    kid: str | None = None


class Verifier:
    def __init__(
        self,
        app_key: str,
        server_public_key: bytes,
        *,
        own_user_id: str | None = None,
        own_kids: Iterable[str] = (),
        on_alert: Callable[[KeyEntry], None] | None = None,
    ) -> None:
        self.app_key = app_key
        self.server_public_key = server_public_key
        self.own_user_id = own_user_id
        self.own_kids = set(own_kids)  # the keys this user added (on this or its other devices)
        self.on_alert = on_alert
        self.entries: list[KeyEntry] = []
        self.head: Head | None = None  # the last head verified
        self.alerts: list[KeyEntry] = []  # keys of our own user that we did not add
        self._added: dict[str, KeyEntry] = {}
        self._revoked: dict[str, KeyEntry] = {}
        self._seen: dict[str, OrderedDict[str, None]] = {}  # channel -> recent message ids

    # -- the directory -----------------------------------------------------------------------

    def extend(self, entries: Iterable[KeyEntry], head: Head | None = None) -> None:
        """Take the entries after those known (older ones are skipped), then check `head`
        if given. DirectoryRewritten, and nothing taken, when they do not chain to what was
        verified before, or the head is not the server's or not the log's."""
        entries = list(entries)
        for e in entries:
            problem = e.problem()
            if problem is not None:
                raise DirectoryRewritten(f"entry {e.seq!r}: {problem}")
        if head is not None and (isinstance(head.seq, bool) or head.seq < 0):
            raise DirectoryRewritten("the head's seq is not a whole number")
        last = self.entries[-1] if self.entries else None
        known = len(self.entries)
        fresh = [e for e in entries if e.seq > known]
        for e in entries:  # an entry we hold must be served unchanged
            if e.seq <= known and e.hash() != self.entries[e.seq - 1].hash():
                raise DirectoryRewritten(f"entry {e.seq} differs from the one verified before")
        problem = chained(fresh, last)
        if problem is not None:
            raise DirectoryRewritten(problem)
        if head is not None:
            if not head_valid(self.server_public_key, self.app_key, head):
                raise DirectoryRewritten("the head is not signed by the server's directory key")
            tip = fresh[-1] if fresh else last
            if (tip.seq if tip else 0) < head.seq:
                raise DirectoryRewritten(f"the head names entry {head.seq}, not served")
            if head.seq and (tip is None or self._hash_at(head.seq, fresh) != head.hash):
                raise DirectoryRewritten(f"the head's hash is not that of entry {head.seq}")
        for entry in fresh:
            self._take(entry)
        if head is not None:
            self.head = head

    def extend_wire(self, entries: Iterable[Any], head: dict[str, Any] | None = None) -> None:
        """`extend` with entries and a head as the HTTP API serves them."""
        try:
            taken = [KeyEntry.from_wire(e) for e in entries]
        except ValueError as exc:
            raise DirectoryRewritten(str(exc)) from None
        self.extend(taken, None if head is None else Head(head["seq"], head["hash"], head["sig"]))

    def _hash_at(self, seq: int, fresh: list[KeyEntry]) -> str:
        held = self.entries + fresh
        return held[seq - 1].hash()

    def _take(self, entry: KeyEntry) -> None:
        self.entries.append(entry)
        if entry.type == "added":
            self._added[entry.kid] = entry
            if entry.user_id == self.own_user_id and entry.kid not in self.own_kids:
                self.alerts.append(entry)
                if self.on_alert is not None:
                    self.on_alert(entry)
        else:
            self._revoked[entry.kid] = entry

    def named_head(self) -> str:
        """The head a message of ours names: the last one verified ("0:" before any)."""
        return self.head.named() if self.head is not None and self.head.seq else "0:"

    # -- events ------------------------------------------------------------------------------

    def verify(self, frame: dict[str, Any]) -> Verdict:
        """The verdict on one delivered event frame (`event`, `channel`, `data`, `parley`)."""
        meta = frame.get("parley") if isinstance(frame.get("parley"), dict) else {}
        assert isinstance(meta, dict)
        publisher = meta.get("publisher")
        user_id = publisher.get("id") if isinstance(publisher, dict) else None
        if publisher is None or not isinstance(publisher, dict):
            return Verdict(UNVERIFIED, "sender-mismatch")
        raw = meta.get("sig")
        if raw is None:
            return Verdict(SERVER_VERIFIED, None, user_id)
        try:
            signature = parse_signature(raw)
        except ValueError:
            return Verdict(UNVERIFIED, "malformed", user_id)
        return self._check(frame, meta, publisher, signature)

    def _check(
        self, frame: dict[str, Any], meta: dict[str, Any], publisher: dict[str, Any], sig: Signature
    ) -> Verdict:
        user_id = publisher.get("id")

        def no(reason: str) -> Verdict:
            return Verdict(UNVERIFIED, reason, user_id, sig.kid)

        if publisher.get("type") != "user" or not isinstance(user_id, str):
            return no("sender-mismatch")
        key = self._added.get(sig.kid)
        if key is None:
            return no("unknown-key")
        if key.user_id != user_id:
            return no("sender-mismatch")
        revoked = self._revoked.get(sig.kid)
        if revoked is not None and sig.ts >= revoked.ts:
            return no("revoked-key")
        stamped = meta.get("ts")
        if isinstance(stamped, int) and abs(stamped - sig.ts) > CLOCK_SKEW_MS:
            return no("clock-skew")
        data, channel, event = frame.get("data"), frame.get("channel"), frame.get("event")
        if not (isinstance(data, str) and isinstance(channel, str) and isinstance(event, str)):
            return no("malformed")
        try:
            message = canonical_bytes(self.app_key, channel, event, user_id, sig, data)
        except ValueError:
            return no("malformed")
        if not signature_valid(from_b64url(key.ed25519), message, sig.sig):
            return no("bad-signature")
        if self._forked(sig.head):
            return no("fork-suspected")
        seen = self._seen.setdefault(channel, OrderedDict())
        replay_key = f"{user_id}\n{sig.mid}"  # per sender: nobody can use up another's ids
        if replay_key in seen:
            return no("replayed")
        seen[replay_key] = None
        if len(seen) > REPLAY_KEEP:
            seen.popitem(last=False)
        return Verdict(VERIFIED, None, user_id, sig.kid)

    def _forked(self, head: str) -> bool:
        """Whether a message names a head that differs from ours at that seq: the server
        showed its sender another directory."""
        seq_text, _, hash_ = head.partition(":")
        seq = int(seq_text)
        return 0 < seq <= len(self.entries) and self.entries[seq - 1].hash() != hash_
