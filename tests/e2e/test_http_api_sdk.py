"""The HTTP API (PUSHER.md §3) driven by the official PyPI `pusher` SDK, checked by raw
WebSocket clients; requests the SDK refuses to send are signed by hand (§3.1)."""

from __future__ import annotations

import base64
import http.client
import json
import time
from collections.abc import Iterator

import nacl.secret
import pusher
import pytest
from pusher.errors import PusherBadAuth, PusherBadRequest, PusherBadStatus, PusherForbidden

from tests.support.pusher_raw import (
    ApiResponse,
    ClientPool,
    RawClient,
    channel_auth,
    presence_data,
    running,
    sdk,
    sign_query,
    signed_request,
    unique,
    user_auth,
)
from tests.support.server import ParleyServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server() -> Iterator[ParleyServer]:
    """One server for the tests that only use fresh channel and user names."""
    with running({"PARLEY_APP_CLIENT_EVENTS": "true"}) as srv:
        yield srv


@pytest.fixture
def fresh() -> Iterator[ParleyServer]:
    """A server of its own, for tests that list every channel."""
    with running({"PARLEY_APP_CLIENT_EVENTS": "true"}) as srv:
        yield srv


@pytest.fixture
def pool() -> Iterator[ClientPool]:
    p = ClientPool()
    yield p
    p.close_all()


@pytest.fixture
def api(server: ParleyServer) -> pusher.Pusher:
    return sdk(server)


def error_body(response: ApiResponse, status: int, contains: str) -> dict[str, object]:
    """A refused API request: the status, and a JSON body whose error names the problem."""
    assert response.status == status, (response.status, response.body)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str), body
    assert contains.lower() in body["error"].lower(), body
    return body


def sdk_error(exc: BaseException, contains: str) -> dict[str, object]:
    """The SDK puts the response body (after "STATUS: " for PusherBadStatus) in the message."""
    text = str(exc)
    body = json.loads(text.split(": ", 1)[1] if isinstance(exc, PusherBadStatus) else text)
    assert contains.lower() in body["error"].lower(), body
    return body


def signed_in(pool: ClientPool, srv: ParleyServer, user_id: str) -> RawClient:
    client = pool.connect(srv)
    user_data = json.dumps({"id": user_id})
    client.send_event(
        "pusher:signin",
        {
            "auth": user_auth(srv.key, srv.secret, client.socket_id, user_data),
            "user_data": user_data,
        },
    )
    client.expect("pusher:signin_success")
    return client


def presence_member(pool: ClientPool, srv: ParleyServer, channel: str, user_id: str) -> RawClient:
    client = pool.connect(srv)
    client.subscribe(channel, key=srv.key, secret=srv.secret, channel_data=presence_data(user_id))
    return client


# -- trigger ----------------------------------------------------------------------------------


def test_trigger_to_one_channel_delivers_the_data_string_verbatim(
    server: ParleyServer, api: pusher.Pusher, pool: ClientPool
) -> None:
    channel = unique("news-")
    client = pool.connect(server)
    client.subscribe(channel)
    assert api.trigger(channel, "story", {"title": "héllo", "n": 1}) == {}
    frame = client.expect("story", channel)
    # the SDK's own string (json.dumps, ensure_ascii=False), byte for byte
    assert frame["data"] == json.dumps({"title": "héllo", "n": 1}, ensure_ascii=False)
    api.trigger(channel, "plain", "not json at all")
    assert client.expect("plain", channel)["data"] == "not json at all"


def test_trigger_to_several_channels_reaches_each(
    server: ParleyServer, api: pusher.Pusher, pool: ClientPool
) -> None:
    channels = [unique("multi-"), unique("private-"), unique("presence-")]
    subscribers = []
    for channel in channels:
        client = pool.connect(server)
        cd = presence_data("someone") if channel.startswith("presence-") else None
        client.subscribe(channel, key=server.key, secret=server.secret, channel_data=cd)
        subscribers.append(client)
    api.trigger(channels, "everywhere", {"k": "v"})
    for client, channel in zip(subscribers, channels, strict=False):
        frame = client.expect("everywhere", channel)
        assert json.loads(frame["data"]) == {"k": "v"}


