"""lobby.signing, the HS256 JWT codec of the hot path, checked against PyJWT: each accepts what the other mints,
both refuse the same forgeries and malformed tokens, and the auth and ticket wrappers map its refusals to codes.

The property-style tests use a seeded `random.Random` (hypothesis is not a dependency of the project's .venv).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import time
from typing import Any

import jwt
import pytest

from lobby import signing
from lobby.tickets import Ticket, TicketError, lost_match_ticket, mint_ticket, verify_ticket
from server.net.auth import AuthError, mint_token, verify_token

SECRET = "tickroom-signing-test-secret-" + "k" * 40  # 64+ bytes: PyJWT warns about shorter keys for HS512
OTHER_SECRET = "another-deployment-secret-" + "x" * 40
NOW = int(time.time())
CLAIMS: dict[str, Any] = {"sub": "3f2b8c1e-0d7a-4e55-9b1c-2a6f0e8d9c41", "name": "alice", "exp": NOW + 7 * 86400}
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json(value: object) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


def _signed(header_segment: str, payload_segment: str, secret: str = SECRET) -> str:
    """A token whose HS256 signature is right for exactly these (possibly malformed) segments."""
    signing_input = f"{header_segment}.{payload_segment}".encode()
    return f"{header_segment}.{payload_segment}.{_b64(hmac.digest(secret.encode(), signing_input, hashlib.sha256))}"


def _forge(header: object, payload: object, secret: str = SECRET) -> str:
    return _signed(_b64(_json(header)), _b64(_json(payload)), secret)


def _pyjwt_decode(token: str, require: tuple[str, ...] = ()) -> dict[str, Any]:
    return jwt.decode(token, SECRET, algorithms=["HS256"], options={"require": list(require)})


def _with_dash_or_underscore_in_signature() -> str:
    for n in range(1000):
        token = signing.encode({**CLAIMS, "n": n}, SECRET)
        if "-" in token.rsplit(".", 1)[1] or "_" in token.rsplit(".", 1)[1]:
            return token
    raise AssertionError("no signature with - or _ in 1000 tries")


GOOD = signing.encode(CLAIMS, SECRET)
H, P, S = GOOD.split(".")
HS256 = {"alg": "HS256", "typ": "JWT"}
_LAST = B64URL.index(S[-1])

REFUSED_BY_BOTH = [
    pytest.param(jwt.encode(CLAIMS, OTHER_SECRET, algorithm="HS256"), id="wrong-secret"),
    pytest.param(f"{H}.{_b64(_json({**CLAIMS, 'name': 'mallory'}))}.{S}", id="payload-changed-after-signing"),
    pytest.param(f"{H}.{P}.{S[:10]}{'B' if S[10] == 'A' else 'A'}{S[11:]}", id="signature-one-char-changed"),
    pytest.param(f"{_b64(_json({'alg': 'none', 'typ': 'JWT'}))}.{P}.", id="alg-none-empty-signature"),
    pytest.param(jwt.encode(CLAIMS, SECRET, algorithm="HS512"), id="alg-hs512"),
    pytest.param(_forge({"alg": "RS256", "typ": "JWT"}, CLAIMS), id="alg-rs256-header-hmac-signed"),
    pytest.param(f"{H}.{P}", id="two-segments"),
    pytest.param(f"{GOOD}.{S}", id="four-segments"),
    pytest.param("", id="empty"),
    pytest.param(f"{H}.{P[:5]}é{P[6:]}.{S}", id="non-ascii"),
    pytest.param(_signed(H + "=", P), id="padding-in-header-segment"),
    pytest.param(f"{H}.{P}.{S}==", id="padding-in-signature-segment"),
    pytest.param(f"{H}.{P[:4]}!{P[4:]}.{S}", id="payload-segment-not-base64url"),
    pytest.param(f"{H}.{P}.{S}!", id="signature-segment-not-base64url"),
    pytest.param(_forge([HS256], CLAIMS), id="header-is-a-list"),
    pytest.param(_forge(HS256, [CLAIMS]), id="payload-is-a-list"),
    pytest.param(_forge(b"not json", CLAIMS), id="header-not-json"),
    pytest.param(_forge(HS256, {**CLAIMS, "exp": "tomorrow"}), id="exp-a-string"),
    pytest.param(_forge(HS256, {"sub": CLAIMS["sub"]}), id="exp-missing-when-required"),
    pytest.param(_forge(HS256, {**CLAIMS, "nbf": NOW + 86400}), id="nbf-in-the-future"),
    pytest.param(_forge(HS256, {**CLAIMS, "iat": NOW + 86400}), id="iat-in-the-future"),
    pytest.param(_forge(HS256, {**CLAIMS, "exp": NOW - 10}, OTHER_SECRET), id="expired-and-forged"),
    pytest.param(jwt.encode({**CLAIMS, "pad": "a" * 9000}, OTHER_SECRET, algorithm="HS256"), id="very-long"),
    # Anyone could make these from a genuine token if the decoder were lenient: other spellings of one token.
    pytest.param(_with_dash_or_underscore_in_signature().replace("-", "+").replace("_", "/"),
                 id="signature-in-standard-base64-alphabet"),
    pytest.param(f"{H}.{P}.{S[:10]}!!{S[10:]}", id="signature-with-two-junk-chars"),
    pytest.param(f"{H}.{P}.{S[:-1]}{B64URL[_LAST ^ 1]}", id="signature-non-canonical-final-char"),
]


def test_a_token_minted_by_pyjwt_is_accepted() -> None:
    assert signing.decode(jwt.encode(CLAIMS, SECRET, algorithm="HS256"), SECRET, require=("exp",)) == CLAIMS


def test_a_token_minted_by_signing_is_accepted_by_pyjwt() -> None:
    assert _pyjwt_decode(signing.encode(CLAIMS, SECRET), require=("exp",)) == CLAIMS


@pytest.mark.parametrize("token", REFUSED_BY_BOTH)
def test_both_refuse_forged_and_malformed_tokens(token: str) -> None:
    with pytest.raises(jwt.InvalidTokenError):
        _pyjwt_decode(token, require=("exp",))
    with pytest.raises(signing.TokenInvalid):
        signing.decode(token, SECRET, require=("exp",))


def test_a_forged_expired_token_is_invalid_not_expired() -> None:
    with pytest.raises(signing.TokenInvalid) as refused:
        signing.decode(_forge(HS256, {**CLAIMS, "exp": NOW - 10}, OTHER_SECRET), SECRET)
    assert not isinstance(refused.value, signing.TokenExpired)


def test_a_correctly_signed_token_longer_than_the_limit_is_refused() -> None:
    tokens = [signing.encode({"exp": NOW + 60, "pad": "a" * k}, SECRET) for k in range(5900, 6200)]
    at_limit = next(token for token in tokens if len(token) == signing.MAX_TOKEN_CHARS)
    assert signing.decode(at_limit, SECRET, now=NOW)["exp"] == NOW + 60
    over_limit = next(token for token in tokens if len(token) > signing.MAX_TOKEN_CHARS)
    with pytest.raises(signing.TokenInvalid, match="too long"):
        signing.decode(over_limit, SECRET, now=NOW)


def test_expiry_is_token_expired_and_exp_equal_to_now_counts_as_expired() -> None:
    assert issubclass(signing.TokenExpired, signing.TokenInvalid)
    token = signing.encode({"exp": 1000}, SECRET)
    assert signing.decode(token, SECRET, now=999.999) == {"exp": 1000}
    for now in (1000.0, 1000.001, 5000.0):
        with pytest.raises(signing.TokenExpired):
            signing.decode(token, SECRET, now=now)
    with pytest.raises(jwt.ExpiredSignatureError):
        _pyjwt_decode(signing.encode({"exp": NOW - 1}, SECRET))
    with pytest.raises(signing.TokenExpired):
        signing.decode(jwt.encode({"exp": NOW - 1}, SECRET, algorithm="HS256"), SECRET)


def test_nbf_and_iat_equal_to_now_are_accepted_and_later_ones_refused() -> None:
    for claim in ("nbf", "iat"):
        token = signing.encode({claim: 1000, "exp": 2000}, SECRET)
        assert signing.decode(token, SECRET, now=1000.0)[claim] == 1000
        with pytest.raises(signing.TokenInvalid):
            signing.decode(token, SECRET, now=999.5)


def test_verify_token_maps_expiry_and_forgery_to_their_codes() -> None:
    assert verify_token(SECRET, mint_token(SECRET, "alice")).name == "alice"
    cases = {
        "token_expired": mint_token(SECRET, "alice", ttl_s=3600, now=NOW - 7200),
        "token_invalid": mint_token(OTHER_SECRET, "alice"),
    }
    forged = mint_token(SECRET, "alice").split(".")
    forged[1] = _b64(_json({**CLAIMS, "name": "admin"}))
    for code, token in [*cases.items(), ("token_invalid", ".".join(forged)), ("token_invalid", "garbage")]:
        with pytest.raises(AuthError) as refused:
            verify_token(SECRET, token)
        assert refused.value.code == code


def test_verify_ticket_maps_expired_foreign_room_and_player_token_to_their_codes() -> None:
    player = CLAIMS["sub"]
    ticket = Ticket(player_id=player, room_id="room-1", node_id="node-a")
    assert verify_ticket(SECRET, mint_ticket(SECRET, ticket), player_id=player, room_id="room-1") == ticket
    cases = [
        ("ticket_expired", mint_ticket(SECRET, ticket, ttl_s=60, now=NOW - 600), "room-1"),
        ("ticket_wrong_room", mint_ticket(SECRET, ticket), "room-2"),
        ("ticket_invalid", mint_token(SECRET, "alice", player_id=player), "room-1"),
        ("ticket_invalid", mint_ticket(OTHER_SECRET, ticket), "room-1"),
    ]
    for code, token, room in cases:
        with pytest.raises(TicketError) as refused:
            verify_ticket(SECRET, token, player_id=player, room_id=room)
        assert refused.value.code == code


def test_the_ticket_of_a_lost_match_is_read_expired_but_must_be_genuine_and_recent() -> None:
    player = CLAIMS["sub"]
    ticket = Ticket(player_id=player, room_id="room-1", node_id="node-a")
    expired = mint_ticket(SECRET, ticket, ttl_s=60, now=NOW - 600)
    assert lost_match_ticket(SECRET, expired, player_id=player, max_age_s=900, now=NOW) == ticket
    assert lost_match_ticket(SECRET, expired, player_id=player, max_age_s=300, now=NOW) is None  # long over
    for token, who in ((mint_ticket(OTHER_SECRET, ticket), player), (expired, "someone-else"),
                       (mint_token(SECRET, "alice", player_id=player), player)):
        with pytest.raises(TicketError) as refused:
            lost_match_ticket(SECRET, token, player_id=who, max_age_s=900, now=NOW)
        assert refused.value.code == "ticket_invalid"


def _text(rng: random.Random) -> str:
    pool = ["a", "Z", "0", " ", '"', "\\", "\n", "\x00", "é", "日本", "😀", "\u2028"]
    return "".join(rng.choice(pool) if rng.random() < 0.7 else chr(rng.randint(0x20, 0xD7FF))
                   for _ in range(rng.randint(0, 12)))


def _value(rng: random.Random, depth: int) -> object:
    kind = rng.randint(0, 7 if depth < 3 else 5)
    scalars = [None, rng.random() < 0.5, rng.randint(-(2**63), 2**64 - 1),
               rng.choice([0.0, -0.0, 1e308, 5e-324, rng.uniform(-1e9, 1e9)]), _text(rng), rng.randint(-9, 9)]
    if kind < len(scalars):
        return scalars[kind]
    if kind == 6:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return _claims(rng, depth + 1)


def _claims(rng: random.Random, depth: int = 0) -> dict[str, object]:
    reserved = {"exp", "nbf", "iat", "aud", "iss", "sub", "jti"}  # PyJWT validates these when present
    return {key: _value(rng, depth) for _ in range(rng.randint(0, 6)) if (key := _text(rng)) not in reserved}


@pytest.mark.parametrize("seed", range(25))
def test_random_claims_round_trip_both_ways(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(8):
        claims = _claims(rng)
        assert signing.decode(signing.encode(claims, SECRET), SECRET) == claims
        assert _pyjwt_decode(signing.encode(claims, SECRET)) == claims
        assert signing.decode(jwt.encode(claims, SECRET, algorithm="HS256"), SECRET) == claims


@pytest.mark.parametrize("seed", range(3))
def test_changing_any_single_character_of_a_token_is_refused(seed: int) -> None:
    """Also where the change leaves the decoded bytes alone (the final character's unused low bits): a token has
    one spelling only."""
    token = signing.encode({**_claims(random.Random(seed)), "exp": NOW + 7 * 86400}, SECRET)
    for i, original in enumerate(token):
        for char in B64URL + ".+/=":
            if char == original:
                continue
            changed = token[:i] + char + token[i + 1:]
            with pytest.raises(signing.TokenInvalid):
                signing.decode(changed, SECRET)
