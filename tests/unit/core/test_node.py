"""Node and its Admission with the memory engines and a recording Transport: the handshake's
refusals each with its code, connection_established, client events stamped and fanned out
but not echoed, an API publish reaching subscribers, terminate_user, and the drain."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from parley.core.session import Session
from tests.support.transport import (
    APP,
    RecordingTransport,
    connect,
    make_node,
    send,
    started,
    subscribe,
)


def opened(node: object, path: str, headers: dict[str, str] | None = None) -> RecordingTransport:
    session = Session(node, path, "protocol=7", headers or {})  # type: ignore[arg-type]
    transport = RecordingTransport()
    session.connected(transport)
    return transport


@pytest.mark.parametrize(
    ("app", "path", "headers", "code"),
    [
        (APP, "/app/unknown-key", None, 4001),
        (replace(APP, enabled=False), "/app/unit-key", None, 4003),
        (
            replace(APP, check_origin=True, allowed_origins="https://ours.example"),
            "/app/unit-key",
            {"origin": "https://theirs.example"},
            4009,
        ),
    ],
)
async def test_the_handshake_refusals_carry_their_code(
    app: object, path: str, headers: dict[str, str] | None, code: int
) -> None:
    node = await started(make_node(app=app))  # type: ignore[arg-type]
    transport = opened(node, path, headers)
    assert transport.events == ["pusher:error"]
    assert transport.written[0]["data"]["code"] == code
    assert [c for c, _ in transport.closes] == [code]
    assert not node.hubs[APP.id].sessions  # nothing registered


async def test_an_allowed_origin_and_no_origin_are_admitted() -> None:
    app = replace(APP, check_origin=True, allowed_origins="https://ours.example")
    node = await started(make_node(app=app))
    for headers in ({"origin": "https://ours.example"}, {}):
        assert opened(node, "/app/unit-key", headers).events == ["pusher:connection_established"]
    assert len(node.hubs[APP.id].sessions) == 2


async def test_over_the_connection_quota_is_4004() -> None:
    node = await started(make_node(app=replace(APP, max_connections=1)))
    assert opened(node, "/app/unit-key").events == ["pusher:connection_established"]
    refused = opened(node, "/app/unit-key")
    assert refused.written[0]["data"]["code"] == 4004 and refused.closes[0][0] == 4004


async def test_a_client_event_reaches_the_others_stamped_and_not_the_sender() -> None:
    node = await started(make_node())
    alice, alice_out = connect(node)
    bob, bob_out = connect(node)
    for session in (alice, bob):
        subscribe(session, "private-room")
    send(alice, "client-typing", {"user_id": "mallory"}, channel="private-room")
    await node.delivery.idle()
    (got,) = [m for m in bob_out.written if m["event"] == "client-typing"]
    assert got["data"] == {"user_id": "mallory"}  # the claim is data, the stamp is the server's
    assert got["parley"]["publisher"] == {"type": "connection", "socket_id": alice.socket_id}
    assert "client-typing" not in alice_out.events


async def test_an_api_publish_is_delivered_once_stored_and_terminate_ends_a_user() -> None:
    node = await started(make_node())
    session, transport = connect(node)
    subscribe(session, "news")
    await node.publish(APP, "headline", '{"n":1}', ["news"])
    (got,) = [m for m in transport.written if m["event"] == "headline"]
    assert got["parley"]["offset"] == 1  # stored before it was sent
    assert (await node.history.position(APP.id, "news")).offset == 1
    assert node.terminate_user(APP, "nobody") == 0


async def test_shutdown_drains_every_connection_with_4200() -> None:
    node = await started(make_node(shutdown_grace_s=0.1))  # recorded closes never complete
    outs = [connect(node)[1] for _ in range(3)]
    await node.shutdown()
    assert [t.closes for t in outs] == [[(4200, "Server is shutting down")]] * 3
    assert node.draining
    refused = opened(node, "/app/unit-key")  # a late handshake is told to reconnect elsewhere
    assert refused.written[0]["data"]["code"] == 4200


async def test_a_refused_client_message_is_logged_with_its_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    node = await started(make_node())
    session, transport = connect(node)
    with caplog.at_level(logging.INFO, logger="parley"):
        session.receive(b"{not json")
        send(session, "client-typing", {}, "public-news")  # client events need a private channel
    sent = [w["data"] for w in transport.written if w["event"] == "pusher:error"]
    lines = [r for r in caplog.records if r.getMessage() == "client message refused"]
    logged = [(r.fields["socket_id"], r.fields["code"], r.fields["reason"]) for r in lines]  # type: ignore[attr-defined]
    assert logged == [(session.socket_id, d.get("code"), d["message"]) for d in sent]
    assert len(logged) == 2
