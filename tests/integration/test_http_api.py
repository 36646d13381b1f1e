"""The HTTP API's queries and operations against live connections: channels, channel, users,
terminate_connections, signature refusals, and the unsigned /healthz, /readyz and /metrics."""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from pathlib import Path

import jwt
import pytest

from parley import __version__
from tests.support.inproc import InProcessApp, app_settings, serving
from tests.support.pusher_async import AsyncApi, AsyncClient, AsyncClientPool
from tests.support.pusher_raw import presence_data, sign_query, unique

pytestmark = pytest.mark.integration


async def member(
    clients: AsyncClientPool, app: InProcessApp, channel: str, user_id: str
) -> AsyncClient:
    client = await clients.connect()
    await client.subscribe(
        channel, key=app.app.key, secret=app.app.secret, channel_data=presence_data(user_id)
    )
    return client


async def test_channel_and_user_queries_follow_the_connections(
    app: InProcessApp, clients: AsyncClientPool, api: AsyncApi
) -> None:
    base = f"/apps/{app.app.id}"
    news, room = unique("news-"), unique("presence-room-")
    reader = await clients.connect()
    await reader.subscribe(news)
    alice = await member(clients, app, room, "alice")
    await member(clients, app, room, "alice")
    bob = await member(clients, app, room, "bob")
    await alice.expect_next("pusher_internal:member_added", room)

    listed = await api.signed("GET", f"{base}/channels")
    assert (listed.status, listed.json()) == (200, {"channels": {news: {}, room: {}}})
    counted = await api.signed(
        "GET", f"{base}/channels", params={"filter_by_prefix": "presence-", "info": "user_count"}
    )
    assert counted.json() == {"channels": {room: {"user_count": 2}}}
    one = await api.signed(
        "GET", f"{base}/channels/{room}", params={"info": "user_count,subscription_count"}
    )
    assert one.json() == {"occupied": True, "user_count": 2, "subscription_count": 3}
    users = await api.signed("GET", f"{base}/channels/{room}/users")
    assert sorted(u["id"] for u in users.json()["users"]) == ["alice", "bob"]

    await bob.close()
    await alice.expect_next("pusher_internal:member_removed", room)
    users = await api.signed("GET", f"{base}/channels/{room}/users")
    assert users.json() == {"users": [{"id": "alice"}]}

    await reader.send_event("pusher:unsubscribe", {"channel": news})
    await reader.ping()
    vacated = await api.signed("GET", f"{base}/channels/{news}")
    assert vacated.json() == {"occupied": False}
    assert (await api.signed("GET", f"{base}/channels")).json() == {"channels": {room: {}}}

    refused = await api.signed("GET", f"{base}/channels/{news}/users")
    assert refused.status == 400
    assert refused.json() == {
        "error": "Users are only available for presence channels",
        "status": 400,
    }
    refused = await api.signed("GET", f"{base}/channels", params={"info": "user_count"})
    assert refused.status == 400 and "filter_by_prefix=presence-" in refused.json()["error"]


async def test_requests_not_signed_by_the_app_are_401(app: InProcessApp, api: AsyncApi) -> None:
    path = f"/apps/{app.app.id}/channels"
    unsigned = await api.request("GET", path)
    assert unsigned.status == 401 and unsigned.json()["status"] == 401
    wrong = AsyncApi(app.http_url, app.app.id, app.app.key, "not-the-secret")
    try:
        forged = await wrong.signed("GET", path)
    finally:
        await wrong.close()
    assert forged.status == 401 and "signature" in forged.json()["error"].lower()
    event = {"name": "e", "channels": [unique()], "data": "x"}
    assert (await api.signed("POST", f"/apps/{app.app.id}/events", body=event)).status == 200


