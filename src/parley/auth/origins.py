"""An app's Origin policy: which web pages may open its WebSocket connections and call its
built-in auth endpoints.

`allowed_origins` lists them (comma-separated, exact `scheme://host[:port]`). Cookie
sessions always need the page's origin among them; with `check_origin` on, so does every
WebSocket handshake and built-in auth call that carries an Origin. A request without one
(a server, a native app) is not a page's and passes: the check stops other sites' pages, not
clients that can set any header they like.
"""

from __future__ import annotations

from parley.settings import AppConfig


def allowed_origins(app: AppConfig) -> list[str]:
    return [o.strip() for o in app.allowed_origins.split(",") if o.strip()]


def origin_problem(app: AppConfig, origin: str | None) -> str | None:
    """Why a request from `origin` is refused by the app's `check_origin`, or None."""
    if not app.check_origin or not origin or origin in allowed_origins(app):
        return None
    return f"Origin {origin} is not allowed for app {app.id} (allowed_origins)"
