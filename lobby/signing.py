"""HS256 JSON Web Tokens (RFC 7519), compact form only: the players' tokens and the lobby's seat tickets.

PyJWT handles every algorithm, key type and option, and that generality costs about 30 µs a token here; a node
checks one for every connection, which made it a tenth of a lobby join's CPU. This module does the one case we
issue: header `{"alg": "HS256"}`, an HMAC-SHA256 signature compared in constant time, a JSON object of claims,
`exp` checked when present (`require` makes it required), `nbf`/`iat` not in the future, no leeway. The tests
check it against PyJWT both ways: each accepts what the other mints, and both refuse the same forgeries.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import time
from typing import Any

import orjson

_HEADER = b'{"alg":"HS256","typ":"JWT"}'
_HEADER_B64 = base64.urlsafe_b64encode(_HEADER).rstrip(b"=")
_BASE64URL = re.compile(rb"[A-Za-z0-9_-]*")
MAX_TOKEN_CHARS = 8192  # far above any token we mint; refuses absurd inputs before any work


class TokenInvalid(Exception):
    """Malformed, forged, or with a claim of the wrong type or missing."""


class TokenExpired(TokenInvalid):
    """Correctly signed, but `exp` is in the past."""


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _unb64(segment: bytes) -> bytes:
    """Strict: base64url characters only, no padding, and the one canonical spelling of its bytes (Python's
    decoder alone would skip stray characters and ignore the unused low bits, so one token would have many
    valid spellings)."""
    if _BASE64URL.fullmatch(segment) is None:
        raise TokenInvalid("a segment is not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenInvalid("a segment is not base64url") from exc
    if _b64(data) != segment:
        raise TokenInvalid("a segment is not canonical base64url")
    return data


def _key(secret: str) -> bytes:
    return secret.encode()


def encode(claims: dict[str, Any], secret: str) -> str:
    signing_input = _HEADER_B64 + b"." + _b64(orjson.dumps(claims))
    signature = hmac.digest(_key(secret), signing_input, hashlib.sha256)
    return (signing_input + b"." + _b64(signature)).decode("ascii")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _json_object(segment: bytes, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(_unb64(segment))
    except orjson.JSONDecodeError as exc:
        raise TokenInvalid(f"the {what} is not JSON") from exc
    if not isinstance(value, dict):
        raise TokenInvalid(f"the {what} is not a JSON object")
    return value


def decode(token: str, secret: str, *, require: tuple[str, ...] = (), now: float | None = None,
           verify_exp: bool = True) -> dict[str, Any]:
    """The claims of a valid token; `TokenExpired` or `TokenInvalid` (with the reason) otherwise. Without
    `verify_exp` an expired token is still read (its signature and the other claims are checked)."""
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenInvalid("the token is too long")
    try:
        raw = token.encode("ascii")
    except UnicodeEncodeError as exc:
        raise TokenInvalid("the token is not ASCII") from exc
    parts = raw.split(b".")
    if len(parts) != 3:
        raise TokenInvalid("not enough segments" if len(parts) < 3 else "too many segments")
    header_b64, payload_b64, signature_b64 = parts
    header = _json_object(header_b64, "header")
    if header.get("alg") != "HS256":
        raise TokenInvalid("the algorithm is not allowed (HS256 only)")
    if "crit" in header:
        raise TokenInvalid("critical header extensions are not supported")
    expected = hmac.digest(_key(secret), header_b64 + b"." + payload_b64, hashlib.sha256)
    if not hmac.compare_digest(expected, _unb64(signature_b64)):
        raise TokenInvalid("signature verification failed")
    claims = _json_object(payload_b64, "payload")
    for name in require:
        if name not in claims:
            raise TokenInvalid(f'the token is missing the "{name}" claim')
    at = time.time() if now is None else now
    for name in ("exp", "nbf", "iat"):
        if name in claims and not _number(claims[name]):
            raise TokenInvalid(f'the "{name}" claim must be a number')
    if verify_exp and "exp" in claims and claims["exp"] <= at:
        raise TokenExpired("the token has expired")
    for name in ("nbf", "iat"):
        if name in claims and claims[name] > at:
            raise TokenInvalid(f"the token is not yet valid ({name})")
    return claims
