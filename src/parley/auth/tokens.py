"""Verifying the JWT a client presents at the handshake (pure: no I/O, the clock is an argument).

HS256 is keyed with the app secret; RS256, ES256 and EdDSA use the app's configured public keys
(PEM, or keys of a JWKS). Each public key is pinned to one algorithm (`PublicKey.alg`: the JWK's
`alg`, or the one its type implies), and a token is checked only against the keys pinned to the
algorithm it names, so `alg: none` and algorithm confusion (an HS256 token "signed" with a
public key, an RS256 token naming an EdDSA key's kid) are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

USER_ID_RE = re.compile(r"[A-Za-z0-9_\-=@,.;]{1,128}")
ASYMMETRIC = ("RS256", "ES256", "EdDSA")


class TokenRejected(Exception):
    """The token cannot be used; the message says why, for the client's close reason."""


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A key that verifies asymmetric tokens, pinned to the one algorithm it is for."""

    key: Any  # a cryptography public key, or a PyJWK
    alg: str  # "RS256", "ES256" or "EdDSA"
    kid: str | None  # a JWK's key id; None for a PEM key (any kid, or none)


def pem_key(text: str) -> PublicKey:
    """The key of a PEM file, pinned by its type: RSA to RS256, P-256 to ES256, Ed25519 to
    EdDSA; ValueError for any other key."""
    key = load_pem_public_key(text.encode())
    if isinstance(key, rsa.RSAPublicKey):
        return PublicKey(key, "RS256", None)
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return PublicKey(key, "ES256", None)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return PublicKey(key, "EdDSA", None)
    raise ValueError("a JWT public key must be RSA, EC P-256 or Ed25519")


def jwk_key(jwk: jwt.PyJWK) -> PublicKey:
    """A JWKS key, pinned to its `alg` (PyJWK infers it from `kty`/`crv` when absent)."""
    return PublicKey(jwk, jwk.algorithm_name, jwk.key_id)


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    info: Any
    expires_at: float | None  # Unix seconds


def verify_token(
    token: str,
    *,
    secret: str,
    audience: str,
    public_keys: tuple[PublicKey, ...] = (),
    issuer: str | None = None,
    now: float,
    leeway_s: float = 0,
) -> Identity:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise TokenRejected("token is not a valid JWT") from None
    alg = header.get("alg")
    if alg == "HS256":
        keys: tuple[Any, ...] = (secret,)
    elif alg in ASYMMETRIC and public_keys:
        kid = header.get("kid")
        pinned = [k for k in public_keys if k.alg == alg]
        if not pinned:
            raise TokenRejected(f"token algorithm {alg!r} matches none of the app's keys")
        keys = tuple(k.key for k in pinned if kid is None or k.kid in (None, kid))
        if not keys:
            raise TokenRejected(f"token key id {kid!r} is not among the app's {alg} keys")
    else:
        raise TokenRejected(f"token algorithm {alg!r} is not accepted")
    claims: dict[str, Any] | None = None
    problem = "token signature is invalid"
    for key in keys:
        try:
            # PyJWT would read the clock itself: exp and nbf are checked below against `now`.
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=audience,
                issuer=issuer,
                options={
                    "require": ["sub", "exp"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
            break
        except jwt.InvalidAudienceError:
            raise TokenRejected("token audience does not match this app") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected("token issuer is not accepted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRejected(f"token has no {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            continue
        except jwt.PyJWTError as exc:
            problem = f"token is invalid: {exc}"
            continue
    if claims is None:
        raise TokenRejected(problem)
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise TokenRejected("token 'exp' must be a number")
    if now > exp + leeway_s:
        raise TokenRejected("token expired")
    nbf = claims.get("nbf")
    if isinstance(nbf, int | float) and now + leeway_s < nbf:
        raise TokenRejected("token is not valid yet (nbf)")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not USER_ID_RE.fullmatch(sub):
        raise TokenRejected(
            "token 'sub' must be 1 to 128 characters of A-Z a-z 0-9 _ - = @ , . ; "
            "(it becomes part of channel names)"
        )
    return Identity(sub, claims.get("info"), float(exp))
