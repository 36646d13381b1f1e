"""The key directory: users' device keys, the signed head, and the check of signed messages.

`KeyDirectory` owns the server's directory signing key (generated on first start, kept in the
store, shared by every node on that store), appends `added` and `revoked` entries (chained by
`protocol.directory`) after checking what may be appended, publishes each entry on the
read-only `parley-keys` channel, and keeps every app's current keys in memory for the check of
signed client events. It follows the store every `FOLLOW_INTERVAL_S`, so an entry appended by
another node (a revocation, say) reaches this node's cache within a second.

An app with `server_generated_keys` may also have the server make a device's pairs
(`generate`): registered like any key, the private halves returned to the caller once and kept
nowhere (docs/protocol.md says why that is weaker).
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from parley import logs
from parley.backends.keys import LOG_PAGE_MAX, KeyDirectoryStore
from parley.core.access import channel_patterns
from parley.errors import Conflict, InvalidArgument, NotAllowed, UnknownResource
from parley.protocol.directory import (
    DEVICE_ID_MAX,
    Head,
    KeyEntry,
    endorsement_bytes,
    next_entry,
    sign_head,
)
from parley.protocol.signed import (
    Signature,
    b64url,
    canonical_bytes,
    from_b64url,
    key_id,
    public_raw,
    signature_valid,
)
from parley.settings import AppConfig

FOLLOW_INTERVAL_S = 0.5
CLOCK_SKEW_MS = 5 * 60 * 1000  # a signed event's ts may be this far from the server's clock
REPLAY_KEEP = 10_000  # message ids remembered per channel (each for the skew window, twice)
DEVICE_ID_RE = re.compile(rf"[A-Za-z0-9_.:@-]{{1,{DEVICE_ID_MAX}}}")

Publish = Callable[[AppConfig, KeyEntry], Awaitable[None]]


@dataclass(slots=True)
class AppKeys:
    """One app's directory as this node knows it: every entry, and what they add up to."""

    entries: list[KeyEntry] = field(default_factory=list)
    current: dict[str, KeyEntry] = field(default_factory=dict)  # kid -> its `added` entry
    revoked: dict[str, KeyEntry] = field(default_factory=dict)  # kid -> its `revoked` entry
    seen_mids: dict[str, OrderedDict[str, int]] = field(default_factory=dict)  # channel ->

    def take(self, entry: KeyEntry) -> None:
        if entry.seq != len(self.entries) + 1:
            return  # already known (this node appended it), or out of order: the next poll
        self.entries.append(entry)
        if entry.type == "added":
            self.current[entry.kid] = entry
        else:
            self.current.pop(entry.kid, None)
            self.revoked[entry.kid] = entry

    def of_user(self, user_id: str) -> list[KeyEntry]:
        return [e for e in self.current.values() if e.user_id == user_id]


@dataclass(frozen=True, slots=True)
class GeneratedKeys:
    """A device's pairs made by the server: the `added` entry of its public halves, and the
    private halves (base64url raw 32-byte seeds) for the caller alone. Never stored or logged:
    `repr` leaves the seeds out."""

    entry: KeyEntry
    ed25519_private: str = field(repr=False)
    x25519_private: str = field(repr=False)


