"""The core Session against a recording Transport: what it writes and when it closes, with
no socket and no picows."""

from __future__ import annotations

import json
import time

from parley.core.session import Session
from parley.protocol.codes import CloseCode
from tests.support.transport import APP, RecordingTransport, make_node

PATH = "/app/" + APP.key


def error_data(data: bytes) -> dict[str, object]:
    message = json.loads(data)
    assert message["event"] == "pusher:error"
    return message["data"]  # type: ignore[no-any-return]


def connected_session(
    path: str = PATH, query: str = "protocol=7"
) -> tuple[Session, RecordingTransport]:
    session = Session(make_node(), path, query, {})
    transport = RecordingTransport()
    session.connected(transport)
    return session, transport


def test_a_transport_that_does_not_open_first_gets_connection_established_written() -> None:
    session, transport = connected_session()
    assert transport.events == ["pusher:connection_established"]
    established = json.loads(transport.written[0]["data"])
    assert established["socket_id"] == session.socket_id != ""
    assert transport.closes == []


def test_disconnect_writes_the_error_frame_then_closes_with_the_code() -> None:
    session, transport = connected_session()
    transport.calls.clear()
    session.disconnect(CloseCode.UNAUTHORIZED, "user disabled")
    assert [call[0] for call in transport.calls] == ["write", "close"]
    assert error_data(transport.calls[0][1]) == {"code": 4009, "message": "user disabled"}
    assert transport.closes == [(4009, "user disabled")]
    assert session.closing


def test_disconnect_closes_with_its_own_reason_when_given_one() -> None:
    session, transport = connected_session()
    transport.calls.clear()
    session.disconnect(CloseCode.RECONNECT, "Server is shutting down, reconnect", "bye")
    assert error_data(transport.calls[0][1]) == {
        "code": 4200,
        "message": "Server is shutting down, reconnect",
    }
    assert transport.closes == [(4200, "bye")]


def test_nothing_is_written_after_a_close() -> None:
    session, transport = connected_session()
    session.close(CloseCode.NORMAL, "done")
    session.send(b'{"event":"late"}')
    session.send_many([b'{"event":"later"}'])
    assert transport.events == ["pusher:connection_established"]
    assert transport.closes == [(1000, "done")]


def test_what_is_sent_while_the_handshake_is_answered_is_returned_not_written() -> None:
    session = Session(make_node(), PATH, "protocol=7", {})
    early = session.open()
    assert [json.loads(m)["event"] for m in early] == ["pusher:connection_established"]
    transport = RecordingTransport()
    session.connected(transport)
    assert transport.calls == []  # already sent with the handshake's answer: not again
    session.send(b'{"event":"next"}')
    assert transport.events == ["next"]


def test_a_send_between_the_handshake_and_the_transport_is_dropped() -> None:
    session = Session(make_node(), PATH, "protocol=7", {})
    session.open()
    session.send(b'{"event":"lost"}')  # neither in the 101 nor on a transport
    transport = RecordingTransport()
    session.connected(transport)
    assert transport.calls == []


def test_a_refusal_during_the_handshake_is_sent_first_and_closed_once_connected() -> None:
    node = make_node()
    session = Session(node, "/app/no-such-key", "protocol=7", {})
    early = session.open()
    assert [error_data(m) for m in early] == [
        {"code": 4001, "message": "Application does not exist"}
    ]
    transport = RecordingTransport()
    session.connected(transport)
    assert transport.calls == [("close", 4001, "Application does not exist")]
    assert node.metrics.errors[("unknown", "4001")] == 1


def test_a_close_asked_for_before_the_transport_exists_is_carried_out_on_connect() -> None:
    session = Session(make_node(), PATH, "protocol=7", {})
    session.open()
    session.close(CloseCode.RECONNECT, "Server is shutting down")
    assert not session.closing  # nothing to close yet
    transport = RecordingTransport()
    session.connected(transport)
    assert transport.calls == [("close", 4200, "Server is shutting down")]
    assert session.closing


def test_a_message_is_handled_and_answered_through_the_transport() -> None:
    session, transport = connected_session()
    assert session.activity()
    session.receive(b'{"event":"pusher:ping","data":{}}')
    assert transport.events == ["pusher:connection_established", "pusher:pong"]
    assert session.node.hubs[APP.id].messages_in == 1


def test_activity_resets_the_idle_clock_and_says_whether_messages_are_taken() -> None:
    session, _ = connected_session()
    session.last_seen, session.pinged = 0.0, True
    assert session.activity()
    assert session.pinged is False and session.last_seen >= time.monotonic() - 60
    session.close(CloseCode.NORMAL, "done")
    assert not session.activity()
    refused, _ = connected_session(path="/app/no-such-key")
    assert not refused.activity()


def test_an_unexpected_error_handling_a_message_closes_with_1011() -> None:
    session, transport = connected_session()
    session.hub = None  # the node cannot handle a message of a session in no hub
    session.receive(b'{"event":"pusher:ping","data":{}}')
    assert transport.closes == [(1011, "Internal server error")]


def test_a_binary_message_is_answered_with_an_error_and_not_read() -> None:
    session, transport = connected_session()
    session.binary()
    assert error_data(transport.calls[-1][1]) == {
        "code": None,
        "message": "Binary frames are not supported: send JSON text",
    }
    assert transport.closes == []


def test_send_many_writes_in_one_call() -> None:
    session, transport = connected_session()
    session.send_many([b'{"event":"a"}', b'{"event":"b"}'])
    assert transport.calls[-1] == ("write_many", [b'{"event":"a"}', b'{"event":"b"}'])


def test_a_slow_consumer_is_counted_as_a_4100_error() -> None:
    session, _ = connected_session()
    session.slow_consumer(123)
    assert session.node.metrics.errors[(APP.id, "4100")] == 1


def test_a_disconnected_session_leaves_its_hub() -> None:
    session, _ = connected_session()
    hub = session.node.hubs[APP.id]
    assert hub.sessions.get(session.socket_id) is session
    session.disconnected()
    assert session.closing and session.socket_id not in hub.sessions


def test_the_hub_writes_to_the_transport_while_open_and_to_nothing_once_closing() -> None:
    for stop in (
        lambda session: session.close(CloseCode.NORMAL, "done"),
        Session.stalled,
        Session.disconnected,
    ):
        session, transport = connected_session()
        assert session.transport is transport  # what AppHub.broadcast writes to
        session.transport.write(b'{"event":"fanned"}')
        stop(session)
        assert session.closing and session.transport is not None
        session.transport.write(b'{"event":"late"}')
        session.transport.write_many([b'{"event":"late"}'])
        session.send(b'{"event":"late"}')
        session.close(CloseCode.NORMAL, "again")
        assert transport.events == ["pusher:connection_established", "fanned"]
        assert len(transport.closes) <= 1
