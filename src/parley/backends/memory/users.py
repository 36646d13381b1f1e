"""`MemoryUserStore`: user accounts in this process's memory, for unit tests and as the
reference the durable stores must behave like. Nothing survives the process.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from argon2 import PasswordHasher

from parley.backends.users import (
    Passwords,
    User,
    UserStore,
    check_info,
    check_name,
    load_info,
)


class MemoryUserStore(UserStore):
    def __init__(
        self, *, hasher: PasswordHasher | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(clock)
        self._passwords = Passwords(hasher)
        self._users: dict[tuple[str, str], User] = {}

    async def add(
        self, app_id: str, name: str, password: str, info: dict[str, Any] | None = None
    ) -> User:
        self.check_running()
        check_name(name)
        # Stored as JSON and read back, as the durable stores do: the caller's dict is not kept.
        stored_info = load_info(check_info(info))
        if (app_id, name) in self._users:
            raise ValueError(f"user {name!r} already exists in app {app_id!r}")
        password_hash = await self._passwords.hash(password)
        if (app_id, name) in self._users:  # added while hashing
            raise ValueError(f"user {name!r} already exists in app {app_id!r}")
        now = self.now_ms()
        user = User(app_id, name, stored_info, now, now, None, password_hash)
        self._users[(app_id, name)] = user
        return user

    async def set_password(self, app_id: str, name: str, password: str) -> bool:
        self.check_running()
        password_hash = await self._passwords.hash(password)
        return self._update(app_id, name, password_hash=password_hash)

    async def verify(self, app_id: str, name: str, password: str) -> User | None:
        self.check_running()
        user = self._users.get((app_id, name))
        stored = None if user is None else user.password_hash
        if not await self._passwords.check(stored, password) or user is None:
            return None
        if self._passwords.needs_rehash(user.password_hash):
            self._update(app_id, name, password_hash=await self._passwords.hash(password))
        now = self._users.get((app_id, name))  # disabled while the hash was checked?
        return None if now is None or now.disabled else now

    async def get(self, app_id: str, name: str) -> User | None:
        self.check_running()
        return self._users.get((app_id, name))

    async def list(self, app_id: str) -> builtins.list[User]:
        self.check_running()
        return sorted((u for (a, _), u in self._users.items() if a == app_id), key=_by_name)

    async def disable(self, app_id: str, name: str) -> bool:
        self.check_running()
        return self._update(app_id, name, disabled_at=self.now_ms())

    async def enable(self, app_id: str, name: str) -> bool:
        self.check_running()
        user = self._users.get((app_id, name))
        if user is None or not user.disabled:
            return user is not None
        return self._update(app_id, name, disabled_at=None)

    async def disabled_since(
        self, app_id: str | None, since_ms: int
    ) -> builtins.list[tuple[str, str]]:
        self.check_running()
        found = [
            u
            for u in self._users.values()
            if u.disabled_at is not None
            and u.disabled_at >= since_ms
            and (app_id is None or u.app_id == app_id)
        ]
        found.sort(key=lambda u: (u.disabled_at, u.app_id, u.name))
        return [(u.app_id, u.name) for u in found]

    def _update(self, app_id: str, name: str, **changes: Any) -> bool:
        user = self._users.get((app_id, name))
        if user is None:
            return False
        self._users[(app_id, name)] = replace(user, updated_at=self.now_ms(), **changes)
        return True


def _by_name(user: User) -> str:
    return user.name
