"""Player identity: HS256 JWTs carrying the player's UUID (`sub`) and display name (`name`)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from lobby import signing

NAME_MAX = 32
# Player ids minted by `tickroom token NAME` are stable per name, so a developer who mints a
# token twice for the same name is the same player (and can rejoin).
_DEV_NAMESPACE = uuid.UUID("6f1c1d8e-2b7a-4c1e-9a55-7d1f0e8a9b21")


@dataclass(frozen=True, slots=True)
class Identity:
    player_id: str
    name: str


class AuthError(Exception):
    """A token was refused; `code` is the stable protocol code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def dev_player_id(name: str) -> str:
    return str(uuid.uuid5(_DEV_NAMESPACE, name))


def mint_token(secret: str, name: str, *, player_id: str | None = None, ttl_s: float = 86400.0,
               now: float | None = None) -> str:
    issued = time.time() if now is None else now
    claims = {
        "sub": player_id or dev_player_id(name),
        "name": name,
        "iat": int(issued),
        "exp": int(issued + ttl_s),
    }
    return signing.encode(claims, secret)


def verify_token(secret: str, token: str) -> Identity:
    try:
        claims = signing.decode(token, secret, require=("exp", "sub"))
    except signing.TokenExpired as exc:
        raise AuthError("token_expired", "the token has expired") from exc
    except signing.TokenInvalid as exc:
        raise AuthError("token_invalid", f"the token is invalid: {exc}") from exc
    sub = claims.get("sub")
    try:
        player_id = str(uuid.UUID(sub)) if isinstance(sub, str) else None
    except ValueError:
        player_id = None
    if player_id is None:
        raise AuthError("token_invalid", "the token's sub must be a UUID")
    name = claims.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= NAME_MAX or not name.isprintable():
        raise AuthError("token_invalid", f"the token's name must be 1 to {NAME_MAX} printable characters")
    return Identity(player_id=player_id, name=name)
