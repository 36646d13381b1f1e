"""Handshake JWT verification: what is accepted and every reason for refusing."""

from __future__ import annotations

import json

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from parley.auth.tokens import PublicKey, TokenRejected, jwk_key, pem_key, verify_token

SECRET, AUD, NOW = "app-secret-long-enough-for-hs256-0123456789", "app-key", 1_800_000_000.0


def hs(claims: dict, secret: str = SECRET) -> str:  # type: ignore[type-arg]
    return jwt.encode({"aud": AUD, "exp": NOW + 60, **claims}, secret, algorithm="HS256")


def check(token: str, **kw) -> object:  # type: ignore[no-untyped-def]
    return verify_token(token, secret=SECRET, audience=AUD, now=NOW, **kw)


def test_hs256_identity_with_info() -> None:
    identity = check(hs({"sub": "alice", "info": {"name": "Alice"}}))
    assert (identity.user_id, identity.info, identity.expires_at) == (
        "alice",
        {"name": "Alice"},
        NOW + 60,
    )  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (hs({"sub": "a", "exp": NOW - 1}), "expired"),
        (hs({"sub": "a", "nbf": NOW + 30}), "not valid yet"),
        (hs({"sub": "a", "aud": "other"}), "audience"),
        (hs({"sub": "a"}, secret="wrong-secret-that-is-long-enough-0123456789"), "signature"),
        (hs({"sub": "bad name"}), "'sub'"),
        (hs({"sub": "x" * 129}), "'sub'"),
        (jwt.encode({"aud": AUD, "exp": NOW + 60}, SECRET, algorithm="HS256"), "'sub'"),
        ("not-a-jwt", "not a valid JWT"),
        (jwt.encode({"sub": "a", "aud": AUD, "exp": NOW + 60}, None, algorithm="none"), "'none'"),
        (
            jwt.encode({"sub": "a", "aud": AUD, "exp": NOW + 60}, SECRET * 2, algorithm="HS512"),
            "'HS512'",
        ),
    ],
)
def test_refusals_say_why(token: str, reason: str) -> None:
    with pytest.raises(TokenRejected, match=reason):
        check(token)


def test_issuer_is_checked_when_configured() -> None:
    assert check(hs({"sub": "a", "iss": "me"}), issuer="me")
    with pytest.raises(TokenRejected, match="issuer"):
        check(hs({"sub": "a", "iss": "you"}), issuer="me")


def _pem(private_key) -> str:  # type: ignore[no-untyped-def]
    return (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.mark.parametrize(
    ("make", "alg"),
    [
        (lambda: ec.generate_private_key(ec.SECP256R1()), "ES256"),
        (ed25519.Ed25519PrivateKey.generate, "EdDSA"),
    ],
)
def test_asymmetric_keys_and_no_algorithm_confusion(make, alg: str) -> None:  # type: ignore[no-untyped-def]
    key = make()
    public = pem_key(_pem(key))
    token = jwt.encode({"sub": "bob", "aud": AUD, "exp": NOW + 60}, key, algorithm=alg)
    assert check(token, public_keys=(public,)).user_id == "bob"  # type: ignore[attr-defined]
    with pytest.raises(TokenRejected):
        check(token)  # no public key configured: refused
    # An HS256 token "signed" with the public key text must not pass as the public key.
    forged = jwt.encode(
        {"sub": "bob", "aud": AUD, "exp": NOW + 60}, SECRET + "x", algorithm="HS256"
    )
    with pytest.raises(TokenRejected, match="signature"):
        check(forged, public_keys=(public,))


def test_each_key_is_pinned_to_its_algorithm() -> None:
    """A token is checked only against the keys pinned to the algorithm it names: an RS256
    token naming an EdDSA key's kid is refused before any signature check."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    ed_jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(ed_key.public_key()))
    keys = (jwk_key(jwt.PyJWK({**ed_jwk, "kid": "ed"})),)
    assert keys[0].alg == "EdDSA"
    good = jwt.encode(
        {"sub": "bob", "aud": AUD, "exp": NOW + 60},
        ed_key,
        algorithm="EdDSA",
        headers={"kid": "ed"},
    )
    assert check(good, public_keys=keys).user_id == "bob"  # type: ignore[attr-defined]
    confused = jwt.encode(
        {"sub": "bob", "aud": AUD, "exp": NOW + 60},
        rsa_key,
        algorithm="RS256",
        headers={"kid": "ed"},
    )
    with pytest.raises(TokenRejected, match="'RS256' matches none of the app's keys"):
        check(confused, public_keys=keys)
    # with an RSA key beside it, the RS256 token is tried against the RSA key only
    both = (*keys, pem_key(_pem(rsa_key)))
    assert [k.alg for k in both] == ["EdDSA", "RS256"]
    assert check(confused, public_keys=both).user_id == "bob"  # type: ignore[attr-defined]
    other_kid = jwt.encode(
        {"sub": "bob", "aud": AUD, "exp": NOW + 60}, ed_key, algorithm="EdDSA", headers={"kid": "x"}
    )
    with pytest.raises(TokenRejected, match="key id 'x' is not among the app's EdDSA keys"):
        check(other_kid, public_keys=both)


def test_a_jwk_declaring_another_algorithm_does_not_verify_this_one() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key()))
    pinned = jwk_key(jwt.PyJWK({**ec_jwk, "alg": "ES256", "kid": "e"}))
    token = jwt.encode({"sub": "a", "aud": AUD, "exp": NOW + 60}, ec_key, algorithm="ES256")
    assert check(token, public_keys=(pinned,))
    as_eddsa = PublicKey(pinned.key, "EdDSA", "e")  # the same key pinned elsewhere
    with pytest.raises(TokenRejected, match="'ES256' matches none"):
        check(token, public_keys=(as_eddsa,))


def test_pem_keys_of_other_types_are_refused() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ValueError, match="RSA, EC P-256 or Ed25519"):
        pem_key(_pem(p384))
    with pytest.raises(ValueError):
        pem_key("not a pem")
