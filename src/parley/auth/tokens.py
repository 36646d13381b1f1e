"""Verifying the JWT a client presents at the handshake (pure: no I/O, the clock is an argument).

HS256 is keyed with the app secret; RS256, ES256 and EdDSA use the app's configured public keys
(PEM, or keys of a JWKS). Only the algorithms that match the configured keys are accepted, so `alg: none` and
algorithm confusion (an HS256 token "signed" with a public key) are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import jwt

USER_ID_RE = re.compile(r"[A-Za-z0-9_\-=@,.;]{1,128}")
ASYMMETRIC = ("RS256", "ES256", "EdDSA")


class TokenRejected(Exception):
    """The token cannot be used; the message says why, for the client's close reason."""


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
    public_keys: tuple[Any, ...] = (),
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
        keys = tuple(
            k
            for k in public_keys
            if not isinstance(k, jwt.PyJWK) or kid is None or k.key_id in (None, kid)
        )
        if not keys:
            raise TokenRejected(f"token key id {kid!r} is not among the app's keys")
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
