"""Channel names: validation and the kind a prefix gives (PUSHER.md §1.6)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache

MAX_CHANNEL_NAME = 200
SERVER_TO_USER_PREFIX = "#server-to-user-"

_NAME_RE = re.compile(r"[A-Za-z0-9_\-=@,.;]+")
USER_ID_RE = re.compile(r"[A-Za-z0-9_\-=@,.;]+")


class Kind(Enum):
    PUBLIC = "public"
    PRIVATE = "private"
    ENCRYPTED = "encrypted"
    PRESENCE = "presence"
    SERVER_TO_USER = "server-to-user"


@dataclass(frozen=True, slots=True)
class ChannelType:
    """A channel's kind, with the questions asked of it on every frame answered once (an
    Enum member lookup is a descriptor call in Python 3.11: too slow for the hot path)."""

    kind: Kind
    cache: bool
    needs_auth: bool = field(init=False)
    allows_client_events: bool = field(init=False)
    is_presence: bool = field(init=False)
    is_server_to_user: bool = field(init=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "needs_auth", self.kind in (Kind.PRIVATE, Kind.ENCRYPTED, Kind.PRESENCE))
        set_(self, "allows_client_events", self.kind in (Kind.PRIVATE, Kind.PRESENCE))
        set_(self, "is_presence", self.kind is Kind.PRESENCE)
        set_(self, "is_server_to_user", self.kind is Kind.SERVER_TO_USER)


# Most specific first: the order matters.
_PREFIXES: tuple[tuple[str, ChannelType], ...] = (
    ("private-encrypted-cache-", ChannelType(Kind.ENCRYPTED, True)),
    ("private-encrypted-", ChannelType(Kind.ENCRYPTED, False)),
    ("private-cache-", ChannelType(Kind.PRIVATE, True)),
    ("private-", ChannelType(Kind.PRIVATE, False)),
    ("presence-cache-", ChannelType(Kind.PRESENCE, True)),
    ("presence-", ChannelType(Kind.PRESENCE, False)),
    ("cache-", ChannelType(Kind.PUBLIC, True)),
)
_PUBLIC = ChannelType(Kind.PUBLIC, False)
_SERVER_TO_USER = ChannelType(Kind.SERVER_TO_USER, False)


@lru_cache(maxsize=4096)  # asked for every client event and publish
def channel_type(name: str) -> ChannelType:
    """The type of a channel whose name is already valid."""
    if name.startswith("#"):
        return _SERVER_TO_USER
    for prefix, kind in _PREFIXES:
        if name.startswith(prefix):
            return kind
    return _PUBLIC


def channel_name_problem(name: object) -> str | None:
    """Why `name` is not a channel a client or the API may use, or None if it is."""
    if not isinstance(name, str) or not name:
        return "Channel name must be a non-empty string"
    if len(name) > MAX_CHANNEL_NAME:
        return f"Channel name is longer than {MAX_CHANNEL_NAME} characters"
    if name.startswith("#"):
        if not name.startswith(SERVER_TO_USER_PREFIX):
            return "Channel names starting with # are reserved"
        user_id = name[len(SERVER_TO_USER_PREFIX) :]
        if not user_id or not USER_ID_RE.fullmatch(user_id):
            return "Invalid user id in #server-to-user- channel name"
        return None
    if not _NAME_RE.fullmatch(name):
        return "Channel name may only contain A-Z, a-z, 0-9, and _ - = @ , . ;"
    return None


def server_to_user_channel(user_id: str) -> str:
    return SERVER_TO_USER_PREFIX + user_id


def server_to_user_id(name: str) -> str | None:
    if name.startswith(SERVER_TO_USER_PREFIX):
        return name[len(SERVER_TO_USER_PREFIX) :]
    return None
