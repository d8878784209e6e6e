"""Protocol v1 parsing, as plain function calls, and the error-code contract with docs/protocol.md."""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

import pytest

from game.api import GameContext
from game.arena import DEFINITION as ARENA
from game.arena import Fire, Input
from server.net.protocol import (
    CHAT_MAX_CHARS,
    HOST_MESSAGES,
    Chat,
    ErrorCode,
    Hello,
    Join,
    Leave,
    MessageDecoder,
    Ping,
    ProtocolError,
    parse_lobby_message,
)

# What a player of the arena may send on /game: the host's messages and the arena's.
parse_client_message = MessageDecoder((*HOST_MESSAGES, *ARENA.messages)).decode

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def refused(raw: str | bytes) -> ErrorCode:
    with pytest.raises(ProtocolError) as info:
        parse_client_message(raw)
    return info.value.code


def test_each_client_message_type_parses_into_its_class() -> None:
    assert parse_client_message('{"type":"hello","v":1}') == Hello(1)
    assert parse_client_message(b'{"type":"hello","v":1}') == Hello(1)
    assert parse_client_message('{"type":"input","seq":3,"dx":0.6,"dy":-0.8}') == Input(3, 0.6, -0.8)
    assert parse_client_message('{"type":"fire","seq":4,"angle":1.5}') == Fire(4, 1.5)
    assert parse_client_message('{"type":"chat","text":"gg"}') == Chat("gg")
    assert parse_client_message('{"type":"leave"}') == Leave()
    assert parse_client_message('{"type":"ping","t":12.5}') == Ping(12.5)


def test_unknown_extra_fields_are_ignored() -> None:
    assert parse_client_message('{"type":"ping","t":1,"extra":[1,2]}') == Ping(1.0)


def test_a_diagonal_longer_than_one_is_accepted_and_the_arena_scales_it_to_unit_length() -> None:
    msg = parse_client_message('{"type":"input","seq":1,"dx":1,"dy":1}')
    assert isinstance(msg, Input)
    game = ARENA.make(GameContext(random.Random(1), time_limit_ms=0))
    game.join(1, "a", 0)
    game.handle(1, msg, 0)
    game.advance(0)
    game.advance(1000)  # one second at full speed along the diagonal
    (me,) = game.state()["players"]
    start = ARENA.make(GameContext(random.Random(1), time_limit_ms=0))
    start.join(1, "a", 0)
    (before,) = start.state()["players"]
    moved = math.hypot(me["x"] - before["x"], me["y"] - before["y"])
    assert math.isclose(moved, 200.0, abs_tol=0.2) or me["x"] in (0.0, 1000.0) or me["y"] in (0.0, 1000.0)


def test_malformed_json_is_bad_json() -> None:
    assert refused("{not json") == ErrorCode.BAD_JSON
    assert refused('{"type":"ping","t":1e999}') == ErrorCode.OUT_OF_RANGE  # not a finite number
    assert refused('{"type":"ping","t":NaN}') == ErrorCode.BAD_JSON
    assert refused(b'{"type":"chat","text":"\xff"}') == ErrorCode.BAD_JSON  # not UTF-8


def test_non_objects_and_missing_type_are_bad_messages() -> None:
    assert refused("[1, 2]") == ErrorCode.BAD_MESSAGE
    assert refused('"input"') == ErrorCode.BAD_MESSAGE
    assert refused('{"seq": 1}') == ErrorCode.BAD_MESSAGE
    assert refused('{"type": 5}') == ErrorCode.BAD_MESSAGE


def test_unknown_type_is_refused() -> None:
    assert refused('{"type":"teleport","x":1}') == ErrorCode.UNKNOWN_TYPE


