"""Properties of the HTTP API under generated requests, against the real app in this process
(memory store, built-in auth so that every route has a handler to reach): every route with
bodies, queries and path segments good or mistyped, signed right (so they reach the handler)
or wrong, with Bearer tokens good or not; and raw bytes that are barely HTTP. No answer is a
500 or an undocumented status, every 4xx is {"error", "status"}, and the server still
answers /healthz afterwards."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parley.http_api.builtin import issue_token
from parley.settings import AppConfig
from tests.support.fuzzing import (
    APP_USER as USER,
)
from tests.support.fuzzing import (
    assert_error_response,
    cases,
    channel_names,
    counted,
    dump,
    edge_text,
    field,
    fields,
    json_text,
    mostly,
    names,
    nested_json,
    small_json,
    small_text,
)
from tests.support.http_raw import Answer, KeptAlive, exchange
from tests.support.inproc import InProcessApp
from tests.support.pusher_raw import hmac_hex, sign_query

pytestmark = pytest.mark.fuzz


@pytest.fixture
async def client(app: InProcessApp) -> AsyncIterator[KeptAlive]:
    """One kept-alive connection for every example of a test (reopened after a close)."""
    kept = KeptAlive(app.host, app.port)
    yield kept
    await kept.close()


# -- requests ---------------------------------------------------------------------------------

event = fields(
    {
        "name": names,
        "data": mostly(st.one_of(small_text, st.builds(dump, small_json)), edge_text),
        "channel": channel_names(("news", "presence-a", "cache-a")),
    },
    {
        "channels": st.lists(channel_names(("news",)), min_size=1, max_size=4),
        "socket_id": mostly(st.just("1.2"), st.sampled_from(("12", "a.b", "", "1.2\n"))),
        "info": st.sampled_from(("user_count", "subscription_count", "x", "")),
        "idempotency_key": st.one_of(names, edge_text),
    },
)
BODIES: dict[str, st.SearchStrategy[Any]] = {
    "events": event,
    "batch_events": fields({"batch": st.lists(field(event), max_size=12)}),
    "auth_token": fields({"username": st.sampled_from((USER, "bob", "")), "password": small_text}),
    "pusher_auth": fields(
        {
            "socket_id": mostly(st.just("1.2"), st.sampled_from(("12", "1.2.3", "", "1.2\n"))),
            "channel_name": channel_names(("private-a", "presence-a", "private-encrypted-a")),
        }
    ),
    "grants_create": fields(
        {
            "subject": st.one_of(st.sampled_from((USER, "*")), names),
            "resource": channel_names(("news", "private-*", "*", "presence-a")),
            "operations": st.lists(
                st.sampled_from(("read", "write", "presence", "manage")), min_size=1, max_size=4
            ),
        },
        {"ttl_s": st.one_of(st.integers(1, 10**6), st.floats(0.001, 1e6))},
    ),
}
BODIES["pusher_user_auth"] = BODIES["pusher_auth"]
QUERY_VALUES = st.one_of(
    small_text, st.sampled_from(("", "1", "-1", "1e3", "999999999999999999999"))
)
QUERIES = fields(
    {},
    {
        "info": st.sampled_from(("user_count", "subscription_count", "cache", "x", "")),
        "filter_by_prefix": st.sampled_from(("presence-", "private-", "", "x")),
        "limit": QUERY_VALUES,
        "after": QUERY_VALUES,
        "before": QUERY_VALUES,
        "direction": st.sampled_from(("forward", "backward", "x")),
        "subject": small_text,
        "resource": small_text,
    },
)
# (method, path with {segments}, route name, how it authenticates)
ROUTES = (
    ("POST", "/apps/{app}/events", "events", "signed"),
    ("POST", "/apps/{app}/batch_events", "batch_events", "signed"),
    ("GET", "/apps/{app}/channels", "channels", "signed"),
    ("GET", "/apps/{app}/channels/{channel}", "channel", "signed"),
    ("GET", "/apps/{app}/channels/{channel}/users", "channel_users", "signed"),
    ("GET", "/apps/{app}/channels/{channel}/history", "history", "either"),
    ("DELETE", "/apps/{app}/channels/{channel}/history", "history_delete", "signed"),
    ("POST", "/apps/{app}/users/{user}/terminate_connections", "terminate", "signed"),
    ("POST", "/users/{user}/terminate_connections", "terminate", "signed"),
    ("POST", "/apps/{app}/auth/token", "auth_token", "none"),
    ("POST", "/apps/{app}/pusher/auth", "pusher_auth", "bearer"),
    ("POST", "/apps/{app}/pusher/user-auth", "pusher_user_auth", "bearer"),
    ("POST", "/apps/{app}/grants", "grants_create", "either"),
    ("GET", "/apps/{app}/grants", "grants_list", "either"),
    ("DELETE", "/apps/{app}/grants/{grant}", "grants_delete", "either"),
    ("GET", "/healthz", "healthz", "none"),
    ("GET", "/readyz", "readyz", "none"),
    ("GET", "/metrics", "metrics", "none"),
)


def app_ids(app_id: str) -> st.SearchStrategy[str]:
    return mostly(st.just(app_id), st.one_of(st.sampled_from(("1", "0", "x")), small_text), 8)


SEGMENTS = {
    "app": st.nothing(),  # app_ids(the app's id)
    "channel": channel_names(("news", "presence-a", "cache-a", "private-a")),
    "user": st.one_of(names, small_text),
    "grant": st.one_of(st.sampled_from(("1", "g1", "")), small_text),
}
METHODS = st.sampled_from(("GET", "POST", "DELETE", "PUT", "HEAD", "OPTIONS"))
SIGNATURES = mostly(st.just("good"), st.sampled_from(("none", "bad", "timestamp", "md5", "key")))
TIMESTAMPS = ("nan", "inf", "1e9", "1.5", "", "-1", "0", "99999999999999999999", "٣", " 1")


@st.composite
def api_requests(draw: st.DrawFn, app: AppConfig) -> tuple[bytes, bytes]:
    """A request for one of the routes of `app`: (head, body)."""
    key, secret = app.key, app.secret
    method, template, name, auth = draw(st.sampled_from(ROUTES))
    method = draw(mostly(st.just(method), METHODS, 9))
    path = template
    for segment, values in SEGMENTS.items():
        if "{" + segment + "}" in path:
            value = draw(values) if segment != "app" else draw(app_ids(app.id))
            safe = draw(st.sampled_from(("", "", "", ":@!$&'()*+,;=")))
            path = path.replace("{" + segment + "}", quote(value, safe=safe) or "%20")
    body_kind = draw(st.integers(0, 9))
    if name in BODIES and body_kind < 7:
        value = draw(BODIES[name])
        if name.startswith("pusher_") and body_kind < 3:
            body = "&".join(f"{quote(k)}={quote(str(v))}" for k, v in value.items()).encode()
            content_type = "application/x-www-form-urlencoded"
        else:
            body = dump(value).encode()
            content_type = "application/json"
    elif body_kind < 9:
        body = draw(st.one_of(json_text, nested_json, st.just(""))).encode()
        content_type = draw(st.sampled_from(("application/json", "text/plain", "")))
    else:
        body = draw(st.binary(max_size=64))
        content_type = draw(
            st.sampled_from(("application/json", "application/x-www-form-urlencoded"))
        )
    params = {k: str(v) for k, v in draw(QUERIES).items()}
    headers = {"Host": "x", "Content-Length": str(len(body))}
    if content_type:
        headers["Content-Type"] = content_type
    # an "either" route is called signed or with a Bearer token, one time in two each
    bearer = auth == "bearer" or (auth == "either" and draw(st.booleans()))
    signature = draw(SIGNATURES) if auth in ("signed", "either") and not bearer else "none"
    if signature != "none":
        timestamp = draw(st.sampled_from(TIMESTAMPS)) if signature == "timestamp" else None
        params = sign_query(
            method,
            path,
            params,
            body,
            "other" if signature == "key" else key,
            secret,
            timestamp=timestamp,
            body_md5=hashlib.md5(b"x").hexdigest() if signature == "md5" else None,
        )
        if signature == "bad":
            params["auth_signature"] = hmac_hex("wrong", path)
    if bearer:
        token = draw(bearer_tokens(app))
        if token is not None:
            headers["Authorization"] = "Bearer " + token
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params.items())
    target = path + ("?" + query if query or draw(st.booleans()) else "")
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (head + "\r\n").encode(), body


TOKEN_KINDS = mostly(
    st.just("good"), st.sampled_from(("expired", "stranger", "garbage", "none")), 6
)


@st.composite
def bearer_tokens(draw: st.DrawFn, app: Any) -> str | None:
    """A JWT for USER, or one expired, for an unknown user, garbage, or none at all."""
    kind = draw(TOKEN_KINDS)
    if kind == "none":
        return None
    now = time.time()
    if kind == "good":
        return issue_token(app, USER, None, now)[0]
    if kind == "expired":
        return issue_token(app, USER, None, now - 10 * app.token_ttl_s)[0]
    if kind == "stranger":
        return issue_token(app, "mallory", {"x": 1}, now)[0]
    return draw(st.sampled_from(("", "a.b.c", "x" * 300, "eyJhbGciOiJub25lIn0.e30.")))


def check(answer: Answer) -> None:
    if not answer.body:  # an answer to HEAD
        return
    assert_error_response(answer.status, answer.body)
    if answer.status == 200 and answer.headers.get("content-type") == "application/json":
        orjson.loads(answer.body)


@settings(
    max_examples=cases(10_000),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
async def test_every_route_gets_a_documented_answer(
    app: InProcessApp, client: KeptAlive, data: Any
) -> None:
    counted("http: routes")
    head, body = data.draw(api_requests(app.app), label="request")
    check(await client.request(head, body))


@pytest.mark.postgres
@settings(
    max_examples=cases(2_000),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
async def test_every_route_gets_a_documented_answer_on_postgresql(
    pg_app: InProcessApp, data: Any
) -> None:
    """The same on PostgreSQL, whose columns refuse what memory takes (a BIGINT past 64 bits
    was a 500 from the history endpoint)."""
    counted("http: routes on PostgreSQL")
    head, body = data.draw(api_requests(pg_app.app), label="request")
    client = KeptAlive(pg_app.host, pg_app.port)
    try:
        check(await client.request(head, body))
    finally:
        await client.close()


# -- raw bytes --------------------------------------------------------------------------------

HEADER_LINES = st.sampled_from(
    (
        b"Host: x",
        b"Content-Length: 5",
        b"Content-Length: -1",
        b"Content-Length: 99999999999999999999",
        b"Content-Length: 1, 2",
        b"Transfer-Encoding: chunked",
        b"Transfer-Encoding: gzip, chunked",
        b"Connection: close",
        b"Connection: keep-alive, Upgrade",
        b"Expect: 100-continue",
        b"X-Nul: a\x00b",
        b"X-Latin: \xe9\xff",
        b"no colon here",
        b" folded: line",
        b": empty name",
        b"Authorization: Bearer \x01",
        b"Content-Type: application/json",
    )
)
TARGETS = st.sampled_from(
    (
        b"/healthz",
        b"/apps/4242/events",
        b"/apps/4242/channels?info=%ZZ",
        b"*",
        b"http://x/healthz",
        b"//",
        b"/%00",
        b"/\xff",
        b"x:1",
        b"/apps/4242/channels/%E2%80%AE",
        b"",
    )
)


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    """Bytes that are HTTP, nearly, or not at all: odd methods, targets and versions, header
    lines the grammar forbids, bare LF, chunked bodies right and wrong, several pipelined."""
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(st.binary(max_size=300))
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        method = draw(
            st.sampled_from((b"GET", b"POST", b"DELETE", b"OPTIONS", b"BREW", b"G T", b""))
        )
        version = draw(
            st.sampled_from((b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1", b""))
        )
        eol = draw(st.sampled_from((b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r")))
        lines = [method + b" " + draw(TARGETS) + b" " + version]
        lines += draw(st.lists(HEADER_LINES, max_size=4))
        body = draw(st.sampled_from((b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"zz\r\n", b"{}")))
        if draw(st.integers(0, 9)) == 0:
            lines.append(b"X-Big: " + b"a" * draw(st.sampled_from((8000, 16 * 1024, 20000))))
        parts.append(eol.join(lines) + eol + eol + body)
    return b"".join(parts)


@settings(
    max_examples=cases(10_000),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=raw_requests())
async def test_raw_bytes_get_documented_answers_and_a_close(app: InProcessApp, data: bytes) -> None:
    counted("http: raw bytes")
    for answer in await exchange(app.host, app.port, data):
        if answer.status != 101:
            assert_error_response(answer.status, answer.body)


# -- found by fuzzing on PostgreSQL: NUL, which its text columns refuse (500s before) ---------


def signed(app: AppConfig, method: str, path: str, body: bytes = b"", **params: str) -> bytes:
    query = sign_query(method, path, params, body, app.key, app.secret)
    target = path + "?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
    return f"{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()


@pytest.mark.postgres
async def test_nul_characters_are_refused_before_they_reach_postgresql(
    pg_app: InProcessApp,
) -> None:
    app = pg_app.app
    base = f"/apps/{app.id}"
    event = dump({"name": "e\x00", "data": "d", "channel": "news"}).encode()
    keyed = dump({"name": "e", "data": "d", "channel": "news", "idempotency_key": "k\x00"})
    login = dump({"username": "alice\x00", "password": "x"}).encode()
    cases_ = [
        (signed(app, "POST", f"{base}/events", event), event, 400, "NUL"),
        (signed(app, "POST", f"{base}/events", keyed.encode()), keyed.encode(), 400, "NUL"),
        (signed(app, "DELETE", f"{base}/grants/g%00"), b"", 400, "NUL"),
        (signed(app, "GET", f"{base}/grants", subject="\x00"), b"", 400, "NUL"),
        (
            f"POST {base}/auth/token HTTP/1.1\r\nContent-Length: {len(login)}\r\n\r\n".encode(),
            login,
            401,
            "Unknown user",
        ),
    ]
    client = KeptAlive(pg_app.host, pg_app.port)
    try:
        for head, body, status, says in cases_:
            answer = await client.request(head, body)
            assert answer.status == status and says in answer.body.decode(), (head, answer)
    finally:
        await client.close()
