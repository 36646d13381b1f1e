"""What a WebSocket upgrade asks for, read from its path, query and headers (pure: no state).

Pusher's path is `/app/<key>?protocol=7&client=js&version=8.4.0`. Parley also takes a JWT:
as a path prefix `/token/<jwt>/app/<key>` (for clients that cannot set a query), else as
`?token=<jwt>`, else as `Authorization: Bearer <jwt>`.

`parse_handshake` refuses a path that is not an app's with 4005. A missing or unsupported
protocol version (4008, 4007) is not raised but kept in `Handshake.refusal`: the node looks the
app key up first (4001), and only then raises it, so that a connection wrong in both ways is
told about the key, as it always was. The decisions that need the node's state (the app
exists and is enabled, its connection quota, a draining node) are the node's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from parley.errors import ConnectionRefused
from parley.protocol.codes import CloseCode

OLDEST_PROTOCOL: Final = 5  # the protocol versions Parley speaks (pusher-js sends 7)
NEWEST_PROTOCOL: Final = 7


# init=False: the __init__ below is compiled by mypyc; a dataclass-made one is not (one per
# connection: a connection storm makes thousands a second)
@dataclass(slots=True, init=False)
class Handshake:
    app_key: str
    protocol: int  # 5, 6 or 7; 0 when `refusal` says why there is none
    token: str | None  # a JWT from the query, the path or a Bearer header ("" when empty)
    client: str | None  # the client library's name (`client=js`), for the logs
    cookie: str | None  # the raw Cookie header
    origin: str  # the Origin header when there is a cookie (only a cookie session needs it)
    refusal: ConnectionRefused | None  # a missing or unsupported protocol version

    def __init__(
        self,
        app_key: str,
        protocol: int,
        token: str | None = None,
        client: str | None = None,
        cookie: str | None = None,
        origin: str = "",
        refusal: ConnectionRefused | None = None,
    ) -> None:
        self.app_key = app_key
        self.protocol = protocol
        self.token = token
        self.client = client
        self.cookie = cookie
        self.origin = origin
        self.refusal = refusal


def parse_handshake(path: str, query: dict[str, str], headers: Any) -> Handshake:
    """The handshake of `path` (without its query), `query` (parsed) and `headers` (a
    case-insensitive mapping, or None); ConnectionRefused(4005) for a path that names no app."""
    token = query.get("token")
    if path.startswith("/token/"):
        parts = path.split("/", 3)
        if len(parts) != 4:
            raise ConnectionRefused(CloseCode.PATH_NOT_FOUND, f"Path not found: {path}")
        token, path = parts[2], "/" + parts[3]
    if token is None and headers:
        authorization: str | None = headers.get("authorization")
        if authorization and authorization[:7].lower() == "bearer ":
            token = authorization[7:].strip()
    parts = path.split("/")
    if len(parts) != 3 or parts[1] != "app" or not parts[2]:
        raise ConnectionRefused(CloseCode.PATH_NOT_FOUND, f"Path not found: {path}")
    protocol = 0
    refusal = None
    raw_protocol = query.get("protocol")
    if raw_protocol is None:
        refusal = ConnectionRefused(CloseCode.NO_PROTOCOL, "No protocol version supplied")
    else:
        if raw_protocol.isdigit():
            try:
                protocol = int(raw_protocol)
            except ValueError:  # digits int() does not read, such as "²"
                pass
        if not OLDEST_PROTOCOL <= protocol <= NEWEST_PROTOCOL:
            protocol = 0
            refusal = ConnectionRefused(
                CloseCode.UNSUPPORTED_PROTOCOL,
                f"Unsupported protocol version {raw_protocol!r}: use 5, 6 or 7",
            )
    cookie = headers.get("cookie") if headers else None
    origin = headers.get("origin", "") if headers else ""  # cookie sessions, check_origin
    return Handshake(parts[2], protocol, token, query.get("client"), cookie, origin, refusal)
