"""Seat tickets: short-lived signed proof that the lobby gave this player a seat in this room.

The lobby mints one with `match_found`; `/game` accepts a connection only with a valid ticket for that
room and player. HS256 with the deployment's secret, so any node can check a ticket any node minted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from lobby import signing

TICKET_TYPE = "seat"


class TicketError(Exception):
    """A ticket was refused; `code` is the protocol error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Ticket:
    player_id: str
    room_id: str
    node_id: str
    mode: str = "arena"


def mint_ticket(secret: str, ticket: Ticket, *, ttl_s: float = 60.0, now: float | None = None) -> str:
    issued = time.time() if now is None else now
    claims = {"typ": TICKET_TYPE, "sub": ticket.player_id, "room": ticket.room_id, "node": ticket.node_id,
              "mode": ticket.mode, "iat": int(issued), "exp": int(issued + ttl_s)}
    return signing.encode(claims, secret)


def lost_match_ticket(secret: str, token: str, *, player_id: str, max_age_s: float,
                      now: float | None = None) -> Ticket | None:
    """The room of the match a player comes back to (the ticket of its `match_found`, sent again with `join`):
    expired or not, the ticket must be this player's and genuine; None when it is older than `max_age_s` (its
    match is long over). Raises `TicketError` for a ticket that is not genuine."""
    try:
        claims = signing.decode(token, secret, require=("iat", "sub", "room", "typ"), now=now, verify_exp=False)
    except signing.TokenInvalid as exc:
        raise TicketError("ticket_invalid", f"the seat ticket is invalid: {exc}") from exc
    if claims.get("typ") != TICKET_TYPE or claims["sub"] != player_id or not isinstance(claims["room"], str):
        raise TicketError("ticket_invalid", "this is not a seat ticket of yours")
    if (time.time() if now is None else now) - claims["iat"] > max_age_s:
        return None
    return Ticket(player_id=claims["sub"], room_id=claims["room"], node_id=str(claims.get("node", "")),
                  mode=str(claims.get("mode", "arena")))


def verify_ticket(secret: str, token: str, *, player_id: str, room_id: str) -> Ticket:
    """The ticket's content, if it is valid, unexpired, and for this player and this room."""
    try:
        claims = signing.decode(token, secret, require=("exp", "sub", "room", "typ"))
    except signing.TokenExpired as exc:
        raise TicketError("ticket_expired", "the seat ticket has expired; join through the lobby again") from exc
    except signing.TokenInvalid as exc:
        raise TicketError("ticket_invalid", f"the seat ticket is invalid: {exc}") from exc
    if claims.get("typ") != TICKET_TYPE:
        raise TicketError("ticket_invalid", "this token is not a seat ticket")
    if claims["sub"] != player_id:
        raise TicketError("ticket_invalid", "this seat ticket belongs to another player")
    if claims["room"] != room_id:
        raise TicketError("ticket_wrong_room", f"this seat ticket is for room {claims['room']}, not {room_id}")
    return Ticket(player_id=claims["sub"], room_id=claims["room"], node_id=str(claims.get("node", "")),
                  mode=str(claims.get("mode", "arena")))
