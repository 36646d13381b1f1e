"""Pusher's HMAC-SHA256 signatures (PUSHER.md §2 and §3.1), always over the raw strings received."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from parley.errors import Unauthorized


def sign(secret: str, message: str) -> str:
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def channel_auth_string(socket_id: str, channel: str, channel_data: str | None = None) -> str:
    if channel_data is None:
        return f"{socket_id}:{channel}"
    return f"{socket_id}:{channel}:{channel_data}"


def user_auth_string(socket_id: str, user_data: str) -> str:
    return f"{socket_id}::user::{user_data}"


def make_token(key: str, secret: str, message: str) -> str:
    """What an auth endpoint returns: `key:hexsig`."""
    return f"{key}:{sign(secret, message)}"


def token_problem(token: object, key: str, secret: str, message: str) -> str | None:
    """Why `token` is not a valid `key:hexsig` for `message`, or None when it is."""
    if not isinstance(token, str) or not token:
        return "Missing auth signature"
    got_key, sep, got_sig = token.partition(":")
    if not sep:
        return "Invalid auth format: expected key:signature"
    if not hmac.compare_digest(got_key.encode(), key.encode()):
        return f"Invalid key in auth data: '{got_key}'"
    expected = sign(secret, message)
    if not hmac.compare_digest(got_sig.encode(), expected.encode()):
        return f"Invalid signature: Expected HMAC SHA256 hex digest of {message}"
    return None


def api_string_to_sign(method: str, path: str, params: Iterable[tuple[str, str]]) -> str:
    """METHOD\\nPATH\\nsorted lower-cased query without auth_signature, unescaped."""
    pairs = sorted((k.lower(), v) for k, v in params if k.lower() != "auth_signature")
    query = "&".join(f"{k}={v}" for k, v in pairs)
    return f"{method.upper()}\n{path}\n{query}"


def verify_api_request(
    *,
    method: str,
    path: str,
    params: list[tuple[str, str]],
    body: bytes,
    key: str,
    secret: str,
    now: float,
    window_s: float = 600,
) -> None:
    """Raise Unauthorized naming the problem unless the request is signed per PUSHER.md §3.1."""
    query = {k.lower(): v for k, v in params}
    if query.get("auth_key") != key:
        raise Unauthorized("Missing or unknown auth_key for this app")
    if query.get("auth_version", "1.0") != "1.0":
        raise Unauthorized("Unsupported auth_version (expected 1.0)")
    timestamp = query.get("auth_timestamp")
    if timestamp is None:
        raise Unauthorized("Missing auth_timestamp")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        # every SDK sends whole seconds; float() would take "nan", "inf" and "1e9"
        raise Unauthorized(
            f"Invalid auth_timestamp {timestamp[:40]!r}: expected whole seconds since the epoch"
        )
    if abs(now - int(timestamp)) > window_s:
        raise Unauthorized(
            f"Timestamp expired: Given timestamp ({timestamp}) not within "
            f"{int(window_s)}s of server time ({int(now)})"
        )
    if ("body_md5" in query or body) and query.get("body_md5") != hashlib.md5(body).hexdigest():
        raise Unauthorized("body_md5 does not match the MD5 of the request body")
    signature = query.get("auth_signature")
    if not signature:
        raise Unauthorized("Missing auth_signature")
    string_to_sign = api_string_to_sign(method, path, params)
    expected = sign(secret, string_to_sign)
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        raise Unauthorized(
            f"Invalid signature: you should have sent HmacSHA256Hex({string_to_sign!r}, "
            "your_secret_key)"
        )


def signed_api_query(
    method: str, path: str, params: dict[str, str], body: bytes, key: str, secret: str, now: float
) -> dict[str, str]:
    """Sign a request the way the official SDKs do (used by Parley's tools and tests)."""
    query = dict(params)
    query.update(auth_key=key, auth_timestamp=str(int(now)), auth_version="1.0")
    if body:
        query["body_md5"] = hashlib.md5(body).hexdigest()
    query["auth_signature"] = sign(secret, api_string_to_sign(method, path, query.items()))
    return query


def webhook_signature(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
