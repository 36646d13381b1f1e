"""Parley's built-in login and authorizer (apps with `auth = "builtin"`), and grants.

`auth/token` turns a username and password into a JWT; `pusher/auth` and `pusher/user-auth`
are what pusher-js's channelAuthorization and userAuthentication endpoints point at: they
answer for the user whose JWT the request carries as a Bearer token, so a browser app needs no
backend of its own. Grants are managed with a signed request (the app's backend) or by a user
holding `manage` on the resource.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from typing import Any

import jwt
import orjson

from parley.auth.origins import origin_problem
from parley.auth.signatures import channel_auth_string, make_token, user_auth_string
from parley.auth.tokens import Identity
from parley.core.access import grant_json
from parley.core.conversations import is_conversation_channel
from parley.core.node import Node
from parley.errors import BadRequest, Forbidden, HttpError, NotFound, Unauthorized
from parley.http_api.routes import Call, Router
from parley.protocol.channels import Kind, channel_name_problem, channel_type
from parley.settings import AppConfig
from parley.transport.server import Response

SOCKET_ID_RE = re.compile(r"\d+\.\d+")


class TooManyAttempts(HttpError):
    def __init__(self, retry_after: float) -> None:
        super().__init__(429, f"Too many failed logins: retry in {int(retry_after) + 1} s")
        self.retry_after = int(retry_after) + 1


def _builtin(call: Call) -> None:
    if call.app.auth != "builtin":
        raise Forbidden(
            f"App {call.app.id} authorizes through its own backend; the built-in authorizer "
            'is off (set auth = "builtin")'
        )
    problem = origin_problem(call.app, call.request.headers.get("origin"))
    if problem is not None:
        raise Forbidden(problem)


def issue_token(app: AppConfig, user_id: str, info: Any, now: float) -> tuple[str, int]:
    expires_at = int(now + app.token_ttl_s)
    claims: dict[str, Any] = {
        "sub": user_id,
        "aud": app.jwt_audience or app.key,
        "iat": int(now),
        "exp": expires_at,
    }
    if app.jwt_issuer:
        claims["iss"] = app.jwt_issuer
    if info is not None:
        claims["info"] = info
    return jwt.encode(claims, app.secret, algorithm="HS256"), expires_at


def _socket_of(node: Node, call: Call, user: Identity) -> str:
    socket_id = call.form().get("socket_id", "")
    if not SOCKET_ID_RE.fullmatch(socket_id):
        raise BadRequest("Missing or invalid socket_id")
    session = node.session(call.app, socket_id)
    if session is not None and session.user_id not in (None, user.user_id):
        raise Forbidden("That socket is connected as another user")
    return socket_id


def register(router: Router) -> None:
    @router.route("POST", "/apps/{app_id}/auth/token", "auth_token", auth="none")
    async def auth_token(node: Node, call: Call) -> Response:
        _builtin(call)
        body = call.json()
        if not isinstance(body, dict):
            raise BadRequest("Body must be a JSON object {username, password}")
        username, password = body.get("username"), body.get("password")
        if not isinstance(username, str) or not isinstance(password, str) or not username:
            raise BadRequest("Body must be {username: string, password: string}")
        keys = [f"user:{call.app.id}:{username}", f"addr:{call.request.client_ip}"]
        attempts = node.login_attempts
        assert attempts is not None
        wait, counted = await attempts.attempt(keys)
        if wait > 0:
            raise TooManyAttempts(wait)
        assert node.access is not None
        # a name with NUL is no user's (and PostgreSQL refuses to look it up)
        user = (
            None
            if "\x00" in username
            else await node.access.users.verify(call.app.id, username, password)
        )
        if user is None:
            raise Unauthorized("Unknown user, wrong password or disabled user")
        await attempts.succeeded(keys[0], keys[1], counted)
        token, expires_at = issue_token(call.app, user.name, user.info, time.time())
        return Response(
            200, orjson.dumps({"token": token, "expires_at": expires_at, "user_id": user.name})
        )

    @router.route("POST", "/apps/{app_id}/pusher/auth", "pusher_auth", auth="bearer")
    async def pusher_auth(node: Node, call: Call) -> dict[str, Any]:
        _builtin(call)
        assert call.user is not None and node.access is not None
        socket_id = _socket_of(node, call, call.user)
        channel = call.form().get("channel_name", "")
        problem = channel_name_problem(channel)
        if problem:
            raise BadRequest(problem)
        ctype = channel_type(channel)
        if not ctype.needs_auth:
            raise BadRequest(f"{channel} needs no authorization")
        if node.conversations is not None and is_conversation_channel(channel):
            problem, _ = await node.conversations.subscribe_problem(
                call.app, call.user.user_id, channel
            )
        else:
            problem = node.access.subscribe_problem(call.app, call.user.user_id, channel, ctype)
        if problem:
            raise Forbidden(problem)
        out: dict[str, Any] = {}
        channel_data = None
        if ctype.kind is Kind.PRESENCE:
            member: dict[str, Any] = {"user_id": call.user.user_id}
            if call.user.info is not None:
                member["user_info"] = call.user.info
            channel_data = orjson.dumps(member).decode()
            out["channel_data"] = channel_data
        out["auth"] = make_token(
            call.app.key, call.app.secret, channel_auth_string(socket_id, channel, channel_data)
        )
        if ctype.kind is Kind.ENCRYPTED:
            if not call.app.encryption_master_key_base64:
                raise BadRequest("Encrypted channels need the app's encryption_master_key_base64")
            master = base64.b64decode(call.app.encryption_master_key_base64)
            secret = hashlib.sha256(channel.encode() + master).digest()
            out["shared_secret"] = base64.b64encode(secret).decode()
        return out

    @router.route("POST", "/apps/{app_id}/pusher/user-auth", "pusher_user_auth", auth="bearer")
    def pusher_user_auth(node: Node, call: Call) -> dict[str, Any]:
        _builtin(call)
        assert call.user is not None
        socket_id = _socket_of(node, call, call.user)
        user: dict[str, Any] = {"id": call.user.user_id}
        if call.user.info is not None:
            user["user_info"] = call.user.info
        user_data = orjson.dumps(user).decode()
        auth = make_token(call.app.key, call.app.secret, user_auth_string(socket_id, user_data))
        return {"auth": auth, "user_data": user_data}

    # -- grants -------------------------------------------------------------------------------

    def may_manage(node: Node, call: Call, resource: str) -> None:
        if call.user is None:
            return  # a signed request: the app's backend may do anything
        assert node.access is not None
        if not node.access.manages(call.app, call.user.user_id, resource):
            raise Forbidden(f"{call.user.user_id!r} holds no 'manage' grant on {resource}")

    @router.route("POST", "/apps/{app_id}/grants", "grants_create", auth="signed_or_bearer")
    async def grants_create(node: Node, call: Call) -> Response:
        assert node.access is not None
        body = call.json()
        if not isinstance(body, dict):
            raise BadRequest("Body must be {subject, resource, operations, ttl_s?}")
        subject, resource = body.get("subject"), body.get("resource")
        operations, ttl_s = body.get("operations"), body.get("ttl_s")
        if not isinstance(subject, str) or not isinstance(resource, str):
            raise BadRequest("'subject' and 'resource' must be strings")
        if not isinstance(operations, list) or not all(isinstance(o, str) for o in operations):
            raise BadRequest("'operations' must be an array of read, write, presence, manage")
        if ttl_s is not None and (
            isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or ttl_s <= 0
        ):
            raise BadRequest("'ttl_s' must be a positive number of seconds")
        may_manage(node, call, resource)
        try:
            grant = await node.access.create(
                call.app,
                subject,
                resource,
                operations,
                ttl_s,
                call.user.user_id if call.user else None,
            )
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        # 200, as every Pusher API answer: the official SDKs raise on any other success code.
        return Response(200, orjson.dumps(grant_json(grant)))

    @router.route("GET", "/apps/{app_id}/grants", "grants_list", auth="signed_or_bearer")
    async def grants_list(node: Node, call: Call) -> dict[str, Any]:
        assert node.access is not None
        grants = await node.access.grants.list(
            call.app.id,
            subject=call.params.get("subject") or None,
            resource=call.params.get("resource") or None,
        )
        if call.user is not None:
            user_id = call.user.user_id
            grants = [g for g in grants if node.access.manages(call.app, user_id, g.resource)]
        return {"grants": [grant_json(g) for g in grants]}

    @router.route(
        "DELETE", "/apps/{app_id}/grants/{grant_id}", "grants_delete", auth="signed_or_bearer"
    )
    async def grants_delete(node: Node, call: Call) -> dict[str, Any]:
        assert node.access is not None
        (grant_id,) = call.args
        grant = await node.access.grants.get(call.app.id, grant_id)
        if grant is None:
            raise NotFound(f"No grant {grant_id!r}")
        may_manage(node, call, grant.resource)
        await node.access.delete(call.app, grant_id)
        return {}