@pytest.mark.parametrize("raw", [
    '{"type":"input","dx":0,"dy":0}',
    '{"type":"input","seq":"1","dx":0,"dy":0}',
    '{"type":"input","seq":true,"dx":0,"dy":0}',
    '{"type":"input","seq":1.0,"dx":0,"dy":0}',
    '{"type":"input","seq":1,"dx":"0","dy":0}',
    '{"type":"input","seq":1,"dx":false,"dy":0}',
    '{"type":"input","seq":1,"dx":0}',
    '{"type":"fire","seq":1}',
    '{"type":"chat","text":5}',
    '{"type":"hello"}',
    '{"type":"hello","v":"1"}',
    '{"type":"ping"}',
])
def test_missing_or_wrongly_typed_fields_are_bad_fields(raw: str) -> None:
    assert refused(raw) == ErrorCode.BAD_FIELD


@pytest.mark.parametrize("raw", [
    '{"type":"input","seq":1,"dx":1.01,"dy":0}',
    '{"type":"input","seq":1,"dx":0,"dy":-3}',
    '{"type":"input","seq":-1,"dx":0,"dy":0}',
    '{"type":"input","seq":9007199254740992,"dx":0,"dy":0}',
    '{"type":"fire","seq":1,"angle":7}',
    '{"type":"fire","seq":1,"angle":-100000}',
])
def test_numbers_out_of_their_range_are_refused(raw: str) -> None:
    assert refused(raw) == ErrorCode.OUT_OF_RANGE


def test_chat_text_must_be_one_to_the_limit_characters() -> None:
    assert parse_client_message('{"type":"chat","text":"%s"}' % ("x" * CHAT_MAX_CHARS)) == Chat("x" * CHAT_MAX_CHARS)
    assert refused('{"type":"chat","text":"%s"}' % ("x" * (CHAT_MAX_CHARS + 1))) == ErrorCode.TEXT_TOO_LONG
    assert refused('{"type":"chat","text":""}') == ErrorCode.TEXT_TOO_LONG


def test_every_error_code_is_documented_and_every_documented_code_exists() -> None:
    doc = DOC.read_text()
    handshake = set(re.findall(r"^\| \d{3} \| `([a-z_]+)` \|", doc, flags=re.MULTILINE))
    error_section = doc.split("### `error`", 1)[1].split("### Close codes", 1)[0]
    in_session = set(re.findall(r"^\| `([a-z_]+)` \|", error_section, flags=re.MULTILINE))
    assert handshake and in_session
    in_code = {code.value for code in ErrorCode}
    assert in_code - (handshake | in_session) == set(), "codes missing from docs/protocol.md"
    assert (handshake | in_session) - in_code == set(), "documented codes that the code does not have"


def test_lobby_messages_parse_with_arena_as_the_default_mode() -> None:
    assert parse_lobby_message('{"type":"join","v":1}') == Join(1, "arena")
    assert parse_lobby_message('{"type":"join","v":1,"mode":"duel"}') == Join(1, "duel")
    assert parse_lobby_message('{"type":"join","v":1,"ticket":"a.b.c"}') == Join(1, "arena", "a.b.c")
    assert isinstance(parse_lobby_message('{"type":"leave"}'), Leave)
    assert parse_lobby_message('{"type":"ping","t":5}') == Ping(5.0)


@pytest.mark.parametrize(("raw", "code"), [
    ('{"type":"join"}', ErrorCode.BAD_FIELD),
    ('{"type":"join","v":"1"}', ErrorCode.BAD_FIELD),
    ('{"type":"join","v":1,"mode":7}', ErrorCode.BAD_FIELD),
    ('{"type":"join","v":1,"ticket":7}', ErrorCode.BAD_FIELD),
    ('{"type":"join","v":1,"ticket":""}', ErrorCode.BAD_FIELD),
    ('{"type":"join","v":1,"ticket":"' + "x" * 2049 + '"}', ErrorCode.BAD_FIELD),
    ('{"type":"join","v":1,"mode":""}', ErrorCode.UNKNOWN_MODE),
    ('{"type":"join","v":1,"mode":"' + "x" * 33 + '"}', ErrorCode.UNKNOWN_MODE),
    ('{"type":"input","seq":1,"dx":0,"dy":0}', ErrorCode.UNKNOWN_TYPE),  # a game message in the lobby
    ('[1]', ErrorCode.BAD_MESSAGE),
])
def test_bad_lobby_messages_get_their_codes(raw: str, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_lobby_message(raw)
    assert info.value.code is code
