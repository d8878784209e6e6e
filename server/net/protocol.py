"""Protocol v1: client messages parsed from raw frames, error codes, and server message builders.

Pure and synchronous: bytes or str in, a message or a `ProtocolError` out. `docs/protocol.md` is the
contract; a test keeps the codes here and there in step.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from typing import Annotated, Any, Union

import msgspec
import orjson
from msgspec import Meta

from game.api import Message, message_type

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 4096
CHAT_MAX_CHARS = 200


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
    READ_ONLY = "read_only"
    ORIGIN_NOT_ALLOWED = "origin_not_allowed"
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
    # Plain HTTP requests (server/net/requesthead.py).
    METHOD_NOT_ALLOWED = "method_not_allowed"
    BODY_TOO_LARGE = "body_too_large"
    # In-session `error` messages.
    BAD_JSON = "bad_json"
    BAD_MESSAGE = "bad_message"
    UNKNOWN_TYPE = "unknown_type"
    BAD_FIELD = "bad_field"
    OUT_OF_RANGE = "out_of_range"
    TEXT_TOO_LONG = "text_too_long"
    HELLO_REQUIRED = "hello_required"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNSUPPORTED_ENCODING = "unsupported_encoding"
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
    CAPACITY = "capacity"
    SEAT_LOST = "seat_lost"


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY = 1008
    TOO_BIG = 1009
    INTERNAL = 1011


class ProtocolError(Exception):
    """A client message was refused; the connection goes on unless `close` is set."""

    def __init__(self, code: ErrorCode, message: str, close: CloseCode | None = None, *,
                 retry_ms: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close = close
        self.retry_ms = retry_ms  # said in the `error`: when to try again (`capacity`)


# Client messages: typed schemas (msgspec Structs, `game.api.Message`), decoded and validated in one pass.
# The host's own here; each game declares its own in its module (`GameDefinition.messages`).

FLOAT_MAX = 1.7976931348623157e308  # a finite number: the bounds refuse what JSON's 1e999 decodes to
Finite = Annotated[float, Meta(ge=-FLOAT_MAX, le=FLOAT_MAX)]


Version = Annotated[int, Meta(ge=0, le=1_000_000)]


class Hello(Message, frozen=True, tag="hello"):
    v: Version
    encoding: str = "json"  # how states come (server/net/wire.py); any other value is refused by the session


class Chat(Message, frozen=True, tag="chat"):
    text: Annotated[str, Meta(min_length=1, max_length=CHAT_MAX_CHARS)]


class Leave(Message, frozen=True, tag="leave"):
    pass


class Ping(Message, frozen=True, tag="ping"):
    t: Finite


MODE_MAX_CHARS = 32
TICKET_MAX_CHARS = 2048


class Join(Message, frozen=True, tag="join"):
    """Lobby: queue up for a match of `mode`."""

    v: Version
    mode: str = "arena"
    ticket: str | None = None  # the seat ticket of a match the player lost its connection to (recovery)


HOST_MESSAGES: tuple[type[Message], ...] = (Hello, Ping, Leave, Chat)
LOBBY_MESSAGES: tuple[type[Message], ...] = (Join, Leave, Ping)

# A refused field's explanation as msgspec words it: "Expected `float` <= 1.0 - at `$.dx`".
_AT = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_CONSTRAINT = re.compile(r"^Expected `[^`]+` (?:>=|<=|>|<|of length|that is a multiple)|^Number out of range")
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`")


class MessageDecoder:
    """Decodes a frame into one of a set of message schemas (the host's and a game's, or the lobby's) with
    msgspec: no dict is built, and a refusal names the field and the documented error code."""

    def __init__(self, messages: Sequence[type[Message]]) -> None:
        self.types = tuple(messages)
        self.names = frozenset(message_type(cls) for cls in self.types)
        union: Any = Union[self.types] if len(self.types) > 1 else self.types[0]  # noqa: UP007 - built at run time
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(union)

    def decode(self, raw: str | bytes | bytearray | memoryview) -> Message:
        try:
            message: Message = self._decoder.decode(raw)
        except msgspec.ValidationError as error:
            raise _refusal(str(error)) from None
        except msgspec.DecodeError as error:
            raise ProtocolError(ErrorCode.BAD_JSON, f"not valid JSON: {error}") from None
        except RecursionError:  # a few thousand nested brackets fit in a frame
            raise ProtocolError(ErrorCode.BAD_JSON, "not valid JSON: nested too deeply") from None
        return message


def _refusal(explained: str) -> ProtocolError:
    at = _AT.search(explained)
    path = at.group("path") if at is not None else ""
    what = explained[:at.start()] if at is not None else explained
    missing = _MISSING.match(explained)
    if missing is not None:
        field = missing.group("field")
        if field == "type":
            return ProtocolError(ErrorCode.BAD_MESSAGE, "a message needs a string field 'type'")
        return ProtocolError(ErrorCode.BAD_FIELD, f"missing field '{field}'")
    if at is None:
        return ProtocolError(ErrorCode.BAD_MESSAGE, f"a message must be a JSON object ({explained})")
    if path == "type":
        if what.startswith("Invalid value"):
            return ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {what[len('Invalid value '):][:40]}")
        return ProtocolError(ErrorCode.BAD_MESSAGE, "a message needs a string field 'type'")
    if _CONSTRAINT.match(what):
        code = ErrorCode.TEXT_TOO_LONG if what.startswith("Expected `str` of length") else ErrorCode.OUT_OF_RANGE
        return ProtocolError(code, f"{path}: {what}")
    return ProtocolError(ErrorCode.BAD_FIELD, f"{path}: {what}")


LOBBY_DECODER = MessageDecoder(LOBBY_MESSAGES)


def parse_lobby_message(raw: str | bytes | bytearray | memoryview) -> Message:
    """Parse one text message from a lobby client; raise `ProtocolError` with a stable code if it is refused."""
    message = LOBBY_DECODER.decode(raw)
    if isinstance(message, Join):
        if not 1 <= len(message.mode) <= MODE_MAX_CHARS:
            raise ProtocolError(ErrorCode.UNKNOWN_MODE, f"join.mode must be 1 to {MODE_MAX_CHARS} characters")
        if message.ticket is not None and not 1 <= len(message.ticket) <= TICKET_MAX_CHARS:
            raise ProtocolError(ErrorCode.BAD_FIELD,
                                f"join.ticket must be a string of 1 to {TICKET_MAX_CHARS} characters")
    return message


# Server messages. Each builder returns the encoded JSON bytes.


def encode(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message)


def error_message(code: ErrorCode, message: str, retry_ms: int | None = None) -> bytes:
    if retry_ms is not None:
        return encode({"type": "error", "code": code.value, "message": message, "retry_ms": retry_ms})
    return encode({"type": "error", "code": code.value, "message": message})


# In a lobby `capacity` error: when to send `join` again, doubled with each further refusal on the same connection
# up to CAPACITY_RETRY_MAX_MS. Refused players who came back at once, or kept coming back as often while every node
# stays full, would spend the CPU of full nodes on refusals.
CAPACITY_RETRY_MS = 5000
CAPACITY_RETRY_MAX_MS = 30_000


def capacity_retry_ms(refusals: int) -> int:
    """`retry_ms` of a connection's `refusals`-th `capacity` error (1 for the first)."""
    return min(CAPACITY_RETRY_MAX_MS, CAPACITY_RETRY_MS << min(max(refusals - 1, 0), 8))


RECONNECT_RETRY_MS = 1000  # in `reconnect`: when a client should try again (through the lobby)


class ReconnectReason(enum.StrEnum):
    SHUTDOWN = "shutdown"  # the node is stopping (SIGTERM, a deploy)
    DRAIN = "drain"  # the node is being taken out of service and its rooms move to other nodes


def reconnect_message(reason: ReconnectReason) -> bytes:
    return encode({"type": "reconnect", "reason": reason.value, "retry_ms": RECONNECT_RETRY_MS})


def handshake_error_body(code: ErrorCode, message: str) -> bytes:
    return encode({"error": code.value, "message": message})
