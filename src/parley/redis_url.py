"""What a Redis Sentinel broker URL names (`redis+sentinel://`), read without any client: the
settings check it at start, `backends.redis.connect` makes its client from it."""

from __future__ import annotations

import dataclasses
from urllib.parse import unquote, urlsplit

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379


@dataclasses.dataclass(frozen=True)
class SentinelURL:
    """What a redis+sentinel:// URL names."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    username: str | None
    password: str | None
    tls: bool


def is_sentinel(url: str) -> bool:
    return url.partition("://")[0].lower() in SENTINEL_SCHEMES


def parse_sentinel(url: str) -> SentinelURL:
    """A redis+sentinel:// URL's parts; ValueError naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in SENTINEL_SCHEMES:
        raise ValueError("not a redis+sentinel:// or rediss+sentinel:// URL")
    if parts.query or parts.fragment:
        raise ValueError("a redis+sentinel:// URL takes no query or fragment")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = tuple(_address(item) for item in hosts.split(","))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ValueError("a redis+sentinel:// URL needs /service_name or /service_name/db")
    db = 0
    if len(path) == 2:
        if not path[1].isdigit():
            raise ValueError(f"the database number {path[1]!r} is not a number")
        db = int(path[1])
    return SentinelURL(
        sentinels=sentinels,
        service=unquote(path[0]),
        db=db,
        username=username,
        password=password,
        tls=parts.scheme.lower() == "rediss+sentinel",
    )


def _address(item: str) -> tuple[str, int]:
    if not item:
        raise ValueError("a sentinel's address is empty")
    if item.startswith("["):  # [ipv6]:port
        host, bracket, rest = item[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"a sentinel's address {item!r} is malformed")
        port_text = rest[1:]
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ValueError(f"a sentinel's address {item!r} has no host")
    if not port_text:
        return host, SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"a sentinel's port {port_text!r} is not a port")
    return host, int(port_text)