class KeyDirectory:
    def __init__(
        self,
        store: KeyDirectoryStore,
        apps: tuple[AppConfig, ...],
        publish: Publish,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.apps = {app.id: app for app in apps}
        self.publish = publish
        self.clock = clock
        self.keys = {app.id: AppKeys() for app in apps}
        self._signed = {app.id: channel_patterns(app.signed_channels) for app in apps}
        self._server_key: Ed25519PrivateKey | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        candidate = Ed25519PrivateKey.generate().private_bytes_raw()
        seed = await self.store.server_key(candidate)
        self._server_key = Ed25519PrivateKey.from_private_bytes(seed)
        for app_id in self.keys:
            await self._catch_up(app_id)
        self._task = asyncio.get_running_loop().create_task(self._follow())
        logs.info("key directory", public_key=self.server_public_key)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    @property
    def server_public_key(self) -> str:
        """The directory key's public half, base64url: clients pin it to check heads."""
        assert self._server_key is not None, "KeyDirectory is not started"
        return b64url(public_raw(self._server_key))

    # -- reading -----------------------------------------------------------------------------

    def head(self, app: AppConfig) -> Head:
        assert self._server_key is not None, "KeyDirectory is not started"
        entries = self.keys[app.id].entries
        last_hash = entries[-1].hash() if entries else ""
        return sign_head(self._server_key, app.key, len(entries), last_hash)

    async def log(self, app: AppConfig, after: int, limit: int) -> list[KeyEntry]:
        if not 1 <= limit <= LOG_PAGE_MAX or after < 0:
            raise InvalidArgument(f"'limit' must be 1..{LOG_PAGE_MAX} and 'after' >= 0")
        return await self.store.log(app.id, after, limit)

    def current(self, app: AppConfig, user_id: str) -> list[KeyEntry]:
        return self.keys[app.id].of_user(user_id)

    # -- changes -----------------------------------------------------------------------------

    async def register(
        self,
        app: AppConfig,
        user_id: str,
        device_id: str,
        ed25519: str,
        x25519: str | None,
        endorsed_by: str | None,
        endorsement: str | None,
        *,
        generated: bool = False,
    ) -> KeyEntry:
        """Add a device key for `user_id` (the authenticated user). InvalidArgument, or a 409
        for a key that is already there or a user at the cap. `generated`: the server made the
        key (`generate`), which only phrases the refusal of an unendorsed one."""
        if not isinstance(device_id, str) or not DEVICE_ID_RE.fullmatch(device_id):
            raise InvalidArgument(f"'device_id' must be 1-{DEVICE_ID_MAX} of [A-Za-z0-9_.:@-]")
        public = _raw_key(ed25519, "ed25519")
        if x25519 is not None:
            _raw_key(x25519, "x25519")
        kid = key_id(public)
        async with self._lock:
            await self._catch_up(app.id)
            keys = self.keys[app.id]
            if kid in keys.current or kid in keys.revoked:
                raise Conflict(f"Key {kid} is already in the directory")
            held = keys.of_user(user_id)
            if len(held) >= app.max_keys_per_user:
                raise Conflict(
                    f"{user_id!r} holds {len(held)} keys, the limit is {app.max_keys_per_user}: "
                    "revoke one first"
                )
            unendorsed = False
            if endorsed_by is not None or endorsement is not None:
                self._check_endorsement(app, user_id, device_id, ed25519, endorsed_by, endorsement)
            elif held:
                if not app.keys_unendorsed:
                    raise InvalidArgument(
                        f"{user_id!r} already holds keys: "
                        + (
                            "a server-generated key cannot be endorsed (an endorsement signs "
                            "the new key, made only now), so it needs keys_unendorsed; register "
                            "a key made on the device with an endorsement instead"
                            if generated
                            else "a new one needs 'endorsed_by' and 'endorsement' (the new key "
                            "signed by one of them)"
                        )
                    )
                unendorsed = True
            return await self._append(
                app,
                type="added",
                user_id=user_id,
                device_id=device_id,
                kid=kid,
                ed25519=ed25519,
                x25519=x25519,
                endorsed_by=endorsed_by,
                endorsement=endorsement,
                unendorsed=unendorsed,
            )

    @staticmethod
    def check_generation_allowed(app: AppConfig) -> None:
        """NotAllowed unless the app opted in to server-generated keys."""
        if not app.server_generated_keys:
            raise NotAllowed(
                f"App {app.id} does not hand out server-generated keys "
                "(server_generated_keys is off): register a key made on the device"
            )

    async def generate(
        self,
        app: AppConfig,
        user_id: str,
        device_id: str,
    ) -> GeneratedKeys:
        """Make an Ed25519 and an X25519 pair for `user_id`'s device and `register` their
        public halves under its rules (device id, cap, `keys_unendorsed`). The private halves
        are returned, once: the directory keeps only the public ones. No endorsement: it
        would sign the new key, which exists only now, so a user who already holds keys gets
        one only where the app accepts unendorsed keys (and it is marked so)."""
        self.check_generation_allowed(app)
        signing = Ed25519PrivateKey.generate()
        sealing = X25519PrivateKey.generate()
        entry = await self.register(
            app,
            user_id,
            device_id,
            b64url(public_raw(signing)),
            b64url(sealing.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)),
            None,
            None,
            generated=True,
        )
        return GeneratedKeys(
            entry, b64url(signing.private_bytes_raw()), b64url(sealing.private_bytes_raw())
        )

    async def revoke(self, app: AppConfig, kid: str, by_user: str | None) -> KeyEntry:
        """Revoke `kid`: by its owner (`by_user`) or the app's backend (None)."""
        async with self._lock:
            await self._catch_up(app.id)
            entry = self.keys[app.id].current.get(kid)
            if entry is None or (by_user is not None and entry.user_id != by_user):
                raise UnknownResource(
                    f"No current key {kid!r}" + (f" of {by_user!r}" if by_user else "")
                )
            return await self._append(
                app,
                type="revoked",
                user_id=entry.user_id,
                device_id=entry.device_id,
                kid=kid,
                ed25519=entry.ed25519,
                x25519=entry.x25519,
            )

    def _check_endorsement(
        self,
        app: AppConfig,
        user_id: str,
        device_id: str,
        ed25519: str,
        endorsed_by: str | None,
        endorsement: str | None,
    ) -> None:
        if not isinstance(endorsed_by, str) or not isinstance(endorsement, str):
            raise InvalidArgument("'endorsed_by' and 'endorsement' go together")
        endorser = self.keys[app.id].current.get(endorsed_by)
        if endorser is None or endorser.user_id != user_id:
            raise InvalidArgument(f"'endorsed_by' {endorsed_by!r} is no current key of {user_id!r}")
        message = endorsement_bytes(app.key, user_id, device_id, ed25519)
        if not signature_valid(from_b64url(endorser.ed25519), message, endorsement):
            raise InvalidArgument(
                "'endorsement' is not a signature of the new key by 'endorsed_by'"
            )

    async def _append(self, app: AppConfig, **fields: object) -> KeyEntry:
        """Append after the newest entry; built again on another node's entry if it won."""
        keys = self.keys[app.id]
        while True:
            last = keys.entries[-1] if keys.entries else None
            entry = next_entry(last, ts=int(self.clock() * 1000), **fields)
            if await self.store.append(app.id, entry):
                keys.take(entry)
                logs.info(
                    "key directory entry",
                    app_id=app.id,
                    seq=entry.seq,
                    type=entry.type,
                    user_id=entry.user_id,
                    kid=entry.kid,
                )
                await self.publish(app, entry)
                return entry
            await self._catch_up(app.id)

    async def _catch_up(self, app_id: str) -> None:
        keys = self.keys[app_id]
        while True:
            page = await self.store.log(app_id, len(keys.entries), LOG_PAGE_MAX)
            for entry in page:
                keys.take(entry)
            if len(page) < LOG_PAGE_MAX:
                return

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(FOLLOW_INTERVAL_S)
            try:
                for app_id in self.keys:
                    await self._catch_up(app_id)
            except Exception:
                logs.error("following the key directory failed")

    # -- signed channels ---------------------------------------------------------------------

    def requires_signature(self, app: AppConfig, channel: str) -> bool:
        patterns = self._signed.get(app.id, ())
        return bool(patterns) and any(fnmatch.fnmatchcase(channel, p) for p in patterns)

    def signature_problem(
        self,
        app: AppConfig,
        channel: str,
        event: str,
        user_id: str | None,
        signature: Signature | None,
        data: object,
    ) -> str | None:
        """Why a client event on a signed channel is refused (a reason of
        `protocol.signed.REASONS` and a sentence), or None when it may go out."""
        if signature is None:
            return "missing-signature: events on this channel must be signed (parley.sig)"
        if user_id is None:
            return "sender-mismatch: signed events need an identified connection"
        if not isinstance(data, str):
            return "malformed: a signed event's data is a string (the JSON text)"
        keys = self.keys[app.id]
        entry = keys.current.get(signature.kid)
        if entry is None:
            if signature.kid in keys.revoked:
                return f"revoked-key: key {signature.kid} was revoked"
            return f"unknown-key: key {signature.kid} is not in the directory"
        if entry.user_id != user_id:
            return f"sender-mismatch: key {signature.kid} is not a key of {user_id!r}"
        now_ms = int(self.clock() * 1000)
        if abs(now_ms - signature.ts) > CLOCK_SKEW_MS:
            return "clock-skew: ts is more than 5 minutes from the server's clock"
        try:
            message = canonical_bytes(app.key, channel, event, user_id, signature, data)
        except ValueError as exc:
            return f"malformed: {exc}"
        if not signature_valid(from_b64url(entry.ed25519), message, signature.sig):
            return "bad-signature: the signature does not match the event"
        seen = keys.seen_mids.setdefault(channel, OrderedDict())
        while seen and (len(seen) >= REPLAY_KEEP or next(iter(seen.values())) < now_ms):
            seen.popitem(last=False)
        if signature.mid in seen:
            return f"replayed: message id {signature.mid} was already sent on {channel}"
        seen[signature.mid] = now_ms + 2 * CLOCK_SKEW_MS
        return None


def _raw_key(value: object, name: str) -> bytes:
    """A base64url 32-byte public key; InvalidArgument naming `name` otherwise."""
    try:
        if not isinstance(value, str):
            raise ValueError
        raw = from_b64url(value)
    except ValueError:
        raise InvalidArgument(f"'{name}' must be a base64url public key") from None
    if len(raw) != 32:
        raise InvalidArgument(f"'{name}' must be 32 bytes (base64url, no padding)")
    return raw
