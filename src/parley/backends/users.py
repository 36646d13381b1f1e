"""The user role: what a store of per-app accounts must promise (`UserStore`), the `User` value,
and the password work (argon2id) that every implementation shares.

It knows nothing of sessions or the wire. A password never leaves this module but as its hash,
and nothing here logs a password or a hash.

Timing. `verify` does one argon2 verification whatever the outcome: against the user's hash
when the name exists (disabled or not), against a dummy hash when it does not, so the time
taken does not tell which names exist. The dummy is made by the first `verify` (whatever its
outcome), so that `parley users list` and friends never pay for it.
"""

from __future__ import annotations

import abc
import asyncio
import builtins
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from parley.auth.tokens import USER_ID_RE
from parley.backends.lifecycle import StoreLifecycle

NAME_RULE = "1 to 128 characters of A-Z, a-z, 0-9 and _ - = @ , . ;"
MAX_PASSWORD = 4096  # characters; argon2 takes any length, this only bounds the work asked of it


@dataclass(frozen=True, slots=True)
class User:
    """One account of one app. `password_hash` is an argon2id PHC string, never the password;
    it is left out of `repr` so a logged User shows no hash."""

    app_id: str
    name: str  # the user id the server stamps on everything the user sends
    info: dict[str, Any] | None  # shown in presence
    created_at: int  # milliseconds since the Unix epoch
    updated_at: int
    disabled_at: int | None  # when it was last disabled; None while enabled
    password_hash: str = field(repr=False)

    @property
    def disabled(self) -> bool:
        return self.disabled_at is not None


class UserStore(StoreLifecycle, abc.ABC):
    """Per-app user accounts with argon2id password hashes.

    Users are keyed by (app_id, name). Every method may be called concurrently from many tasks,
    and several processes (the server and `parley users`) may share one durable store.
    Implementations: `MemoryUserStore`, `SqliteUserStore`, `PostgresUserStore`; each takes a
    `hasher` (argon2-cffi's defaults unless given) and a `clock` (Unix seconds), and a durable
    one its technology's database handle (`backends.database`), opened and migrated by its owner.
    """

    what = "user store"

    @abc.abstractmethod
    async def add(
        self, app_id: str, name: str, password: str, info: dict[str, Any] | None = None
    ) -> User:
        """Create an enabled user and return it.

        ValueError when `name` breaks `NAME_RULE`, the password is empty or longer than
        `MAX_PASSWORD`, `info` is neither None nor a JSON object, or the user already exists.
        """

    @abc.abstractmethod
    async def set_password(self, app_id: str, name: str, password: str) -> bool:
        """Replace the user's password hash; False when there is no such user.
        ValueError for a password `add` would refuse."""

    @abc.abstractmethod
    async def verify(self, app_id: str, name: str, password: str) -> User | None:
        """The user when `password` is theirs and they are enabled; None otherwise (unknown
        name, wrong password, disabled). Costs one argon2 verification in every case. A hash
        made with other parameters than the store's hasher is replaced on success."""

    @abc.abstractmethod
    async def get(self, app_id: str, name: str) -> User | None:
        """The user, enabled or disabled, or None."""

    @abc.abstractmethod
    async def list(self, app_id: str) -> builtins.list[User]:
        """Every user of the app, enabled or disabled, sorted by name."""

    @abc.abstractmethod
    async def disable(self, app_id: str, name: str) -> bool:
        """Disable the user and stamp `disabled_at` with now (again if already disabled, so the
        servers end the user's connections once more); False when there is no such user."""

    @abc.abstractmethod
    async def enable(self, app_id: str, name: str) -> bool:
        """Enable the user (a no-op when enabled); False when there is no such user."""

    @abc.abstractmethod
    async def disabled_since(
        self, app_id: str | None, since_ms: int
    ) -> builtins.list[tuple[str, str]]:
        """(app_id, name) of every user still disabled whose `disabled_at` is at or after
        `since_ms`, oldest first; of every app when `app_id` is None.

        A server polls this to end the live connections of users disabled elsewhere. Stamps
        come from the clock of the process that disabled the user, so a poller should ask from
        a little before its previous poll and treat repeats as harmless.
        """


# -- shared by the implementations ---------------------------------------------------------------


def check_name(name: object) -> str:
    if not isinstance(name, str) or not USER_ID_RE.fullmatch(name):
        raise ValueError(f"user name must be {NAME_RULE}, got {name!r}")
    return name


def check_password(password: object) -> str:
    if not isinstance(password, str) or not password:
        raise ValueError("password must be a non-empty string")
    if len(password) > MAX_PASSWORD:
        raise ValueError(f"password must be at most {MAX_PASSWORD} characters")
    return password


def check_info(info: object) -> str | None:
    """`info` as stored: None, or a JSON object serialized."""
    if info is None:
        return None
    if not isinstance(info, dict):
        raise ValueError("user info must be a JSON object (or None)")
    try:
        return orjson.dumps(info).decode()
    except TypeError as exc:
        raise ValueError(f"user info is not JSON: {exc}") from None


def load_info(stored: str | None) -> dict[str, Any] | None:
    if stored is None:
        return None
    info: dict[str, Any] = orjson.loads(stored)
    return info


# The columns a durable store keeps, in the order of `user_from_row`.
USER_COLUMNS = "app_id, name, info, created_at, updated_at, disabled_at, password_hash"


def user_from_row(row: Sequence[Any]) -> User:
    """A User from the columns of USER_COLUMNS, in order."""
    app_id, name, info, created_at, updated_at, disabled_at, password_hash = row
    return User(app_id, name, load_info(info), created_at, updated_at, disabled_at, password_hash)


class Passwords:
    """argon2id hashing off the event loop, and the dummy hash that keeps `verify` constant."""

    def __init__(self, hasher: PasswordHasher | None) -> None:
        self.hasher = hasher if hasher is not None else PasswordHasher()
        self._dummy: str | None = None

    async def prepare(self) -> None:
        """Make the dummy hash now rather than on the first `check`."""
        if self._dummy is None:
            dummy = await asyncio.to_thread(self.hasher.hash, "parley-dummy-password")
            self._dummy = self._dummy or dummy

    async def hash(self, password: str) -> str:
        check_password(password)
        return await asyncio.to_thread(self.hasher.hash, password)

    async def check(self, stored: str | None, password: str) -> bool:
        """Whether `password` matches `stored`; with `stored` None the work is done on the
        dummy hash and the answer is False."""
        # Made on first use whatever the outcome, so even the first call tells nothing.
        await self.prepare()
        assert self._dummy is not None
        if not isinstance(password, str) or len(password) > MAX_PASSWORD:
            return False
        target = self._dummy if stored is None else stored
        matched = await asyncio.to_thread(self._verify, target, password)
        return matched and stored is not None

    def _verify(self, stored: str, password: str) -> bool:
        try:
            return self.hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        try:
            return self.hasher.check_needs_rehash(stored)
        except InvalidHashError:
            return True
