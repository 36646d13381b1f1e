"""The WebSocket handshake's path, query and headers read into a `Handshake` record: every
refusal the parser makes, and every form a token may take."""

from __future__ import annotations

from typing import Any

import pytest

from parley.errors import ConnectionRefused
from parley.protocol.codes import CloseCode
from parley.protocol.handshake import Handshake, parse_handshake


def parse(path: str, query: dict[str, str] | None = None, headers: Any = None) -> Handshake:
    return parse_handshake(path, {"protocol": "7"} if query is None else query, headers)


def test_pusher_path_and_query() -> None:
    handshake = parse("/app/key", {"protocol": "7", "client": "js", "version": "8.4.0"})
    assert handshake == Handshake("key", 7, None, "js", None, "", None)


@pytest.mark.parametrize("version", ["5", "6", "7"])
def test_protocol_versions_5_to_7_are_accepted(version: str) -> None:
    handshake = parse("/app/key", {"protocol": version})
    assert (handshake.protocol, handshake.refusal) == (int(version), None)


@pytest.mark.parametrize(
    "path",
    ["/", "/app", "/app/", "/app/key/", "/app/key/more", "/apps/key", "/ws/key", "/token/t/app"],
)
def test_a_path_that_names_no_app_is_refused_with_4005(path: str) -> None:
    with pytest.raises(ConnectionRefused) as refused:
        parse(path)
    assert refused.value.code == CloseCode.PATH_NOT_FOUND == 4005
    # the message names the path without the token prefix
    assert refused.value.message == "Path not found: " + path.replace("/token/t", "", 1)


def test_a_token_prefix_without_a_path_after_it_is_refused_with_4005() -> None:
    with pytest.raises(ConnectionRefused) as refused:
        parse("/token/abc")
    assert (refused.value.code, refused.value.message) == (4005, "Path not found: /token/abc")


def test_a_missing_protocol_is_kept_as_a_4008_refusal_for_the_node_to_raise() -> None:
    # not raised here: the node tells a connection with an unknown key about the key first
    handshake = parse("/app/key", {"client": "js"})
    assert handshake.app_key == "key" and handshake.protocol == 0
    assert handshake.refusal is not None
    assert (handshake.refusal.code, handshake.refusal.message) == (
        CloseCode.NO_PROTOCOL,
        "No protocol version supplied",
    )


def test_a_version_with_a_leading_zero_is_read_as_a_number() -> None:
    assert parse("/app/key", {"protocol": "07"}).protocol == 7


@pytest.mark.parametrize("version", ["4", "8", "abc", "", "7.0", "-7", "²", "99999999999999999999"])
def test_an_unsupported_protocol_is_kept_as_a_4007_refusal(version: str) -> None:
    handshake = parse("/app/key", {"protocol": version})
    assert handshake.protocol == 0 and handshake.refusal is not None
    assert handshake.refusal.code == CloseCode.UNSUPPORTED_PROTOCOL == 4007
    assert handshake.refusal.message == (f"Unsupported protocol version {version!r}: use 5, 6 or 7")


def test_token_in_the_query() -> None:
    assert parse("/app/key", {"protocol": "7", "token": "jwt.q"}).token == "jwt.q"


def test_token_as_a_path_prefix() -> None:
    handshake = parse("/token/jwt.p/app/key")
    assert (handshake.app_key, handshake.token) == ("key", "jwt.p")


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_token_in_a_bearer_header(scheme: str) -> None:
    assert parse("/app/key", headers={"authorization": f"{scheme}  jwt.h "}).token == "jwt.h"


def test_no_token_without_a_bearer_scheme() -> None:
    assert parse("/app/key", headers={"authorization": "Basic dXNlcjpwYXNz"}).token is None
    assert parse("/app/key", headers={"authorization": "Bearer"}).token is None
    assert parse("/app/key", headers={"authorization": "Bearer "}).token == ""
    assert parse("/app/key", headers={}).token is None


def test_token_precedence_path_then_query_then_header() -> None:
    header = {"authorization": "Bearer jwt.h"}
    query = {"protocol": "7", "token": "jwt.q"}
    assert parse("/token/jwt.p/app/key", query, header).token == "jwt.p"
    assert parse("/app/key", query, header).token == "jwt.q"
    assert parse("/token/jwt.p/app/key", headers=header).token == "jwt.p"


def test_an_empty_token_is_kept_empty_and_hides_the_header() -> None:
    # `?token=` counts as a token given (empty: the node admits the connection anonymously)
    header = {"authorization": "Bearer jwt.h"}
    assert parse("/app/key", {"protocol": "7", "token": ""}, header).token == ""
    assert parse("/token//app/key", headers=header).token == ""


def test_cookie_and_origin_are_read_from_the_headers() -> None:
    headers = {"cookie": "sid=abc; other=1", "origin": "https://chat.example"}
    handshake = parse("/app/key", headers=headers)
    assert (handshake.cookie, handshake.origin) == ("sid=abc; other=1", "https://chat.example")
    assert (parse("/app/key").cookie, parse("/app/key").origin) == (None, "")
    # the Origin only matters to a cookie session: without a cookie it is not read
    # read without a cookie too: an app with check_origin checks every handshake
    assert parse("/app/key", headers={"origin": "https://chat.example"}).origin == (
        "https://chat.example"
    )