def test_trigger_with_socket_id_excludes_that_connection(
    server: ParleyServer, api: pusher.Pusher, pool: ClientPool
) -> None:
    channel = unique("room-")
    sender, other = pool.connect(server), pool.connect(server)
    sender.subscribe(channel)
    other.subscribe(channel)
    api.trigger(channel, "to-others", {"x": 1}, socket_id=sender.socket_id)
    other.expect("to-others", channel)
    api.trigger(channel, "to-all", {"x": 2})
    # frames to one connection keep their order: `to-all` arriving first proves exclusion
    sender.expect("to-all", channel, forbid=lambda f: f["event"] == "to-others")
    other.expect("to-all", channel)


def test_trigger_with_info_returns_counts_per_channel(
    server: ParleyServer, pool: ClientPool
) -> None:
    public, presence = unique("pub-"), unique("presence-")
    pool.connect(server).subscribe(public)
    presence_member(pool, server, presence, "u1")
    presence_member(pool, server, presence, "u1")  # same user, second connection
    presence_member(pool, server, presence, "u2")
    # the PyPI SDK cannot ask for `info` on trigger: a hand-signed request
    response = signed_request(
        server,
        "POST",
        f"/apps/{server.app_id}/events",
        body={
            "name": "counted",
            "data": "{}",
            "channels": [public, presence],
            "info": "user_count,subscription_count",
        },
    )
    assert response.status == 200, response.body
    channels = response.json()["channels"]
    assert channels[public] == {"subscription_count": 1}
    assert channels[presence]["user_count"] == 2
    assert channels[presence].get("subscription_count", 3) == 3


def test_trigger_accepts_a_single_channel_field(server: ParleyServer, pool: ClientPool) -> None:
    channel = unique("single-")
    client = pool.connect(server)
    client.subscribe(channel)
    response = signed_request(
        server,
        "POST",
        f"/apps/{server.app_id}/events",
        body={"name": "php-style", "data": '{"a":1}', "channel": channel},
    )
    assert response.status == 200 and response.json() == {}
    assert response.headers["content-type"].startswith("application/json")
    assert client.expect("php-style", channel)["data"] == '{"a":1}'


def test_trigger_batch_delivers_each_and_returns_index_aligned_info(
    server: ParleyServer, api: pusher.Pusher, pool: ClientPool
) -> None:
    public, presence = unique("pub-"), unique("presence-")
    watcher = pool.connect(server)
    watcher.subscribe(public)
    presence_member(pool, server, presence, "u1")
    assert (
        api.trigger_batch(
            [
                {"channel": public, "name": "b0", "data": {"i": 0}},
                {"channel": public, "name": "b1", "data": "one"},
            ]
        )
        == {}
    )
    assert json.loads(watcher.expect("b0", public)["data"]) == {"i": 0}
    assert watcher.expect("b1", public)["data"] == "one"

    result = api.trigger_batch(
        [
            {"channel": public, "name": "c0", "data": {}, "info": "subscription_count"},
            {"channel": presence, "name": "c1", "data": {}, "info": "user_count"},
            {"channel": public, "name": "c2", "data": {}},
        ]
    )
    assert result == {"batch": [{"subscription_count": 1}, {"user_count": 1}, {}]}


# -- channels, channel, users -----------------------------------------------------------------


def test_channels_info_lists_occupied_channels_with_filters(
    fresh: ParleyServer, pool: ClientPool
) -> None:
    api = sdk(fresh)
    pool.connect(fresh).subscribe("lobby")
    pool.connect(fresh).subscribe("private-room", key=fresh.key, secret=fresh.secret)
    presence_member(pool, fresh, "presence-team", "u1")
    presence_member(pool, fresh, "presence-team", "u1")
    presence_member(pool, fresh, "presence-team", "u2")
    presence_member(pool, fresh, "presence-solo", "u3")
    api.trigger("never-subscribed", "e", {})  # not occupied: not listed

    assert api.channels_info() == {
        "channels": {
            "lobby": {},
            "private-room": {},
            "presence-team": {},
            "presence-solo": {},
        }
    }
    assert api.channels_info(prefix_filter="private-") == {"channels": {"private-room": {}}}
    assert api.channels_info(prefix_filter="presence-", attributes=["user_count"]) == {
        "channels": {"presence-team": {"user_count": 2}, "presence-solo": {"user_count": 1}}
    }
    with pytest.raises(PusherBadRequest) as refused:
        api.channels_info(attributes=["user_count"])  # user_count needs presence-
    sdk_error(refused.value, "presence-")
    with pytest.raises(PusherBadRequest) as refused:
        api.channels_info(prefix_filter="private-", attributes=["user_count"])
    sdk_error(refused.value, "presence-")