async def test_refusals_are_logged_and_counted_under_their_route(
    app: InProcessApp, api: AsyncApi, caplog: pytest.LogCaptureFixture
) -> None:
    forger = AsyncApi(app.http_url, app.app.id, app.app.key, "not-the-secret")
    try:
        with caplog.at_level(logging.INFO, logger="parley"):
            forged = await forger.signed(
                "POST", f"/apps/{app.app.id}/events", body={"name": "e", "channels": ["c"]}
            )
            bad_body = await api.signed("POST", f"/apps/{app.app.id}/events", body={"name": 1})
            nowhere = await api.request("GET", "/apps/nothing-here")
    finally:
        await forger.close()
    assert (forged.status, bad_body.status, nowhere.status) == (401, 400, 404)
    lines = [r for r in caplog.records if r.getMessage() == "api request refused"]
    seen = [(r.fields["route"], r.fields["status"], r.fields["reason"]) for r in lines]  # type: ignore[attr-defined]
    assert seen == [
        ("events", 401, forged.json()["error"]),
        ("events", 400, bad_body.json()["error"]),
        ("unmatched", 404, nowhere.json()["error"]),
    ]
    metrics = (await api.request("GET", "/metrics")).body.decode()
    assert 'parley_http_requests_total{route="events",status="401"} 1.0' in metrics
    assert 'parley_http_requests_total{route="events",status="400"} 1.0' in metrics


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # the test secret
async def test_a_bearer_token_reads_only_public_history_in_a_pusher_mode_app(
    app: InProcessApp, api: AsyncApi
) -> None:
    token = jwt.encode(
        {"sub": "u1", "aud": app.app.key, "exp": int(time.time()) + 60}, app.app.secret
    )
    auth = {"Authorization": f"Bearer {token}"}
    base = f"/apps/{app.app.id}/channels"
    public = await api.request("GET", f"{base}/{unique('news-')}/history", headers=auth)
    assert public.status == 200 and public.json()["events"] == []
    private = await api.request("GET", f"{base}/{unique('private-')}/history", headers=auth)
    assert private.status == 403 and "sign the request" in private.json()["error"]
    forged = jwt.encode({"sub": "u1", "aud": app.app.key}, "not-the-secret")
    bad = await api.request(
        "GET", f"{base}/news/history", headers={"Authorization": f"Bearer {forged}"}
    )
    assert bad.status == 401


@pytest.mark.parametrize("timestamp", ["nan", "inf", "-inf", "1e9", "{now}.5", " {now}", "-1"])
async def test_a_signed_request_with_a_timestamp_not_in_whole_seconds_is_401(
    app: InProcessApp, api: AsyncApi, timestamp: str
) -> None:
    """`float()` took "nan", which no window check refuses; only whole seconds are valid,
    signed or not."""
    path = f"/apps/{app.app.id}/channels"
    given = timestamp.format(now=int(time.time()))
    query = sign_query("GET", path, {}, b"", app.app.key, app.app.secret, timestamp=given)
    response = await api.request("GET", path, query)
    assert response.status == 401, response.body
    assert "auth_timestamp" in response.json()["error"], response.body


async def test_terminate_connections_closes_every_connection_of_that_user_with_4009(
    app: InProcessApp, clients: AsyncClientPool, api: AsyncApi
) -> None:
    key, secret = app.app.key, app.app.secret
    user = unique("user-")
    first, second, bystander = (
        await clients.connect(),
        await clients.connect(),
        await clients.connect(),
    )
    await first.signin(user, key=key, secret=secret)
    await second.signin(user, key=key, secret=secret)
    await bystander.signin(unique("other-"), key=key, secret=secret)
    # a presence member with that id is not signed in: terminate leaves it alone
    presence_only = await member(clients, app, unique("presence-"), user)

    response = await api.signed(
        "POST", f"/apps/{app.app.id}/users/{user}/terminate_connections", body={}
    )
    assert (response.status, response.json()) == (200, {})
    for client in (first, second):
        assert (await client.expect_error(4009))["message"] == "Connection terminated by the server"
        assert await client.expect_close() == (4009, "Connection terminated by the server")
    await bystander.ping()
    await presence_only.ping()

    # the PyPI SDK's unprefixed path (the app comes from auth_key)
    third = await clients.connect()
    await third.signin(user, key=key, secret=secret)
    response = await api.signed("POST", f"/users/{user}/terminate_connections", body={})
    assert (response.status, response.json()) == (200, {})
    await third.expect_error(4009)
    assert (await third.expect_close())[0] == 4009


