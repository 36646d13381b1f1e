"""One Pusher connection as a pure state machine.

Theory of operation: the session feeds every inbound text frame to `receive(text, now)`,
which validates and authorizes it and returns commands: `Reply` bytes for this connection,
or requests (`Subscribe`, `Unsubscribe`, `ClientEvent`, `Signin`, and Parley's own `Resume`,
`HistoryRequest`, `Refresh`) that need the node's shared state, or `Close`. Time is an
argument; nothing here touches a socket or a clock.
Errors a client causes come back as `Reply(pusher:error)`, never as exceptions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final, Literal

import orjson

from parley.auth.signatures import channel_auth_string, token_problem, user_auth_string
from parley.errors import (
    ConnectionRefused,
    InvalidArgument,
    InvalidText,
    ParleyError,
    ProtocolError,
    RateLimited,
)
from parley.protocol import frames
from parley.protocol.channels import (
    USER_ID_RE,
    ChannelType,
    channel_name_problem,
    channel_type,
    server_to_user_id,
)
from parley.protocol.codes import CloseCode
from parley.protocol.signed import Signature, parse_signature
from parley.settings import AppConfig


@dataclass(frozen=True, slots=True)
class Member:
    user_id: str
    user_info: Any


# init=False: the __init__ below is compiled by mypyc; a dataclass-made one is not (5x slower)
@dataclass(slots=True, init=False)  # not frozen: built per message, and frozen __init__ is slower
class Reply:
    frame: bytes
    error: bool  # a pusher:error the node counts (by `code`) in parley_errors_total
    code: int | None

    def __init__(self, frame: bytes, error: bool = False, code: int | None = None) -> None:
        self.frame = frame
        self.error = error
        self.code = code


def error_reply(code: int | None, message: str) -> Reply:
    return Reply(frames.error_frame(code, message), True, code)


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Subscribe:
    channel: str
    type: ChannelType
    member: Member | None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    channel: str
    member: Member | None = None


# init=False: the __init__ below is compiled by mypyc; a dataclass-made one is not (5x slower)
@dataclass(slots=True, init=False)
class ClientEvent:
    channel: str
    event: str
    data: Any
    user_id: str | None
    data_json: bytes | None = field(compare=False)  # `data` encoded, once
    signature: Signature | None = None  # the client's `parley.sig`, well formed, not checked

    def __init__(
        self,
        channel: str,
        event: str,
        data: Any,
        user_id: str | None,
        data_json: bytes | None = None,
        signature: Signature | None = None,
    ) -> None:
        self.channel = channel
        self.event = event
        self.data = data
        self.user_id = user_id
        self.data_json = data_json
        self.signature = signature


@dataclass(frozen=True, slots=True)
class Signin:
    user_id: str
    user_info: Any
    user_data: str
    watchlist: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Resume:
    """`parley:resume`: replay what `channel` stored after `offset` of `epoch`, then go live."""

    channel: str
    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """Which page of a channel's history: the arguments of `parley:history` and of the HTTP
    API's GET .../history, checked by `history_query`."""

    limit: int = 100
    direction: Literal["forward", "backward"] = "forward"
    after: int | None = None
    before: int | None = None


@dataclass(frozen=True, slots=True)
class HistoryRequest:
    """`parley:history`: a page of `channel`'s history."""

    channel: str
    query: HistoryQuery


@dataclass(frozen=True, slots=True)
class Refresh:
    """`parley:refresh`: a new JWT for the connection's user (the node verifies it)."""

    token: str


Command = (
    Reply
    | Close
    | Subscribe
    | Unsubscribe
    | ClientEvent
    | Signin
    | Resume
    | HistoryRequest
    | Refresh
)


MAX_OFFSET: Final = 2**63 - 1  # what every store holds (PostgreSQL's BIGINT)