def test_channel_info_occupied_counts_and_errors(
    server: ParleyServer, api: pusher.Pusher, pool: ClientPool
) -> None:
    public, presence = unique("pub-"), unique("presence-")
    pool.connect(server).subscribe(public)
    pool.connect(server).subscribe(public)
    presence_member(pool, server, presence, "u1")
    presence_member(pool, server, presence, "u1")

    assert api.channel_info(public) == {"occupied": True}
    assert api.channel_info(public, ["subscription_count"]) == {
        "occupied": True,
        "subscription_count": 2,
    }
    assert api.channel_info(unique("empty-")) == {"occupied": False}
    info = api.channel_info(presence, ["user_count"])
    assert info == {"occupied": True, "user_count": 1}
    with pytest.raises(PusherBadRequest) as refused:
        api.channel_info(public, ["user_count"])
    sdk_error(refused.value, "presence")


def test_channel_info_cache_and_cached_event_on_subscribe(
    server: ParleyServer, api: pusher.Pusher, pool: ClientPool
) -> None:
    cached, empty = unique("cache-"), unique("cache-")
    api.trigger(cached, "last-word", {"v": 1})  # nobody subscribed: still cached
    api.trigger(cached, "last-word", {"v": 2})
    info = api.channel_info(cached, ["cache"])
    assert info["occupied"] is False
    assert json.loads(info["cache"]["data"]) == {"v": 2}
    assert 0 < info["cache"]["ttl"] <= 1800
    assert api.channel_info(empty, ["cache"]) == {"occupied": False, "cache": None}

    client = pool.connect(server)
    client.subscribe(cached)
    assert json.loads(client.expect("last-word", cached)["data"]) == {"v": 2}
    client.subscribe(empty)
    client.expect("pusher:cache_miss", empty)
    with pytest.raises(PusherBadRequest) as refused:
        api.channel_info(unique("plain-"), ["cache"])
    sdk_error(refused.value, "cache")


def test_users_info_counts_a_user_on_two_connections_once(
    server: ParleyServer, api: pusher.Pusher, pool: ClientPool
) -> None:
    channel = unique("presence-")
    presence_member(pool, server, channel, "alice")
    presence_member(pool, server, channel, "alice")
    bob = presence_member(pool, server, channel, "bob")
    users = api.users_info(channel)["users"]
    assert sorted(u["id"] for u in users) == ["alice", "bob"]
    bob.close()
    deadline = time.monotonic() + 10
    # the server drops bob when his TCP connection ends, just after the close handshake
    while len(api.users_info(channel)["users"]) != 1:
        assert time.monotonic() < deadline, "bob never left"
        time.sleep(0.01)
    assert api.users_info(channel) == {"users": [{"id": "alice"}]}
    with pytest.raises(PusherBadRequest) as refused:
        api.users_info(unique("private-"))
    sdk_error(refused.value, "presence")


# -- users: terminate and send ----------------------------------------------------------------


def test_terminate_user_connections_closes_each_signed_in_connection_with_4009(
    server: ParleyServer, api: pusher.Pusher, pool: ClientPool
) -> None:
    user = unique("user-")
    first, second = signed_in(pool, server, user), signed_in(pool, server, user)
    bystander = signed_in(pool, server, unique("other-"))
    # presence-only identities are not signed in: terminate leaves them alone (PUSHER.md §1.10)
    presence_only = presence_member(pool, server, unique("presence-"), user)

    assert (
        api.terminate_user_connections(user) == {}
    )  # the SDK posts /users/{id}/terminate_connections
    for client in (first, second):
        client.expect_error(4009)
        assert client.expect_close()[0] == 4009
    bystander.ping()
    presence_only.ping()

    # the /apps/{app_id}/… path works as well
    third = signed_in(pool, server, user)
    response = signed_request(
        server, "POST", f"/apps/{server.app_id}/users/{user}/terminate_connections", body={}
    )
    assert response.status == 200 and response.json() == {}
    third.expect_error(4009)
    assert third.expect_close()[0] == 4009


