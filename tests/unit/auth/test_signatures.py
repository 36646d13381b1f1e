"""PUSHER.md's signature test vectors, and the API request checks."""

from __future__ import annotations

import hashlib

import pytest

from parley.auth.signatures import (
    api_string_to_sign,
    channel_auth_string,
    make_token,
    sign,
    signed_api_query,
    token_problem,
    user_auth_string,
    verify_api_request,
)
from parley.errors import Unauthorized

KEY, SECRET = "278d425bdf160c739803", "7ad3773142a6692b25b8"


def test_private_channel_vector() -> None:
    token = make_token(KEY, SECRET, channel_auth_string("1234.1234", "private-foobar"))
    assert token == (
        "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Mr. Pusher", "afaed3695da2ffd16931f457e338e6c9f2921fa133ce7dac49f529792be6304c"),
        ("Mr. Channels", "31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80"),
    ],
)
def test_presence_vectors(name: str, expected: str) -> None:
    data = '{"user_id":10,"user_info":{"name":"' + name + '"}}'
    assert sign(SECRET, channel_auth_string("1234.1234", "presence-foobar", data)) == expected


def test_user_auth_vector() -> None:
    message = user_auth_string("1234.1234", '{"id":"12345"}')
    assert message == '1234.1234::user::{"id":"12345"}'
    assert make_token(KEY, SECRET, message).endswith(
        ":4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba"
    )


def test_token_problems_name_the_fault() -> None:
    message = channel_auth_string("1.1", "private-x")
    good = make_token(KEY, SECRET, message)
    assert token_problem(good, KEY, SECRET, message) is None
    assert "Missing" in (token_problem("", KEY, SECRET, message) or "")
    assert "format" in (token_problem("nocolon", KEY, SECRET, message) or "")
    assert "Invalid key" in (
        token_problem("other:" + good.split(":")[1], KEY, SECRET, message) or ""
    )
    other_socket = make_token(KEY, SECRET, channel_auth_string("2.2", "private-x"))
    assert "Invalid signature" in (token_problem(other_socket, KEY, SECRET, message) or "")


BODY = b'{"name":"foo","channels":["project-3"],"data":"{\\"some\\":\\"data\\"}"}'


def test_api_vector_from_the_docs() -> None:
    assert hashlib.md5(BODY).hexdigest() == "ec365a775a4cd0599faeb73354201b6f"
    params = [
        ("auth_key", KEY),
        ("auth_timestamp", "1353088179"),
        ("auth_version", "1.0"),
        ("body_md5", "ec365a775a4cd0599faeb73354201b6f"),
    ]
    string = api_string_to_sign("POST", "/apps/3/events", params)
    assert string == (
        "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179"
        "&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f"
    )
    signature = sign(SECRET, string)
    assert signature == "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
    verify_api_request(
        method="POST",
        path="/apps/3/events",
        params=[*params, ("auth_signature", signature)],
        body=BODY,
        key=KEY,
        secret=SECRET,
        now=1353088179 + 599,
    )


def _signed(method: str, path: str, body: bytes, now: float, **extra: str) -> list[tuple[str, str]]:
    return list(signed_api_query(method, path, extra, body, KEY, SECRET, now).items())


def test_get_with_empty_body_md5_is_kept_in_the_signature() -> None:
    # The PyPI SDK always sends body_md5, even on GET.
    params = [
        ("auth_key", KEY),
        ("auth_timestamp", "1000"),
        ("auth_version", "1.0"),
        ("body_md5", "d41d8cd98f00b204e9800998ecf8427e"),
        ("filter_by_prefix", "presence-"),
        ("info", "user_count,subscription_count"),
    ]
    signature = sign(SECRET, api_string_to_sign("GET", "/apps/3/channels", params))
    verify_api_request(
        method="GET",
        path="/apps/3/channels",
        params=[*params, ("auth_signature", signature)],
        body=b"",
        key=KEY,
        secret=SECRET,
        now=1000,
    )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: [(k, "1" if k == "auth_timestamp" else v) for k, v in p], "Timestamp expired"),
        (lambda p: [(k, "0" * 32 if k == "body_md5" else v) for k, v in p], "body_md5"),
        (
            lambda p: [(k, "f" * 64 if k == "auth_signature" else v) for k, v in p],
            "Invalid signature",
        ),
        (lambda p: [(k, "nope" if k == "auth_key" else v) for k, v in p], "auth_key"),
        (lambda p: [(k, v) for k, v in p if k != "auth_signature"], "Missing auth_signature"),
    ],
)
def test_api_request_refusals(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    params = mutate(_signed("POST", "/apps/3/events", BODY, 5000))
    with pytest.raises(Unauthorized, match=message):
        verify_api_request(
            method="POST",
            path="/apps/3/events",
            params=params,
            body=BODY,
            key=KEY,
            secret=SECRET,
            now=5000,
        )


def test_signature_covers_the_path() -> None:
    params = _signed("POST", "/apps/3/events", BODY, 5000)
    with pytest.raises(Unauthorized, match="Invalid signature"):
        verify_api_request(
            method="POST",
            path="/apps/4/events",
            params=params,
            body=BODY,
            key=KEY,
            secret=SECRET,
            now=5000,
        )
