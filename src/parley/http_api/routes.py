"""Routing, signature checks and error translation for every HTTP request.

Handlers get a verified `Call` and return JSON-able values; a ParleyError anywhere becomes a
4xx with `{"error": message}`; anything unexpected a 500 with no details (logged).
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, unquote_plus

import orjson

from parley import logs
from parley.auth.signatures import verify_api_request
from parley.auth.tokens import Identity, TokenRejected
from parley.core.node import Node
from parley.errors import BadRequest, Forbidden, HttpError, NotFound, ParleyError, Unauthorized
from parley.protocol import frames
from parley.settings import AppConfig
from parley.transport.server import Request, Response


@dataclass(slots=True)
class Call:
    request: Request
    app: AppConfig
    params: dict[str, str]
    args: tuple[str, ...]
    # Who is calling: None for a request signed with the app secret (the app's backend) or an
    # unauthenticated route; the verified JWT identity for a Bearer call.
    user: Identity | None = None

    def form(self) -> dict[str, str]:
        """A form-encoded body (what pusher-js's auth requests send), or a JSON object."""
        ctype = self.request.headers.get("content-type", "")
        if "json" in ctype:
            body = self.json()
            if not isinstance(body, dict):
                raise BadRequest("Request body must be a JSON object")
            return {k: str(v) for k, v in body.items()}
        return dict(parse_qsl(self.request.body.decode("utf-8", "replace"), keep_blank_values=True))

    def json(self) -> Any:
        try:
            return frames.loads(self.request.body or b"{}")
        except frames.BadJson as exc:
            raise BadRequest(f"Request body is {exc}") from None


Handler = Callable[[Node, Call], Awaitable[Any] | Any]


class Router:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.signed: list[tuple[str, re.Pattern[str], str, Handler, str]] = []
        self.unsigned: dict[tuple[str, str], Callable[[Request], Awaitable[Response]]] = {}

    def route(
        self, method: str, pattern: str, name: str, auth: str = "signed"
    ) -> Callable[[Handler], Handler]:
        """A route; `pattern` uses {app_id} and other {names} for path segments. `auth` is
        "signed" (Pusher's request signature), "bearer" (a JWT for the app), "signed_or_bearer",
        or "none"."""
        regex = re.compile(
            "^" + re.sub(r"\{(\w+)\}", lambda m: rf"(?P<{m.group(1)}>[^/]+)", pattern) + "$"
        )

        def register(handler: Handler) -> Handler:
            self.signed.append((method, regex, name, handler, auth))
            return handler

        return register

    async def __call__(self, request: Request) -> Response:
        route = "unmatched"
        try:
            if request.method == "OPTIONS":
                route = "preflight"
                response = Response(
                    204,
                    headers={
                        "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
                        "Access-Control-Allow-Headers": "Content-Type, Authorization, X-Socket-ID",
                        "Access-Control-Max-Age": "600",
                    },
                )
            elif (request.method, request.path) in self.unsigned:
                route = request.path
                response = await self.unsigned[(request.method, request.path)](request)
            else:
                route, response = await self._signed(request)
        except HttpError as exc:
            response = _error(exc.http_status, exc.message)
            retry_after = getattr(exc, "retry_after", None)
            if retry_after is not None:
                response.headers["Retry-After"] = str(retry_after)
        except ParleyError as exc:
            response = _error(exc.http_status, exc.message)
        except Exception:
            logs.error("unexpected error in HTTP API", path=request.path, method=request.method)
            response = _error(500, "Internal server error")
        self.node.metrics.http_requests[(route, response.status)] += 1
        if response.status >= 400 and route not in ("unmatched",):
            logs.info("api request refused", route=route, status=response.status, peer=request.peer)
        return response

    async def _signed(self, request: Request) -> tuple[str, Response]:
        path_matched = False
        for method, regex, name, handler, auth in self.signed:
            match = regex.match(request.path)
            if match is None:
                continue
            path_matched = True
            if method != request.method:
                continue
            groups = match.groupdict()
            params = parse_query(request.query)
            app = self._find_app(groups.get("app_id"), params)
            user: Identity | None = None
            signed = any(k.lower() == "auth_signature" for k, _ in params)
            if auth == "signed" or (auth == "signed_or_bearer" and signed):
                verify_api_request(
                    method=request.method,
                    path=request.path,
                    params=params,
                    body=request.body,
                    key=app.key,
                    secret=app.secret,
                    now=time.time(),
                )
            elif auth in ("bearer", "signed_or_bearer"):
                user = self._bearer(request, app)
            if not app.enabled:
                raise Forbidden("Application is disabled")
            args = tuple(unquote(v) for k, v in groups.items() if k != "app_id")
            call = Call(request, app, {k.lower(): v for k, v in params}, args, user)
            result = handler(self.node, call)
            if hasattr(result, "__await__"):
                result = await result
            if isinstance(result, Response):
                return name, result
            return name, Response(200, orjson.dumps(result))
        if path_matched:
            return "unmatched", _error(
                405, f"Method {request.method} not allowed on {request.path}"
            )
        raise NotFound(f"No route for {request.method} {request.path}")

    def _bearer(self, request: Request, app: AppConfig) -> Identity:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer "):
            raise Unauthorized("Missing 'Authorization: Bearer <token>' (or a signed request)")
        try:
            return self.node.identities.verify_token(app, header[7:].strip())
        except TokenRejected as exc:
            raise Unauthorized(f"Invalid bearer token: {exc}") from None

    def _find_app(self, app_id: str | None, params: list[tuple[str, str]]) -> AppConfig:
        if app_id is not None:
            app = self.node.app(app_id)
            if app is None:
                raise NotFound(f"Unknown app {app_id!r}")
            return app
        # The PyPI SDK's unprefixed terminate path: the app comes from auth_key.
        key = next((v for k, v in params if k.lower() == "auth_key"), None)
        app = self.node.apps_by_key.get(key or "")
        if app is None:
            raise Unauthorized("Missing or unknown auth_key")
        return app


def parse_query(query: str) -> list[tuple[str, str]]:
    """`parse_qsl(query, keep_blank_values=True)`, but decoding only the pairs that need it:
    signed API calls carry half a dozen plain parameters, and this runs on every one."""
    out: list[tuple[str, str]] = []
    for part in query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        if "%" in key or "+" in key:
            key = unquote_plus(key)
        if "%" in value or "+" in value:
            value = unquote_plus(value)
        out.append((key, value))
    return out


def _error(status: int, message: str) -> Response:
    return Response(status, orjson.dumps({"error": message, "status": status}))