def test_send_to_user_reaches_every_connection_of_that_user_only(
    server: ParleyServer, api: pusher.Pusher, pool: ClientPool
) -> None:
    user, other_user = unique("user-"), unique("user-")
    mine = [signed_in(pool, server, user), signed_in(pool, server, user)]
    other = signed_in(pool, server, other_user)
    api.send_to_user(user, "note", {"hello": user})
    for client in mine:  # no subscription needed
        frame = client.expect("note", f"#server-to-user-{user}")
        assert json.loads(frame["data"]) == {"hello": user}
    api.send_to_user(other_user, "note-2", {})
    other.expect("note-2", f"#server-to-user-{other_user}", forbid=lambda f: f["event"] == "note")


# -- the SDK's auth helpers -------------------------------------------------------------------


def test_sdk_authenticate_signs_private_and_presence_subscriptions(
    server: ParleyServer, api: pusher.Pusher, pool: ClientPool
) -> None:
    client = pool.connect(server)
    private = unique("private-")
    auth = api.authenticate(private, client.socket_id)
    client.subscribe(private, auth=auth["auth"])

    presence = unique("presence-")
    # the SDK's json.dumps uses ", " and ": ": the server must verify the raw string
    auth = api.authenticate(
        presence, client.socket_id, custom_data={"user_id": "u-42", "user_info": {"name": "Zoë"}}
    )
    assert ", " in auth["channel_data"]
    frame = client.subscribe(presence, auth=auth["auth"], channel_data=auth["channel_data"])
    members = json.loads(frame["data"])["presence"]
    assert members == {"ids": ["u-42"], "hash": {"u-42": {"name": "Zoë"}}, "count": 1}

    # private-encrypted-: authorised like private; the server passes the ciphertext untouched
    master_key = bytes(range(32))
    secure = sdk(server, encryption_master_key_base64=base64.b64encode(master_key).decode())
    encrypted = unique("private-encrypted-")
    auth = secure.authenticate(encrypted, client.socket_id)
    client.subscribe(encrypted, auth=auth["auth"])
    secure.trigger(encrypted, "sealed", {"secret": "plans"})
    sealed = json.loads(client.expect("sealed", encrypted)["data"])
    box = nacl.secret.SecretBox(base64.b64decode(auth["shared_secret"]))
    plain = box.decrypt(base64.b64decode(sealed["ciphertext"]), base64.b64decode(sealed["nonce"]))
    assert json.loads(plain) == {"secret": "plans"}

    # a signature for another connection is refused
    other = pool.connect(server)
    other.subscribe_frame(private, auth=api.authenticate(private, client.socket_id)["auth"])
    other.expect_error("any", "signature")


def test_sdk_authenticate_user_signs_a_signin_the_server_accepts(
    server: ParleyServer, api: pusher.Pusher, pool: ClientPool
) -> None:
    client = pool.connect(server)
    user = unique("user-")
    auth = api.authenticate_user(client.socket_id, {"id": user, "user_info": {"name": "Ann"}})
    assert ", " in auth["user_data"]
    client.send_event("pusher:signin", {"auth": auth["auth"], "user_data": auth["user_data"]})
    frame = client.expect("pusher:signin_success")
    assert frame["data"]["user_data"] == auth["user_data"]
    # signin-based presence: no channel_data, the member comes from the signin
    presence = unique("presence-")
    sub = client.subscribe(presence, auth=api.authenticate(presence, client.socket_id)["auth"])
    assert json.loads(sub["data"])["presence"]["hash"] == {user: {"name": "Ann"}}
    client.subscribe(f"#server-to-user-{user}")
    api.send_to_user(user, "welcome", {})
    client.expect("welcome", f"#server-to-user-{user}")