async def test_healthz_readyz_and_metrics(
    app: InProcessApp, clients: AsyncClientPool, api: AsyncApi
) -> None:
    health = await api.request("GET", "/healthz")
    assert health.status == 200
    body = health.json()
    assert (body["status"], body["version"]) == ("ok", __version__)
    assert body["code"].startswith(("compiled", "source")), body

    ready = await api.request("GET", "/readyz")
    assert (ready.status, ready.json()) == (
        200,
        {"status": "ready", "apps": 1, "checks": {"broker": "memory: ok", "store": "memory: ok"}},
    )

    channel = unique("metered-")
    client = await clients.connect()
    await client.subscribe(channel)
    await api.trigger(channel, "e", "1")
    await api.trigger(channel, "e", "2")
    await client.expect_next("e", channel)
    await client.expect_next("e", channel)
    await client.send_event("pusher:subscribe", {"channel": unique("private-"), "auth": "x:y"})
    await client.expect_error(None)
    metrics = await api.request("GET", "/metrics")
    assert metrics.status == 200
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = metrics.body.decode()

    def value(sample: str) -> float:
        found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
        assert found, f"{sample} not in /metrics:\n{text}"
        return float(found.group(1))

    app_id = f'{{app_id="{app.app.id}"}}'
    assert value(f"parley_connections{app_id}") == 1
    assert value(f"parley_connections_opened_total{app_id}") == 1
    assert value(f"parley_channels{app_id}") == 1
    assert value(f"parley_subscriptions{app_id}") == 1
    assert value(f"parley_api_events_total{app_id}") == 2
    assert value(f'parley_errors_total{{app_id="{app.app.id}",code="none"}}') == 1
    assert value('parley_http_requests_total{route="events",status="200"}') == 2


async def test_metrics_behind_a_token_while_health_stays_open(tmp_path: Path) -> None:
    settings = dataclasses.replace(app_settings(tmp_path), metrics_token="scrape-me")
    async with serving(settings) as guarded:
        api = AsyncApi(guarded.http_url, guarded.app.id, guarded.app.key, guarded.app.secret)
        try:
            refused = await api.request("GET", "/metrics")
            wrong = await api.request(
                "GET", "/metrics", headers={"Authorization": "Bearer scrape-you"}
            )
            allowed = await api.request(
                "GET", "/metrics", headers={"Authorization": "Bearer scrape-me"}
            )
            health = await api.request("GET", "/healthz")
        finally:
            await api.close()
    assert (refused.status, wrong.status) == (401, 401)
    assert "metrics_token" in refused.json()["error"]
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert allowed.status == 200 and b"parley_connections" in allowed.body
    assert health.status == 200


async def test_an_apps_api_quota_refuses_with_429_and_retry_after(tmp_path: Path) -> None:
    settings = app_settings(tmp_path, max_api_requests_per_second=3)
    async with serving(settings) as limited:
        api = AsyncApi(limited.http_url, limited.app.id, limited.app.key, limited.app.secret)
        try:
            answers = [
                await api.signed("GET", f"/apps/{limited.app.id}/channels") for _ in range(5)
            ]
            forged = AsyncApi(limited.http_url, limited.app.id, limited.app.key, "wrong")
            try:  # a caller who cannot sign spends none of the app's quota
                assert (
                    await forged.signed("GET", f"/apps/{limited.app.id}/channels")
                ).status == 401
            finally:
                await forged.close()
        finally:
            await api.close()
    assert [a.status for a in answers] == [200, 200, 200, 429, 429]
    assert answers[3].headers["retry-after"] == "1"
    assert "max_api_requests_per_second" in answers[3].json()["error"]
