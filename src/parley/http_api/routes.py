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
from parley.http_api.quotas import AppQuota
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

    def json_object(self, allowed: set[str]) -> dict[str, Any]:
        """The body as a JSON object holding no other fields than `allowed` (400 otherwise,
        naming the unknown ones)."""
        body = self.json()
        if not isinstance(body, dict):
            raise BadRequest("Request body must be a JSON object")
        unknown = set(body) - allowed
        if unknown:
            raise BadRequest(f"Unknown fields: {', '.join(sorted(unknown))}")
        return body


Handler = Callable[[Node, Call], Awaitable[Any] | Any]


@dataclass(frozen=True, slots=True)
class Route:
    """One API route: `name` labels its metrics and log lines, `auth` says who may call it."""

    method: str
    regex: re.Pattern[str]
    name: str
    handler: Handler
    auth: str


class Router:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.signed: list[Route] = []
        self.quotas = {  # only the apps with a quota: the others pay nothing per request
            app.id: AppQuota(app)
            for app in node.apps
            if app.max_api_requests_per_second or app.max_api_concurrent_requests
        }
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
            self.signed.append(Route(method, regex, name, handler, auth))
            return handler

        return register

    async def __call__(self, request: Request) -> Response:
        route = "unmatched"
        reason: str | None = None  # a refusal's message, for its log line
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
                route_of, groups = self._match(request)
                route = route_of.name
                response = await self._call(request, route_of, groups)
        except HttpError as exc:
            response = _error(exc.http_status, exc.message)
            reason = exc.message
            retry_after = getattr(exc, "retry_after", None)
            if retry_after is not None:
                response.headers["Retry-After"] = str(retry_after)
        except ParleyError as exc:
            response = _error(exc.http_status, exc.message)
            reason = exc.message
        except Exception:
            logs.error("unexpected error in HTTP API", path=request.path, method=request.method)
            response = _error(500, "Internal server error")
        self.node.metrics.http_requests[(route, response.status)] += 1
        if 400 <= response.status < 500:
            logs.refused(
                "api request refused",
                route=route,
                method=request.method,
                path=request.path,
                status=response.status,
                reason=reason,
                peer=request.peer,
                client_ip=request.client_ip,
            )
        return response

    def _match(self, request: Request) -> tuple[Route, dict[str, str]]:
        """The route for this method and path, with its path segments; 404 or 405."""
        path_matched = False
        for route in self.signed:
            match = route.regex.match(request.path)
            if match is None:
                continue
            path_matched = True
            if route.method == request.method:
                return route, match.groupdict()
        if path_matched:
            raise HttpError(405, f"Method {request.method} not allowed on {request.path}")
        raise NotFound(f"No route for {request.method} {request.path}")

    async def _call(self, request: Request, route: Route, groups: dict[str, str]) -> Response:
        """Authenticate the caller as `route.auth` asks, then run its handler."""
        params = parse_query(request.query)
        app = self._find_app(groups.get("app_id"), params)
        user: Identity | None = None
        signed = any(k.lower() == "auth_signature" for k, _ in params)
        if route.auth == "signed" or (route.auth == "signed_or_bearer" and signed):
            verify_api_request(
                method=request.method,
                path=request.path,
                params=params,
                body=request.body,
                key=app.key,
                secret=app.secret,
                now=time.time(),
            )
        elif route.auth in ("bearer", "signed_or_bearer"):
            user = await self._bearer(request, app)
        if not app.enabled:
            raise Forbidden("Application is disabled")
        args = tuple(unquote(v) for k, v in groups.items() if k != "app_id")
        if any("\x00" in v for v in args) or any("\x00" in v for _, v in params):
            # no store takes it (PostgreSQL text): refused here, for every route at once
            raise BadRequest("NUL characters are not allowed in the path or the query")
        call = Call(request, app, {k.lower(): v for k, v in params}, args, user)
        quota = self.quotas.get(app.id)
        if quota is not None:
            quota.enter()
        try:
            result = route.handler(self.node, call)
            if hasattr(result, "__await__"):
                result = await result
        finally:
            if quota is not None:
                quota.leave()
        if isinstance(result, Response):
            return result
        return Response(200, orjson.dumps(result))

    async def _bearer(self, request: Request, app: AppConfig) -> Identity:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer "):
            raise Unauthorized("Missing 'Authorization: Bearer <token>' (or a signed request)")
        try:
            identity = self.node.identities.verify_token(app, header[7:].strip())
        except TokenRejected as exc:
            raise Unauthorized(f"Invalid bearer token: {exc}") from None
        access = self.node.access
        problem = await access.identity_problem(app, identity.user_id) if access else None
        if problem is not None:
            raise Unauthorized(f"Bearer token refused: {problem}")
        return identity

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