# -- refusals ---------------------------------------------------------------------------------


def test_data_over_10240_bytes_is_413(
    server: ParleyServer, api: pusher.Pusher, pool: ClientPool
) -> None:
    channel = unique("big-")
    client = pool.connect(server)
    client.subscribe(channel)
    with pytest.raises(PusherBadStatus) as refused:
        api.trigger(channel, "too-big", "x" * 10_241)  # under the SDK's own 30 KB check
    assert str(refused.value).startswith("413:")
    sdk_error(refused.value, "10240")
    api.trigger(channel, "just-fits", "x" * 10_240)
    client.expect("just-fits", channel, forbid=lambda f: f["event"] == "too-big")

    # the SDK refuses a batch item this big itself, so sign it by hand
    response = signed_request(
        server,
        "POST",
        f"/apps/{server.app_id}/batch_events",
        body={
            "batch": [
                {"channel": channel, "name": "ok", "data": "{}"},
                {"channel": channel, "name": "too-big", "data": "y" * 10_241},
            ]
        },
    )
    error_body(response, 413, "batch[1]")
    api.trigger(channel, "after", {})
    client.expect("after", channel, forbid=lambda f: f["event"] in ("ok", "too-big"))


def test_more_than_100_channels_is_400(server: ParleyServer) -> None:
    channels = [f"c-{i}" for i in range(101)]
    response = signed_request(
        server,
        "POST",
        f"/apps/{server.app_id}/events",
        body={"name": "e", "data": "{}", "channels": channels},
    )
    error_body(response, 400, "100")
    ok = signed_request(
        server,
        "POST",
        f"/apps/{server.app_id}/events",
        body={"name": "e", "data": "{}", "channels": channels[:100]},
    )
    assert ok.status == 200, ok.body


def test_batch_over_10_events_is_400(server: ParleyServer) -> None:
    batch = [{"channel": "c", "name": "e", "data": "{}"} for _ in range(11)]
    response = signed_request(
        server, "POST", f"/apps/{server.app_id}/batch_events", body={"batch": batch}
    )
    error_body(response, 400, "10")


@pytest.mark.parametrize("name", ["pusher:subscribe", "pusher_internal:member_added", "pusher:x"])
def test_reserved_event_names_are_400(
    server: ParleyServer, api: pusher.Pusher, pool: ClientPool, name: str
) -> None:
    channel = unique("res-")
    client = pool.connect(server)
    client.subscribe(channel)
    with pytest.raises(PusherBadRequest) as refused:
        api.trigger(channel, name, {})
    sdk_error(refused.value, "reserved")
    api.trigger(channel, "fine", {})
    client.expect("fine", channel, forbid=lambda f: f["event"] == name)


def test_non_string_data_and_missing_fields_are_400(server: ParleyServer) -> None:
    path = f"/apps/{server.app_id}/events"
    cases: list[tuple[object, str]] = [
        ({"name": "e", "data": {"an": "object"}, "channels": ["c"]}, "string"),
        ({"data": "{}", "channels": ["c"]}, "name"),
        ({"name": "e", "channels": ["c"]}, "data"),
        ({"name": "e", "data": "{}"}, "channel"),
        ({"name": "e", "data": "{}", "channels": ["bad name!"]}, "channel"),
        ({"name": "e", "data": "{}", "channels": ["c"], "socket_id": "nope"}, "socket_id"),
        (b"not json", "JSON"),
        ({"name": "e" * 201, "data": "{}", "channels": ["c"]}, "200"),
        ({"name": "e", "data": "{}", "channels": []}, "channel"),
        ({"name": "e", "data": "{}", "channels": "c"}, "channels"),
        (
            {"name": "e", "data": "{}", "channels": ["private-encrypted-x", "c"]},
            "encrypted",
        ),
        ({"name": "e", "data": "{}", "channels": ["c"], "info": "bogus"}, "bogus"),
    ]
    for body, contains in cases:
        error_body(signed_request(server, "POST", path, body=body), 400, contains)


