"""Close and error codes, with the action pusher-js takes on each (PUSHER.md §1.5)."""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002  # RFC 6455: a frame the WebSocket protocol forbids
    INVALID_PAYLOAD = 1007  # RFC 6455: a text message that is not UTF-8
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TLS_REQUIRED = 4000  # reconnect with wss
    APP_NOT_FOUND = 4001  # 4000-4099: do not reconnect unchanged
    APP_DISABLED = 4003
    OVER_CONNECTION_QUOTA = 4004
    PATH_NOT_FOUND = 4005
    INVALID_VERSION = 4006
    UNSUPPORTED_PROTOCOL = 4007
    NO_PROTOCOL = 4008
    UNAUTHORIZED = 4009
    OVER_CAPACITY = 4100  # 4100-4199: reconnect after a back-off; Parley: slow consumer
    RECONNECT = 4200  # 4200-4299: reconnect now; Parley: shutdown / drain
    PONG_NOT_RECEIVED = 4201
    CLIENT_EVENT_RATE_LIMIT = 4301  # 4300-4399: error events only, never a close
    WATCHLIST_LIMIT = 4302


EXPLANATIONS: dict[int, str] = {
    CloseCode.APP_NOT_FOUND: "Application does not exist",
    CloseCode.APP_DISABLED: "Application is disabled",
    CloseCode.OVER_CONNECTION_QUOTA: "Application is over connection quota",
    CloseCode.PATH_NOT_FOUND: "Path not found",
    CloseCode.INVALID_VERSION: "Invalid version string format",
    CloseCode.UNSUPPORTED_PROTOCOL: "Unsupported protocol version",
    CloseCode.NO_PROTOCOL: "No protocol version supplied",
    CloseCode.UNAUTHORIZED: "Connection is unauthorized",
    CloseCode.OVER_CAPACITY: "Over capacity",
    CloseCode.RECONNECT: "Server is restarting, reconnect",
    CloseCode.PONG_NOT_RECEIVED: "Pong reply not received",
}
