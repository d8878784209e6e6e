"""Protocol v1: client messages parsed from raw frames, error codes, and server message builders.

Pure and synchronous: bytes or str in, a message or a `ProtocolError` out. `docs/protocol.md` is the
contract; a test keeps the codes here and there in step.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 4096
CHAT_MAX_CHARS = 200
SEQ_MAX = 2**53 - 1
ANGLE_MAX = 2 * math.pi


class ErrorCode(enum.StrEnum):
    # Handshake refusals (HTTP status with a JSON body).
    TOKEN_MISSING = "token_missing"
    TOKEN_INVALID = "token_invalid"
    TOKEN_EXPIRED = "token_expired"
    ROOM_REQUIRED = "room_required"
    BAD_ROOM_ID = "bad_room_id"
    UNKNOWN_MODE = "unknown_mode"
    NOT_FOUND = "not_found"
    TICKET_MISSING = "ticket_missing"
    TICKET_INVALID = "ticket_invalid"
    TICKET_EXPIRED = "ticket_expired"
    TICKET_WRONG_ROOM = "ticket_wrong_room"
    WRONG_NODE = "wrong_node"
    ROOM_NOT_FOUND = "room_not_found"
    NOT_IN_ROOM = "not_in_room"
    LOBBY_UNAVAILABLE = "lobby_unavailable"
    # The records' HTTP endpoints (players, matches, leaderboard).
    BAD_PLAYER_ID = "bad_player_id"
    BAD_MATCH_ID = "bad_match_id"
    BAD_PAGE = "bad_page"
    BAD_LIMIT = "bad_limit"
    PLAYER_NOT_FOUND = "player_not_found"
    MATCH_NOT_FOUND = "match_not_found"
    RECORDS_UNAVAILABLE = "records_unavailable"
    # The operator's endpoints (/admin, /admin/drain).
    ADMIN_TOKEN_INVALID = "admin_token_invalid"
    NODE_DRAINING = "node_draining"
    BAD_REQUEST = "bad_request"
    # In-session `error` messages.
    BAD_JSON = "bad_json"
    BAD_MESSAGE = "bad_message"
    UNKNOWN_TYPE = "unknown_type"
    BAD_FIELD = "bad_field"
    OUT_OF_RANGE = "out_of_range"
    TEXT_TOO_LONG = "text_too_long"
    HELLO_REQUIRED = "hello_required"
    UNSUPPORTED_VERSION = "unsupported_version"
    RATE_LIMITED = "rate_limited"
    ROOM_FULL = "room_full"
    ROOM_IN_PROGRESS = "room_in_progress"
    ROOM_CLOSED = "room_closed"
    ALREADY_CONNECTED = "already_connected"
    SERVER_FULL = "server_full"
    ROOM_CRASHED = "room_crashed"
    MATCH_CANCELLED = "match_cancelled"
    INTERNAL_ERROR = "internal_error"
    # Lobby `error` messages (with unknown_mode, already_connected, lobby_unavailable and the generic ones).
    ALREADY_IN_MATCH = "already_in_match"
    ALREADY_JOINED = "already_joined"
    SEAT_LOST = "seat_lost"


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY = 1008
    TOO_BIG = 1009
    INTERNAL = 1011


class ProtocolError(Exception):
    """A client message was refused; the connection goes on unless `close` is set."""

    def __init__(self, code: ErrorCode, message: str, close: CloseCode | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close = close


# Client messages, one small frozen class each.


@dataclass(frozen=True, slots=True)
class Hello:
    v: int


@dataclass(frozen=True, slots=True)
class Input:
    seq: int
    dx: float
    dy: float


@dataclass(frozen=True, slots=True)
class Fire:
    seq: int
    angle: float


@dataclass(frozen=True, slots=True)
class Chat:
    text: str


@dataclass(frozen=True, slots=True)
class Leave:
    pass


@dataclass(frozen=True, slots=True)
class Ping:
    t: float


@dataclass(frozen=True, slots=True)
class Join:
    """Lobby: queue up for a match of `mode`."""

    v: int
    mode: str
    ticket: str | None = None  # the seat ticket of a match the player lost its connection to (recovery)


ClientMessage = Hello | Input | Fire | Chat | Leave | Ping
LobbyMessage = Join | Leave | Ping

_LEAVE = Leave()


def _field(msg: dict[str, Any], name: str, kind: str) -> Any:
    if name not in msg:
        raise ProtocolError(ErrorCode.BAD_FIELD, f"{msg['type']}: missing field '{name}'")
    value = msg[name]
    # bool is a subclass of int in Python but not a number on the wire.
    if kind == "int":
        if type(value) is not int:
            raise ProtocolError(ErrorCode.BAD_FIELD, f"{msg['type']}.{name} must be an integer")
    elif kind == "number":
        if type(value) is int:
            value = float(value)
        elif type(value) is not float:
            raise ProtocolError(ErrorCode.BAD_FIELD, f"{msg['type']}.{name} must be a number")
        elif not math.isfinite(value):
            raise ProtocolError(ErrorCode.OUT_OF_RANGE, f"{msg['type']}.{name} must be finite")
    elif kind == "str":
        if type(value) is not str:
            raise ProtocolError(ErrorCode.BAD_FIELD, f"{msg['type']}.{name} must be a string")
    return value


def _in_range(msg_type: str, name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ProtocolError(ErrorCode.OUT_OF_RANGE, f"{msg_type}.{name} must be in [{low:g}, {high:g}]")


def _seq(msg: dict[str, Any]) -> int:
    seq: int = _field(msg, "seq", "int")
    _in_range(msg["type"], "seq", seq, 0, SEQ_MAX)
    return seq


def _parse_input(msg: dict[str, Any]) -> Input:
    seq = _seq(msg)
    dx: float = _field(msg, "dx", "number")
    dy: float = _field(msg, "dy", "number")
    _in_range("input", "dx", dx, -1.0, 1.0)
    _in_range("input", "dy", dy, -1.0, 1.0)
    length_sq = dx * dx + dy * dy
    if length_sq > 1.0 + 1e-9:  # leave unit vectors alone despite rounding
        length = math.sqrt(length_sq)
        dx, dy = dx / length, dy / length
    return Input(seq, dx, dy)


def _parse_fire(msg: dict[str, Any]) -> Fire:
    seq = _seq(msg)
    angle: float = _field(msg, "angle", "number")
    _in_range("fire", "angle", angle, -ANGLE_MAX, ANGLE_MAX)
    return Fire(seq, angle)


def _parse_chat(msg: dict[str, Any]) -> Chat:
    text: str = _field(msg, "text", "str")
    if not 1 <= len(text) <= CHAT_MAX_CHARS:
        raise ProtocolError(ErrorCode.TEXT_TOO_LONG, f"chat.text must be 1 to {CHAT_MAX_CHARS} characters")
    return Chat(text)


def _parse_hello(msg: dict[str, Any]) -> Hello:
    return Hello(_field(msg, "v", "int"))


def _parse_ping(msg: dict[str, Any]) -> Ping:
    return Ping(_field(msg, "t", "number"))


MODE_MAX_CHARS = 32
TICKET_MAX_CHARS = 2048


def _parse_join(msg: dict[str, Any]) -> Join:
    version: int = _field(msg, "v", "int")
    mode: str = msg.get("mode", "arena")
    if type(mode) is not str:
        raise ProtocolError(ErrorCode.BAD_FIELD, "join.mode must be a string")
    if not 1 <= len(mode) <= MODE_MAX_CHARS:
        raise ProtocolError(ErrorCode.UNKNOWN_MODE, f"join.mode must be 1 to {MODE_MAX_CHARS} characters")
    ticket = msg.get("ticket")
    if ticket is not None and (type(ticket) is not str or not 1 <= len(ticket) <= TICKET_MAX_CHARS):
        raise ProtocolError(ErrorCode.BAD_FIELD, f"join.ticket must be a string of 1 to {TICKET_MAX_CHARS} characters")
    return Join(version, mode, ticket)


_PARSERS: dict[str, Callable[[dict[str, Any]], ClientMessage]] = {
    "input": _parse_input,
    "fire": _parse_fire,
    "chat": _parse_chat,
    "leave": lambda msg: _LEAVE,
    "ping": _parse_ping,
    "hello": _parse_hello,
}


_LOBBY_PARSERS: dict[str, Callable[[dict[str, Any]], LobbyMessage]] = {
    "join": _parse_join,
    "leave": lambda msg: _LEAVE,
    "ping": _parse_ping,
}


def parse_client_message(raw: str | bytes | bytearray | memoryview) -> ClientMessage:
    """Parse one text message from a game client; raise `ProtocolError` with a stable code if it is refused."""
    message: ClientMessage = _parse(raw, _PARSERS)
    return message


def parse_lobby_message(raw: str | bytes | bytearray | memoryview) -> LobbyMessage:
    """Parse one text message from a lobby client; raise `ProtocolError` with a stable code if it is refused."""
    message: LobbyMessage = _parse(raw, _LOBBY_PARSERS)
    return message


def _parse(raw: str | bytes | bytearray | memoryview, parsers: dict[str, Callable[[dict[str, Any]], Any]]) -> Any:
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, f"not valid JSON: {exc}") from None
    if type(msg) is not dict:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "a message must be a JSON object")
    msg_type = msg.get("type")
    if type(msg_type) is not str:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "a message needs a string field 'type'")
    parser = parsers.get(msg_type)
    if parser is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {msg_type[:40]!r}")
    return parser(msg)


# Server messages. Each builder returns the encoded JSON bytes.


def encode(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message)


def error_message(code: ErrorCode, message: str) -> bytes:
    return encode({"type": "error", "code": code.value, "message": message})


RECONNECT_RETRY_MS = 1000  # in `reconnect`: when a client should try again (through the lobby)


class ReconnectReason(enum.StrEnum):
    SHUTDOWN = "shutdown"  # the node is stopping (SIGTERM, a deploy)
    DRAIN = "drain"  # the node is being taken out of service and its rooms move to other nodes


def reconnect_message(reason: ReconnectReason) -> bytes:
    return encode({"type": "reconnect", "reason": reason.value, "retry_ms": RECONNECT_RETRY_MS})


def handshake_error_body(code: ErrorCode, message: str) -> bytes:
    return encode({"error": code.value, "message": message})