def test_batch_items_are_checked_and_named_by_index(server: ParleyServer) -> None:
    path = f"/apps/{server.app_id}/batch_events"
    cases: list[tuple[object, str]] = [
        (
            {
                "batch": [
                    {"channel": "c", "name": "e", "data": "{}"},
                    {"channel": "bad name!", "name": "e", "data": "{}"},
                ]
            },
            "batch[1]",
        ),
        ({"batch": [{"channel": "c", "name": "pusher:x", "data": "{}"}]}, "batch[0]"),
        ({"batch": [{"channel": "c", "name": "e"}]}, "data"),
        ({"batch": []}, "batch"),
        ({"nothing": 1}, "batch"),
    ]
    for body, contains in cases:
        error_body(signed_request(server, "POST", path, body=body), 400, contains)


def test_channel_names_with_every_allowed_character_in_api_paths(
    server: ParleyServer, api: pusher.Pusher, pool: ClientPool
) -> None:
    tag = unique()
    for name in (f"presence-{tag};b=c,d@e.f_g-h", f"private-App.Models.User.{tag}", f"{tag};x=y"):
        client = pool.connect(server)
        cd = presence_data("u1") if name.startswith("presence-") else None
        client.subscribe(name, key=server.key, secret=server.secret, channel_data=cd)
        assert api.channel_info(name, ["subscription_count"]) == {
            "occupied": True,
            "subscription_count": 1,
        }
        if cd:
            assert api.users_info(name) == {"users": [{"id": "u1"}]}
        api.trigger(name, "named", {})
        client.expect("named", name)


def test_http_keep_alive_serves_several_signed_requests_on_one_connection(
    server: ParleyServer,
) -> None:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        path = f"/apps/{server.app_id}/channels"
        first_socket = None
        for _ in range(3):
            query = sign_query("GET", path, {}, b"", server.key, server.secret)
            conn.request("GET", path + "?" + "&".join(f"{k}={v}" for k, v in query.items()))
            response = conn.getresponse()
            assert response.status == 200
            assert isinstance(json.loads(response.read())["channels"], dict)
            first_socket = first_socket or conn.sock
            assert conn.sock is first_socket, "the server closed a keep-alive connection"
    finally:
        conn.close()


def test_signature_problems_are_401_with_a_json_body(server: ParleyServer) -> None:
    path = f"/apps/{server.app_id}/events"
    body = {"name": "e", "data": "{}", "channels": ["c"]}

    old = signed_request(server, "POST", path, body=body, timestamp=int(time.time()) - 700)
    error_body(old, 401, "timestamp")
    future = signed_request(server, "POST", path, body=body, timestamp=int(time.time()) + 700)
    error_body(future, 401, "timestamp")

    # signed correctly over a body_md5 that is not the MD5 of the body
    wrong_md5 = signed_request(server, "POST", path, body=body, body_md5="0" * 32)
    error_body(wrong_md5, 401, "body_md5")
    # the PyPI SDK's GET always carries the MD5 of the empty body; anything else is refused
    get_path = f"/apps/{server.app_id}/channels"
    assert signed_request(server, "GET", get_path).status == 200
    error_body(signed_request(server, "GET", get_path, body_md5="1" * 32), 401, "body_md5")

    def bad_signature(query: dict[str, str]) -> None:
        query["auth_signature"] = "f" * 64

    error_body(
        signed_request(server, "POST", path, body=body, tamper=bad_signature), 401, "signature"
    )
    wrong_secret = signed_request(server, "POST", path, body=body, secret="not-the-secret")
    error_body(wrong_secret, 401, "signature")

    def drop_signature(query: dict[str, str]) -> None:
        del query["auth_signature"]

    error_body(
        signed_request(server, "POST", path, body=body, tamper=drop_signature), 401, "signature"
    )
    # the SDK with the wrong secret
    with pytest.raises(PusherBadAuth) as refused:
        sdk(server, secret="not-the-secret").trigger("c", "e", {})
    sdk_error(refused.value, "signature")


def test_unknown_app_is_404(server: ParleyServer) -> None:
    response = signed_request(
        server, "POST", "/apps/999999/events", body={"name": "e", "data": "{}", "channels": ["c"]}
    )
    error_body(response, 404, "999999")
    with pytest.raises(PusherBadStatus) as refused:
        sdk(server, app_id="999999").channels_info()
    assert str(refused.value).startswith("404:")
    sdk_error(refused.value, "app")


