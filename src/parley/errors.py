"""Every error Parley raises on purpose, each carrying what the two translators need.

The session turns one into a `pusher:error` event (and a close when `close` is set);
the HTTP API turns one into a status and a JSON body. Nothing else catches them.
"""

from __future__ import annotations


class ParleyError(Exception):
    """Base class. `code` is the Pusher error code (None for Pusher's non-fatal errors)."""

    code: int | None = None
    http_status: int = 400
    close: bool = False

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class StoreUnavailable(ParleyError):
    """A store cannot do its work now (a full or read-only disk, an unreachable database):
    nothing was changed, and the same call may succeed later. 503 over HTTP."""

    http_status = 503


class ProtocolError(ParleyError):
    """A client frame was refused; the connection stays open (Pusher sends code null)."""


class RateLimited(ProtocolError):
    code = 4301
    http_status = 429


class WatchlistTooLong(ProtocolError):
    code = 4302


class ConnectionRefused(ParleyError):
    """The connection must end: a `pusher:error` with `code`, then a close with the same code."""

    close = True

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message, code=code)


class InvalidText(ParleyError):
    """A client's text message is not UTF-8: the WebSocket fails with 1007 (RFC 6455 8.1),
    with no pusher:error before the close."""

    code = 1007


class InvalidArgument(ParleyError):
    """A request's argument is out of its domain (a history page's `limit`, say): a 400 from
    the HTTP API, a `pusher:error` on a connection."""


class Conflict(ParleyError):
    """The request contradicts what is stored (a key registered already, a cap reached): 409."""

    http_status = 409


class NotAllowed(ParleyError):
    """The caller may not do this (not a member, blocked, a bot outside its conversations):
    403 over HTTP."""

    http_status = 403


class UnknownResource(ParleyError):
    """What the request names does not exist (a key id): 404 over HTTP."""

    http_status = 404


class ConfigError(ParleyError):
    """Bad settings; the message names the key."""


class HttpError(ParleyError):
    """An HTTP API request was refused. Raised by the HTTP API only: the core raises the
    errors above, which the API translates by their `http_status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = status


class BadRequest(HttpError):
    def __init__(self, message: str) -> None:
        super().__init__(400, message)


class Unauthorized(HttpError):
    def __init__(self, message: str) -> None:
        super().__init__(401, message)


class Forbidden(HttpError):
    def __init__(self, message: str) -> None:
        super().__init__(403, message)


class NotFound(HttpError):
    def __init__(self, message: str) -> None:
        super().__init__(404, message)


class PayloadTooLarge(HttpError):
    def __init__(self, message: str) -> None:
        super().__init__(413, message)


class CannotStart(Exception):
    """The server cannot start as configured (say, another process owns its data): `parley
    serve` prints the message and exits with status 1, without a traceback."""