def history_query(args: Mapping[str, Any]) -> HistoryQuery:
    """The page `args` ask for (strings from a query, or JSON values); InvalidArgument says
    which argument is wrong."""

    def number(key: str, default: int | None) -> int | None:
        value = args.get(key)
        if value in (None, ""):
            return default
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise InvalidArgument(f"{key!r} must be an integer")
        try:
            parsed = int(value)
        except (TypeError, ValueError, OverflowError):
            raise InvalidArgument(f"{key!r} must be an integer") from None
        if parsed < 0:
            raise InvalidArgument(f"{key!r} must not be negative")
        if parsed > MAX_OFFSET:
            raise InvalidArgument(f"{key!r} must be at most {MAX_OFFSET}")
        return parsed

    limit = number("limit", 100) or 0
    if not 1 <= limit <= 1000:
        raise InvalidArgument("'limit' must be between 1 and 1000")
    direction = args.get("direction") or "forward"
    if direction not in ("forward", "backward"):
        raise InvalidArgument("'direction' must be forward or backward")
    return HistoryQuery(
        limit,
        "backward" if direction == "backward" else "forward",
        number("after", None),
        number("before", None),
    )


def _notice(message: str, channel: str | None = None) -> Reply:
    """A `pusher:error` (code null) that refuses a `parley:*` request: not counted in
    parley_errors_total, as these never were."""
    return Reply(frames.error_frame(None, message, channel))