# -- several apps, disabled apps --------------------------------------------------------------

APPS_TOML = """
[[apps]]
id = "5001"
key = "key-a"
secret = "secret-a"
client_events = true

[[apps]]
id = "5002"
key = "key-b"
secret = "secret-b"
client_events = true

[[apps]]
id = "5003"
key = "key-c"
secret = "secret-c"
enabled = false
"""


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ParleyServer]:
    config = tmp_path_factory.mktemp("apps") / "parley.toml"
    config.write_text(APPS_TOML)
    with running(args=["--config", str(config)]) as srv:
        yield srv


def app_url(srv: ParleyServer, key: str) -> str:
    return f"ws://{srv.host}:{srv.port}/app/{key}?protocol=7"


def test_apps_from_a_toml_config_are_isolated(multi: ParleyServer, pool: ClientPool) -> None:
    api_a = sdk(multi, app_id="5001", key="key-a", secret="secret-a")
    api_b = sdk(multi, app_id="5002", key="key-b", secret="secret-b")
    on_a = pool.connect(app_url(multi, "key-a"))
    on_b = pool.connect(app_url(multi, "key-b"))
    for client in (on_a, on_b):
        client.subscribe("shared")
        client.subscribe(
            "presence-shared",
            key=client.url.split("/app/")[1].split("?")[0],
            secret="secret-a" if client is on_a else "secret-b",
            channel_data=presence_data("a-user" if client is on_a else "b-user"),
        )

    api_a.trigger("shared", "for-a", {})
    on_a.expect("for-a", "shared")
    api_b.trigger("shared", "for-b", {})
    on_b.expect("for-b", "shared", forbid=lambda f: f["event"] == "for-a")
    on_a.ping()
    assert all(f.get("event") != "for-b" for f in on_a.seen)

    assert api_a.users_info("presence-shared") == {"users": [{"id": "a-user"}]}
    assert api_b.users_info("presence-shared") == {"users": [{"id": "b-user"}]}
    assert set(api_a.channels_info()["channels"]) == {"shared", "presence-shared"}

    # A's key and secret cannot sign for B's app id, nor B's key with A's secret
    with pytest.raises(PusherBadAuth):
        sdk(multi, app_id="5002", key="key-a", secret="secret-a").trigger("shared", "forged", {})
    with pytest.raises(PusherBadAuth):
        sdk(multi, app_id="5002", key="key-b", secret="secret-a").trigger("shared", "forged", {})
    api_b.trigger("shared", "after", {})
    on_b.expect("after", "shared", forbid=lambda f: f["event"] == "forged")

    # a subscription signed with A's secret is refused on a connection of app B
    private = unique("private-")
    on_b.subscribe_frame(private, auth=channel_auth("key-b", "secret-a", on_b.socket_id, private))
    on_b.expect_error("any", "signature")
    # the default app from PARLEY_APP_* is there too, and separate
    assert sdk(multi).channels_info() == {"channels": {}}


def test_a_disabled_app_refuses_websockets_with_4003_and_the_api_with_403(
    multi: ParleyServer, pool: ClientPool
) -> None:
    client = pool.connect(app_url(multi, "key-c"), established=False)
    client.expect_error(4003)
    assert client.expect_close()[0] == 4003
    with pytest.raises(PusherForbidden) as refused:
        sdk(multi, app_id="5003", key="key-c", secret="secret-c").trigger("c", "e", {})
    sdk_error(refused.value, "disabled")
    # the others still work
    pool.connect(app_url(multi, "key-a")).ping()


def test_the_default_app_disabled_by_environment(pool: ClientPool) -> None:
    with running({"PARLEY_APP_ENABLED": "false"}) as srv:
        client = pool.connect(srv, established=False)
        client.expect_error(4003)
        assert client.expect_close()[0] == 4003
        response = signed_request(
            srv,
            "POST",
            f"/apps/{srv.app_id}/events",
            body={"name": "e", "data": "{}", "channels": ["c"]},
        )
        error_body(response, 403, "disabled")
        with pytest.raises(PusherForbidden):
            sdk(srv).channels_info()