class State(Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSED = "closed"


_RESERVED_PREFIXES = ("pusher:", "pusher_internal:")
# Enum members looked up once: a `State.X` lookup on every frame is a descriptor call.
_CONNECTING, _OPEN, _CLOSED = State.CONNECTING, State.OPEN, State.CLOSED


class PusherConnection:
    """The protocol state of one connection of one app."""

    __slots__ = (
        "_max_frame_bytes",
        "_subscribe_tokens",
        "_subscribe_tokens_at",
        "_tokens",
        "_tokens_at",
        "app",
        "socket_id",
        "state",
        "subscriptions",
        "user_id",
        "user_info",
    )

    def __init__(self, app: AppConfig, socket_id: str, *, max_frame_bytes: int = 65536) -> None:
        self.app = app
        self.socket_id = socket_id
        self.state = _CONNECTING
        self.subscriptions: dict[str, Member | None] = {}
        self.user_id: str | None = None
        self.user_info: Any = None
        self._tokens = max(app.client_event_rate, 1.0)  # a burst of at least one
        self._tokens_at = 0.0
        self._subscribe_tokens = max(app.subscribe_rate, 1.0)
        self._subscribe_tokens_at = 0.0
        self._max_frame_bytes = max_frame_bytes

    # -- lifecycle -------------------------------------------------------------------------

    def establish(self, activity_timeout: int, **extra: Any) -> bytes:
        self.state = _OPEN
        return frames.connection_established(self.socket_id, activity_timeout, **extra)

    def identify(self, user_id: str, user_info: Any = None) -> None:
        """The connection is this user from now on (a verified signin or handshake token)."""
        self.user_id = user_id
        self.user_info = user_info

    def forget(self, channel: str) -> None:
        """The node refused a subscription this machine allowed (e.g. a full presence channel)."""
        self.subscriptions.pop(channel, None)

    def close(self) -> list[Command]:
        """The transport is gone: leave every channel."""
        self.state = _CLOSED
        left: list[Command] = [Unsubscribe(c, m) for c, m in self.subscriptions.items()]
        self.subscriptions.clear()
        return left

    # -- input -------------------------------------------------------------------------------

    def receive(self, text: str | bytes, now: float) -> list[Command]:
        if self.state is _CLOSED:
            return []
        try:
            if len(text) > self._max_frame_bytes:
                if isinstance(text, bytes) and not frames.is_utf8(text):
                    raise InvalidText("Text message is not valid UTF-8")
                raise ProtocolError(
                    f"Message too large: {len(text)} bytes, the limit is {self._max_frame_bytes}"
                )
            message = frames.decode(text)
            event: str = message["event"]
            if event == "pusher:ping":
                return [Reply(frames.PONG)]
            if event == "pusher:pong":
                return []
            if self.state is _CONNECTING:
                raise ConnectionRefused(
                    CloseCode.UNAUTHORIZED,
                    "Messages must be sent after the pusher:connection_established event",
                )
            if event.startswith("client-"):  # the busiest kind first
                return self._client_event(message, now)
            if event == "pusher:subscribe":
                return self._subscribe(frames.data_object(message), now)
            if event == "pusher:unsubscribe":
                return self._unsubscribe(frames.data_object(message))
            if event == "pusher:signin":
                return self._signin(frames.data_object(message))
            if event.startswith("parley:"):
                return self._parley(event, frames.data_object(message))
            if event.startswith(_RESERVED_PREFIXES):
                raise ProtocolError(f"Unsupported event from client: {event!r} is reserved")
            raise ProtocolError(
                f"Unsupported event {event!r}: client events must start with 'client-'"
            )
        except ConnectionRefused as exc:
            self.state = _CLOSED
            return [error_reply(exc.code, exc.message), Close(exc.code or 4009, exc.message)]
        except InvalidText as exc:  # a WebSocket rule (RFC 6455 8.1): a close, no error event
            self.state = _CLOSED
            return [Close(CloseCode.INVALID_PAYLOAD, exc.message)]
        except ParleyError as exc:
            return [error_reply(exc.code, exc.message)]

    # -- pusher:subscribe / unsubscribe ------------------------------------------------------

    def _subscribe(self, data: dict[str, Any], now: float) -> list[Command]:
        channel = data.get("channel")
        problem = channel_name_problem(channel)
        if problem:
            raise ProtocolError(problem)
        assert isinstance(channel, str)
        if channel in self.subscriptions:
            raise ProtocolError(f"Existing subscription to channel {channel}")
        limit = self.app.max_channels_per_connection
        if limit and len(self.subscriptions) >= limit:
            raise ProtocolError(
                f"Cannot subscribe to {channel}: a connection may hold {limit} channels "
                "(max_channels_per_connection)"
            )
        self._take_subscribe_token(channel, now)
        ctype = channel_type(channel)
        member: Member | None = None
        if ctype.is_server_to_user:
            if self.user_id is None or server_to_user_id(channel) != self.user_id:
                raise ProtocolError(
                    f"Cannot subscribe to {channel}: the connection is not signed in as that user"
                )
        elif ctype.needs_auth:
            channel_data = data.get("channel_data")
            if channel_data is not None and not isinstance(channel_data, str):
                raise ProtocolError("Invalid channel_data: must be a JSON string")
            if not ctype.is_presence:
                channel_data = None
            message = channel_auth_string(self.socket_id, channel, channel_data)
            problem = token_problem(data.get("auth"), self.app.key, self.app.secret, message)
            if problem:
                raise ProtocolError(problem)
            if ctype.is_presence:
                member = self._presence_member(channel, channel_data)
        self.subscriptions[channel] = member
        return [Subscribe(channel, ctype, member)]

    def _presence_member(self, channel: str, channel_data: str | None) -> Member:
        if channel_data is None:
            if self.user_id is None:
                raise ProtocolError(
                    f"Presence channel {channel} needs channel_data or a signed-in connection"
                )
            return Member(self.user_id, self.user_info)
        try:
            parsed = frames.loads(channel_data)
        except frames.BadJson as exc:
            raise ProtocolError(f"Invalid channel_data: {exc}") from None
        if not isinstance(parsed, dict) or "user_id" not in parsed:
            raise ProtocolError("Invalid channel_data: must be an object with a user_id")
        raw_id = parsed["user_id"]
        if isinstance(raw_id, bool) or not isinstance(raw_id, str | int) or raw_id == "":
            raise ProtocolError("Invalid channel_data: user_id must be a non-empty string")
        user_id = str(raw_id)
        if len(user_id) > self.app.max_user_id_length:
            raise ProtocolError(
                f"Invalid channel_data: user_id is longer than {self.app.max_user_id_length}"
            )
        user_info = parsed.get("user_info")
        if user_info is not None:
            size = len(orjson.dumps(user_info))
            if size > self.app.max_presence_user_info_bytes:
                raise ProtocolError(
                    f"Presence user_info is {size} bytes, the limit is "
                    f"{self.app.max_presence_user_info_bytes}"
                )
        if self.user_id is not None and user_id != self.user_id:
            raise ProtocolError(
                f"Cannot join {channel} as user {user_id!r}: "
                f"the connection is signed in as {self.user_id!r}"
            )
        return Member(user_id, user_info)

    def _unsubscribe(self, data: dict[str, Any]) -> list[Command]:
        channel = data.get("channel")
        if not isinstance(channel, str) or channel not in self.subscriptions:
            raise ProtocolError(f"No current subscription to channel {channel}")
        member = self.subscriptions.pop(channel)
        return [Unsubscribe(channel, member)]

    # -- pusher:signin -----------------------------------------------------------------------

    def _signin(self, data: dict[str, Any]) -> list[Command]:
        user_data = data.get("user_data")
        if not isinstance(user_data, str):
            raise ConnectionRefused(
                CloseCode.UNAUTHORIZED, "Invalid signin: user_data must be a string"
            )
        problem = token_problem(
            data.get("auth"),
            self.app.key,
            self.app.secret,
            user_auth_string(self.socket_id, user_data),
        )
        if problem:
            raise ConnectionRefused(CloseCode.UNAUTHORIZED, f"Invalid signin: {problem}")
        try:
            parsed = frames.loads(user_data)
        except frames.BadJson as exc:
            raise ConnectionRefused(
                CloseCode.UNAUTHORIZED, f"Invalid signin: user_data is {exc}"
            ) from None
        user_id = parsed.get("id") if isinstance(parsed, dict) else None
        if not isinstance(user_id, str) or not user_id:
            raise ConnectionRefused(
                CloseCode.UNAUTHORIZED, "Invalid signin: user_data.id must be a non-empty string"
            )
        if len(user_id) > self.app.max_user_id_length or not USER_ID_RE.fullmatch(user_id):
            raise ConnectionRefused(
                CloseCode.UNAUTHORIZED,
                "Invalid signin: user id must be at most "
                f"{self.app.max_user_id_length} characters of [A-Za-z0-9_-=@,.;]",
            )
        if self.user_id is not None and self.user_id != user_id:
            raise ProtocolError(f"Already signed in as {self.user_id!r}")
        watchlist = parsed.get("watchlist") or []
        if not isinstance(watchlist, list):
            raise ProtocolError("Invalid signin: watchlist must be an array of user ids")
        assert isinstance(parsed, dict)
        self.identify(user_id, parsed.get("user_info"))
        ids = tuple(
            str(w) for w in watchlist if isinstance(w, str | int) and not isinstance(w, bool)
        )
        commands: list[Command] = [
            Signin(user_id, parsed.get("user_info"), user_data, ids[: self.app.max_watchlist])
        ]
        if len(ids) > self.app.max_watchlist:
            commands.append(
                error_reply(
                    CloseCode.WATCHLIST_LIMIT,
                    f"Watchlist limit exceeded: only the first {self.app.max_watchlist} "
                    "user ids are watched",
                )
            )
        return commands

    # -- parley:* ----------------------------------------------------------------------------

    def _parley(self, event: str, data: dict[str, Any]) -> list[Command]:
        """Parley's own requests; whether the channel keeps history, and whose token it is,
        the node decides."""
        if event == "parley:refresh":
            token = data.get("token")
            if not isinstance(token, str) or not token:
                return [_notice("Refresh refused: parley:refresh needs a token")]
            return [Refresh(token)]
        if event not in ("parley:resume", "parley:history"):
            return [_notice(f"Unsupported event {event!r}")]
        channel = data.get("channel")
        if not isinstance(channel, str) or channel not in self.subscriptions:
            return [_notice(f"{event} needs a channel this connection is subscribed to")]
        if event == "parley:history":
            try:
                return [HistoryRequest(channel, history_query(data))]
            except InvalidArgument as exc:
                return [_notice(exc.message, channel)]
        since = data.get("since")
        if (
            not isinstance(since, dict)
            or not isinstance(since.get("offset"), int)
            or isinstance(since.get("offset"), bool)
            or not isinstance(since.get("epoch"), str)
        ):
            return [_notice("parley:resume needs since: {offset: int, epoch: str}")]
        if since["offset"] > MAX_OFFSET:
            return [_notice(f"parley:resume: since.offset must be at most {MAX_OFFSET}")]
        return [Resume(channel, since["offset"], since["epoch"])]

    # -- client events -----------------------------------------------------------------------

    def _client_event(self, message: dict[str, Any], now: float) -> list[Command]:
        event: str = message["event"]
        channel = message.get("channel")
        if not self.app.client_events:
            raise ProtocolError("The app does not have client messaging enabled")
        if len(event) > self.app.max_event_name_length:
            raise ProtocolError(
                f"Event name is longer than {self.app.max_event_name_length} characters"
            )
        if "\x00" in event:  # no store takes it (PostgreSQL text), and it fails a whole batch
            raise ProtocolError("Event name may not contain NUL characters")
        if not isinstance(channel, str) or channel not in self.subscriptions:
            raise ProtocolError(
                f"Cannot broadcast client event (connection not subscribed to channel {channel})"
            )
        if not channel_type(channel).allows_client_events:
            raise ProtocolError(
                f"Cannot broadcast client event on {channel}: only private and presence "
                "channels accept client events"
            )
        data = message.get("data")
        data_json = orjson.dumps(data)
        size = len(data.encode()) if isinstance(data, str) else len(data_json)
        if size > self.app.max_event_bytes:
            raise ProtocolError(
                f"Client event data is {size} bytes, the limit is {self.app.max_event_bytes}"
            )
        signature = _signature(message.get("parley"))
        self._take_token(now)
        member = self.subscriptions[channel]
        sender = member.user_id if member is not None else self.user_id
        return [ClientEvent(channel, event, data, sender, data_json, signature)]

    def _take_subscribe_token(self, channel: str, now: float) -> None:
        """Subscriptions a second, per connection: a second's worth may burst (4301 beyond)."""
        rate = self.app.subscribe_rate
        if rate <= 0:
            return
        burst = max(rate, 1.0)  # a rate under 1 a second still lets one through now and then
        tokens = min(burst, self._subscribe_tokens + (now - self._subscribe_tokens_at) * rate)
        self._subscribe_tokens_at = now
        if tokens < 1:
            self._subscribe_tokens = tokens
            raise RateLimited(
                f"Subscription to {channel} rejected due to rate limit: {rate:g} a second "
                "(subscribe_rate)"
            )
        self._subscribe_tokens = tokens - 1

    def _take_token(self, now: float) -> None:
        rate = self.app.client_event_rate
        if rate <= 0:
            return
        burst = max(rate, 1.0)  # a rate under 1 a second still lets one through now and then
        self._tokens = min(burst, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        if self._tokens < 1:
            raise RateLimited("Client event rejected due to rate limit")
        self._tokens -= 1


def _signature(extension: Any) -> Signature | None:
    """The `parley.sig` of a client event, parsed; the rest of a client's `parley` is ignored
    (the server sets that object)."""
    if extension is None:
        return None
    if not isinstance(extension, dict):
        raise ProtocolError("malformed: 'parley' must be an object")
    raw = extension.get("sig")
    if raw is None:
        return None
    try:
        return parse_signature(raw)
    except ValueError as exc:
        raise ProtocolError(f"malformed: {exc}") from None
