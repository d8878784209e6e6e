"""Unit tests of the relay room (game/relay.py): plain calls with a simulated room clock, no server."""

from __future__ import annotations

import itertools
import random
import re
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from game.api import EVENT_DRIVEN, Event, Forming, GameContext, Message, Refused, Seats, Standing, message_type
from game.relay import (
    DEFINITION,
    PAYLOAD_MAX_DEPTH,
    Pin,
    RelayBot,
    RelayGame,
    RelayMessage,
    RelayOptions,
    Send,
    Unpin,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "games" / "relay.md"


def context(seed: int = 1, time_limit_ms: int = 0, **options: int) -> GameContext:
    return GameContext(random.Random(seed), time_limit_ms, RelayOptions(**options) if options else None)


def room(*names: str, at_ms: int = 0, **options: int) -> RelayGame:
    """A started room with one member per name (pids 1, 2, ...), its first state and events already read."""
    game = RelayGame(context(**options))
    for pid, name in enumerate(names, start=1):
        game.join(pid, name, at_ms)
    game.start(at_ms)
    game.state()
    game.drain_events()
    return game


def sent(game: RelayGame) -> list[tuple[int | None, dict[str, Any]]]:
    """The drained events as (to, body) pairs."""
    return [(event.to, event.body) for event in game.drain_events()]


def refused(game: RelayGame, pid: int, message: Message, now_ms: int) -> str:
    """The code of the refusal of `message`, checking the game stayed as it was."""
    before = {**game.snapshot(), "now_ms": None}  # only the clock may move on
    with pytest.raises(Refused) as caught:
        game.handle(pid, message, now_ms)
    assert orjson.dumps({**game.snapshot(), "now_ms": None}) == orjson.dumps(before)
    assert game.drain_events() == []
    assert game.state() is None
    return caught.value.code


def members(state: dict[str, Any] | None) -> list[dict[str, Any]]:
    assert state is not None
    result: list[dict[str, Any]] = state["members"]
    return result


# -- the definition ----------------------------------------------------------------------------------


def test_the_definition_declares_an_event_driven_backfilled_room_of_one_to_sixteen() -> None:
    assert DEFINITION.mode == "relay"
    assert DEFINITION.title == "Relay room"
    assert DEFINITION.seats == Seats(min=1, max=16, backfill=True)
    assert DEFINITION.forming is Forming.AT_ONCE
    assert DEFINITION.clock is EVENT_DRIVEN
    assert tuple(DEFINITION.figures) == ("sent", "received")
    assert DEFINITION.options is RelayOptions
    assert [message_type(cls) for cls in DEFINITION.messages] == ["send", "pin", "unpin"]
    assert isinstance(DEFINITION.make(context()), RelayGame)
    assert DEFINITION.bot is not None and isinstance(DEFINITION.bot(random.Random(1)), RelayBot)


def test_options_default_when_the_operator_gives_none() -> None:
    game = RelayGame(context())
    assert game.welcome(1) == {"payload_max_bytes": 2048, "idle_ms": 300_000, "warn_ms": 60_000}
    assert RelayOptions() == RelayOptions(payload_max_bytes=2048, idle_ms=300_000, warn_ms=60_000)


@pytest.mark.parametrize("options", [
    {"payload_max_bytes": 15}, {"payload_max_bytes": 3501}, {"idle_ms": 9999}, {"idle_ms": 86_400_001},
    {"warn_ms": 999}, {"warn_ms": 3_600_001}, {"idle_ms": "300000"}, {"idle_s": 300},
])
def test_options_out_of_range_or_unknown_are_rejected(options: dict[str, Any]) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(options, RelayOptions)


# -- message schemas ---------------------------------------------------------------------------------


def decode(raw: bytes) -> Message:
    message: Message = msgspec.json.decode(raw, type=RelayMessage)
    return message


@pytest.mark.parametrize("raw", [
    b'{"type": "send"}',
    b'{"type": "send", "payload": 1, "to": 0}',
    b'{"type": "send", "payload": 1, "to": -3}',
    b'{"type": "send", "payload": 1, "to": "2"}',
    b'{"type": "send", "payload": 1, "to": 1.5}',
    b'{"type": "send", "payload": 1, "to": true}',
    b'{"type": "pin"}',
    b'{"type": "shout", "payload": 1}',
    b'{"payload": 1}',
])
def test_schemas_reject_malformed_messages(raw: bytes) -> None:
    with pytest.raises(msgspec.ValidationError):
        decode(raw)


def test_schemas_take_any_json_payload_and_ignore_unknown_fields() -> None:
    assert decode(b'{"type": "send", "payload": null}') == Send(payload=None)
    assert decode(b'{"type": "send", "payload": {"a": [1, "x", 2.5, false]}, "to": 7}') == Send(
        payload={"a": [1, "x", 2.5, False]}, to=7)
    assert decode(b'{"type": "pin", "payload": "hello"}') == Pin(payload="hello")
    assert decode(b'{"type": "unpin", "newer": 1}') == Unpin()


# -- sending -----------------------------------------------------------------------------------------


def test_a_send_without_to_goes_to_every_other_member_and_the_sender_gets_its_id() -> None:
    game = room("ann", "bob", "cy")
    game.handle(2, Send(payload={"hi": 1}), 1000)
    message = {"kind": "message", "id": 1, "from": 2, "direct": False, "payload": {"hi": 1}}
    assert sent(game) == [(1, message), (3, message), (2, {"kind": "sent", "id": 1})]
    state = game.state()
    assert state is not None and state["messages"] == 1
    assert [(m["p"], m["sent"], m["received"]) for m in members(state)] == [(1, 0, 1), (2, 1, 0), (3, 0, 1)]


def test_a_send_with_to_goes_to_that_member_only() -> None:
    game = room("ann", "bob", "cy")
    game.handle(1, Send(payload=[1, 2], to=3), 1000)
    game.handle(3, Send(payload="back", to=1), 1500)
    assert sent(game) == [
        (3, {"kind": "message", "id": 1, "from": 1, "direct": True, "payload": [1, 2]}),
        (1, {"kind": "sent", "id": 1}),
        (1, {"kind": "message", "id": 2, "from": 3, "direct": True, "payload": "back"}),
        (3, {"kind": "sent", "id": 2}),
    ]
    assert [(m["sent"], m["received"]) for m in members(game.state())] == [(1, 1), (0, 0), (1, 1)]


def test_a_lone_member_may_send_to_nobody_and_still_counts_it() -> None:
    game = room("ann")
    game.handle(1, Send(payload=0), 10)
    assert sent(game) == [(1, {"kind": "sent", "id": 1})]
    assert members(game.state()) == [{"p": 1, "name": "ann", "sent": 1, "received": 0}]


def test_messages_to_an_away_member_still_count_as_received() -> None:
    game = room("ann", "bob")
    game.away(2, 100)
    game.handle(1, Send(payload=1, to=2), 200)
    assert sent(game)[0] == (2, {"kind": "message", "id": 1, "from": 1, "direct": True, "payload": 1})
    assert members(game.state())[1]["received"] == 1


def test_sending_to_yourself_or_to_no_member_is_refused() -> None:
    game = room("ann", "bob", "cy")
    game.release(3, 50)
    game.drain_events()
    game.state()
    assert refused(game, 1, Send(payload=1, to=1), 100) == "no_such_member"
    assert refused(game, 1, Send(payload=1, to=3), 100) == "no_such_member"  # released
    assert refused(game, 1, Send(payload=1, to=9), 100) == "no_such_member"  # never joined


def test_a_payload_up_to_the_limit_in_compact_utf8_bytes_passes_and_one_byte_more_is_refused() -> None:
    game = room("ann", "bob", payload_max_bytes=16)
    game.handle(1, Send(payload="x" * 14), 10)  # "xxxxxxxxxxxxxx": 16 bytes
    game.handle(1, Send(payload="é" * 7), 20)  # two bytes each, plus the quotes
    game.handle(1, Pin(payload=[1, 2, 3, 4, 5, 6, 7]), 30)  # [1,2,3,4,5,6,7]: 15 bytes, no spaces counted
    game.state()
    game.drain_events()
    assert refused(game, 1, Send(payload="x" * 15), 40) == "payload_too_large"
    assert refused(game, 1, Send(payload="x" * 15, to=2), 40) == "payload_too_large"
    assert refused(game, 1, Pin(payload={"note": "too long"}), 40) == "payload_too_large"


def test_payloads_the_host_could_not_encode_are_refused() -> None:
    game = room("ann", "bob", payload_max_bytes=3500)
    deep: Any = 1
    for _ in range(PAYLOAD_MAX_DEPTH + 1):
        deep = [deep]
    assert refused(game, 1, Send(payload=deep), 10) == "bad_payload"
    assert refused(game, 1, Pin(payload={"a": deep}), 10) == "bad_payload"
    assert refused(game, 1, Send(payload={"big": 2**64}), 10) == "bad_payload"
    assert refused(game, 1, Send(payload=[-(2**63) - 1]), 10) == "bad_payload"
    game.handle(1, Send(payload=[2**64 - 1, -(2**63), deep[0][0]]), 20)  # the edges themselves pass
    assert [body["kind"] for _, body in sent(game)] == ["message", "sent"]


def test_a_too_deep_payload_decodes_from_the_wire_and_is_refused_by_the_game() -> None:
    depth = PAYLOAD_MAX_DEPTH + 1
    raw = b'{"type": "send", "payload": ' + b"[" * depth + b"]" * depth + b"}"
    game = room("ann")
    assert refused(game, 1, decode(raw), 10) == "bad_payload"


# -- pins --------------------------------------------------------------------------------------------


def test_a_pin_goes_to_everyone_and_replaces_the_previous_one() -> None:
    game = room("ann", "bob")
    game.handle(1, Pin(payload={"rules": "be nice"}), 500)
    assert sent(game) == [(None, {"kind": "pinned", "by": 1, "payload": {"rules": "be nice"}, "at_ms": 500})]
    state = game.state()
    assert state is not None and state["pinned"] == {"by": 1, "payload": {"rules": "be nice"}, "at_ms": 500}
    game.handle(2, Pin(payload="mine now"), 700)
    assert sent(game) == [(None, {"kind": "pinned", "by": 2, "payload": "mine now", "at_ms": 700})]
    state = game.state()
    assert state is not None and state["pinned"] == {"by": 2, "payload": "mine now", "at_ms": 700}
    assert state["messages"] == 0  # a pin is no message


def test_unpin_removes_the_pin_for_everyone_and_refuses_when_nothing_is_pinned() -> None:
    game = room("ann", "bob")
    assert refused(game, 1, Unpin(), 100) == "nothing_pinned"
    game.handle(1, Pin(payload=1), 200)
    game.drain_events()
    game.handle(2, Unpin(), 300)  # anyone may take a pin down
    assert sent(game) == [(None, {"kind": "unpinned", "by": 2})]
    state = game.state()
    assert state is not None and state["pinned"] is None
    assert refused(game, 1, Unpin(), 400) == "nothing_pinned"


def test_a_new_member_gets_the_pin_before_anything_else_of_their_join() -> None:
    game = room("ann", "bob")
    game.handle(1, Pin(payload="read me"), 100)
    game.drain_events()
    game.join(3, "cy", 200)
    assert sent(game) == [
        (3, {"kind": "pinned", "by": 1, "payload": "read me", "at_ms": 100}),
        (1, {"kind": "member_joined", "p": 3, "name": "cy"}),
        (2, {"kind": "member_joined", "p": 3, "name": "cy"}),
    ]


def test_a_returning_member_gets_the_pin_again_and_nobody_hears_of_the_return() -> None:
    game = room("ann", "bob")
    game.handle(1, Pin(payload="read me"), 100)
    game.away(2, 150)
    game.drain_events()
    game.state()
    game.join(2, "bob", 300)
    assert sent(game) == [(2, {"kind": "pinned", "by": 1, "payload": "read me", "at_ms": 100})]
    # The state goes out again so that the returning member has it; its content did not change.
    assert [m["p"] for m in members(game.state())] == [1, 2]


def test_no_pin_means_no_pinned_event_on_join() -> None:
    game = room("ann")
    game.join(2, "bob", 100)
    assert sent(game) == [(1, {"kind": "member_joined", "p": 2, "name": "bob"})]


# -- members -----------------------------------------------------------------------------------------


def test_a_released_player_joining_after_all_is_a_member_again_with_their_counts() -> None:
    game = room("ann", "bob")
    game.handle(2, Send(payload=1), 100)
    game.release(2, 200)
    game.drain_events()
    game.join(2, "bob", 300)
    assert sent(game) == [(1, {"kind": "member_joined", "p": 2, "name": "bob"})]
    assert members(game.state())[1] == {"p": 2, "name": "bob", "sent": 1, "received": 0}
    assert [s.pid for s in game.standings()] == [1, 2]


def test_a_message_type_the_relay_does_not_know_is_refused() -> None:
    class Shout(Message, frozen=True, tag="shout"):
        pass

    game = room("ann")
    assert refused(game, 1, Shout(), 100) == "unknown_message"


def test_joins_and_releases_change_the_member_list_in_join_order() -> None:
    game = room("ann", "bob")
    game.join(3, "cy", 100)  # backfill into the running room
    game.release(1, 200)
    game.join(4, "dee", 300)
    events = sent(game)
    assert (None, {"kind": "member_left", "p": 1}) in events
    assert (1, {"kind": "member_joined", "p": 4, "name": "dee"}) not in events  # ann had left
    assert [(m["p"], m["name"]) for m in members(game.state())] == [(2, "bob"), (3, "cy"), (4, "dee")]


def test_an_away_member_stays_a_member_and_the_state_does_not_change() -> None:
    game = room("ann", "bob")
    game.away(2, 100)
    assert game.state() is None
    assert sent(game) == []
    assert game.end_reason is None


def test_the_room_ends_empty_when_every_member_released_their_seat() -> None:
    game = room("ann", "bob")
    game.release(1, 100)
    assert game.end_reason is None
    game.away(2, 150)
    assert game.end_reason is None  # away is no release
    game.release(2, 200)
    assert game.end_reason == "empty"
    assert game.next_wake_ms() is None
    assert [body["kind"] for _, body in sent(game)] == ["member_left", "member_left"]
    game.state()
    assert refused(game, 2, Send(payload=1), 300) == "game_over"


def test_standings_list_everyone_who_was_a_member_all_first_with_score_zero() -> None:
    game = RelayGame(context())
    game.join(1, "ann", 0)
    game.join(2, "early", 0)
    game.release(2, 0)  # gone before the start: never in the match
    game.join(3, "cy", 0)
    game.start(0)
    game.handle(1, Send(payload=1), 100)
    game.join(4, "dee", 200)
    game.handle(4, Send(payload=2, to=1), 300)
    game.release(3, 400)
    assert game.standings() == [
        Standing(1, 1, 0, {"sent": 1, "received": 1}),
        Standing(3, 1, 0, {"sent": 0, "received": 1}),
        Standing(4, 1, 0, {"sent": 1, "received": 0}),
    ]


# -- before the start --------------------------------------------------------------------------------


def test_everything_is_refused_before_the_start() -> None:
    game = RelayGame(context())
    game.join(1, "ann", 0)
    game.join(2, "bob", 0)
    state = game.state()
    assert state == {"members": [{"p": 1, "name": "ann", "sent": 0, "received": 0},
                                 {"p": 2, "name": "bob", "sent": 0, "received": 0}],
                     "pinned": None, "expires_ms": None, "messages": 0}
    game.drain_events()
    for message in (Send(payload=1), Send(payload=1, to=2), Pin(payload=1), Unpin()):
        assert refused(game, 1, message, 10) == "not_started"
    assert game.next_wake_ms() is None
    assert game.clock_ms == 0
    assert game.standings() == []


# -- idle expiry -------------------------------------------------------------------------------------


def test_an_idle_room_is_warned_then_expires() -> None:
    game = room("ann", "bob", at_ms=1000, idle_ms=20_000, warn_ms=5000)
    state = game.state()
    assert state is None
    assert game.next_wake_ms() == 16_000  # 1000 + 20000 - 5000
    game.advance(15_999)  # early calls are harmless
    assert sent(game) == [] and game.end_reason is None
    game.advance(16_000)
    assert sent(game) == [(None, {"kind": "expiring", "in_ms": 5000, "at_ms": 21_000})]
    assert game.next_wake_ms() == 21_000
    game.advance(18_000)
    assert sent(game) == []  # warned once per idle period
    game.advance(21_000)
    assert game.end_reason == "idle"
    assert game.next_wake_ms() is None
    assert game.clock_ms == 20_000
    game.advance(30_000)
    assert game.clock_ms == 20_000 and sent(game) == []


def test_send_pin_and_unpin_each_push_the_expiry_back_and_rearm_the_warning() -> None:
    game = room("ann", "bob", idle_ms=20_000, warn_ms=5000)
    game.advance(15_000)
    assert [body["kind"] for _, body in sent(game)] == ["expiring"]
    game.handle(1, Send(payload=1), 16_000)
    state = game.state()
    assert state is not None and state["expires_ms"] == 36_000
    assert game.next_wake_ms() == 31_000
    game.handle(2, Pin(payload=1), 20_000)
    assert game.next_wake_ms() == 35_000
    game.handle(2, Unpin(), 25_000)
    state = game.state()
    assert state is not None and state["expires_ms"] == 45_000
    game.drain_events()
    game.advance(40_000)
    assert sent(game) == [(None, {"kind": "expiring", "in_ms": 5000, "at_ms": 45_000})]


def test_refusals_joins_and_releases_are_no_activity() -> None:
    game = room("ann", "bob", idle_ms=20_000, warn_ms=5000)
    assert refused(game, 1, Unpin(), 10_000) == "nothing_pinned"
    game.join(3, "cy", 11_000)
    game.release(3, 12_000)
    state = game.state()
    assert state is not None and state["expires_ms"] == 20_000
    assert game.next_wake_ms() == 15_000


def test_a_warning_as_long_as_the_idle_time_is_cut_to_half_of_it() -> None:
    game = room("ann", idle_ms=10_000)  # warn_ms keeps its 60000 default
    assert game.welcome(1)["warn_ms"] == 5000
    assert game.next_wake_ms() == 5000


def test_a_late_wake_past_the_expiry_ends_the_room_without_a_warning() -> None:
    game = room("ann", idle_ms=20_000, warn_ms=5000)
    game.advance(25_000)
    assert game.end_reason == "idle"
    assert sent(game) == []


def test_a_message_arriving_after_the_expiry_time_finds_the_room_closed() -> None:
    game = room("ann", "bob", idle_ms=20_000, warn_ms=5000)
    game.advance(15_000)
    game.drain_events()
    with pytest.raises(Refused) as caught:  # the host's timer is late: the clock decides, not the order
        game.handle(1, Send(payload=1), 20_000)
    assert caught.value.code == "game_over"
    assert game.end_reason == "idle"


def test_a_message_after_the_warning_time_but_before_the_wake_still_gets_the_warning_first() -> None:
    game = room("ann", "bob", idle_ms=20_000, warn_ms=5000)
    game.handle(1, Send(payload=1), 16_000)
    assert [body["kind"] for _, body in sent(game)] == ["expiring", "message", "sent"]
    assert game.next_wake_ms() == 31_000


def test_the_match_time_limit_does_not_cut_a_relay_room_short() -> None:
    game = RelayGame(context(time_limit_ms=1000))
    game.join(1, "ann", 0)
    game.start(0)
    game.advance(100_000)
    assert game.end_reason is None
    assert game.clock_ms == 100_000


# -- state -------------------------------------------------------------------------------------------


def test_state_is_none_until_something_changes() -> None:
    game = RelayGame(context())
    game.join(1, "ann", 0)
    assert game.state() is not None
    assert game.state() is None
    game.start(0)
    state = game.state()
    assert state == {"members": [{"p": 1, "name": "ann", "sent": 0, "received": 0}], "pinned": None,
                     "expires_ms": 300_000, "messages": 0}
    assert game.state() is None
    game.advance(1000)
    game.away(1, 2000)
    assert game.state() is None
    game.handle(1, Send(payload=1), 3000)
    assert game.state() is not None
    assert game.state() is None


def test_the_clock_counts_from_the_start() -> None:
    game = RelayGame(context())
    game.join(1, "ann", 500)
    game.advance(700)
    assert game.clock_ms == 0
    game.start(1000)
    game.advance(4000)
    assert game.clock_ms == 3000


# -- snapshots and determinism -----------------------------------------------------------------------

Step = tuple[int, str, tuple[Any, ...]]

SCRIPT: list[Step] = [
    (0, "join", (1, "ann")), (0, "join", (2, "bob")), (0, "start", ()),
    (1000, "send", (1, {"hello": "all"}, None)), (2000, "pin", (2, {"topic": "relay"})),
    (2500, "send", (2, [1, 2, 3], 1)), (3000, "join", (3, "cy")), (3500, "send", (3, "hi", 2)),
    (4000, "away", (2,)), (5000, "send", (1, "to the away one", 2)), (6000, "unpin", (1,)),
    (6500, "send", (1, "x", 1)),  # refused: to yourself
    (9000, "send", (3, {"n": 1}, None)), (9500, "pin", (3, "pinned again")),
    # -- the snapshot is taken here in the round-trip test
    (10_000, "join", (4, "dee")),
    (22_000, "send", (4, "late", 3)), (23_000, "release", (1,)), (27_000, "unpin", (2,)),
    (40_000, "release", (2,)), (41_000, "send", (3, "last words", None)), (100_000, "advance", ()),
]
SPLIT = 14  # steps before the snapshot


def play(game: RelayGame, steps: list[Step]) -> list[Any]:
    """Run `steps` like the host would (waking the game at the times it asks for) and keep all it said."""
    transcript: list[Any] = []

    def read(now_ms: int, what: str, outcome: Any) -> None:
        events = [(event.to, event.body, event.record) for event in game.drain_events()]
        transcript.append((now_ms, what, outcome, game.state(), events, game.end_reason, game.next_wake_ms()))

    for now_ms, op, args in steps:
        wake = game.next_wake_ms()
        while wake is not None and wake <= now_ms:
            game.advance(wake)
            read(wake, "wake", None)
            wake = game.next_wake_ms()
        outcome: Any = None
        if op == "join":
            game.join(args[0], args[1], now_ms)
        elif op == "away":
            game.away(args[0], now_ms)
        elif op == "release":
            game.release(args[0], now_ms)
        elif op == "start":
            game.start(now_ms)
        elif op == "advance":
            game.advance(now_ms)
        else:
            message: Message = (Send(payload=args[1], to=args[2]) if op == "send" else
                                Pin(payload=args[1]) if op == "pin" else Unpin())
            try:
                game.handle(args[0], message, now_ms)
            except Refused as refusal:
                outcome = refusal.code
        read(now_ms, op, outcome)
    transcript.append(("end", game.standings(), game.clock_ms))
    return transcript


def test_a_snapshot_mid_match_restores_into_a_room_that_goes_on_identically() -> None:
    options = {"idle_ms": 20_000, "warn_ms": 5000, "payload_max_bytes": 64}
    original = RelayGame(context(**options))
    play(original, SCRIPT[:SPLIT])
    snapshot = orjson.loads(orjson.dumps(original.snapshot()))
    assert [entry["pid"] for entry in snapshot["players"]] == [1, 2, 3]
    assert snapshot["pin"] == {"by": 3, "payload": "pinned again", "at_ms": 9500}
    restored = RelayGame(context(**options))
    restored.restore(snapshot)
    assert orjson.loads(orjson.dumps(restored.snapshot())) == snapshot
    assert [m["p"] for m in members(restored.state())] == [1, 2, 3]  # every member listed, though all away
    # The host brings every player back by a join; the original room sees the same returns.
    rejoin: list[Step] = [(9700, "join", (1, "ann")), (9700, "join", (2, "bob")), (9700, "join", (3, "cy"))]
    rest = rejoin + SCRIPT[SPLIT:]
    assert play(restored, rest) == play(original, rest)
    assert restored.end_reason == "idle"


def test_the_pin_survives_a_snapshot_and_reaches_members_coming_back() -> None:
    game = room("ann", "bob")
    game.handle(2, Pin(payload={"keep": True}), 1234)
    restored = RelayGame(context())
    restored.restore(orjson.loads(orjson.dumps(game.snapshot())))
    assert restored.next_wake_ms() == game.next_wake_ms()
    assert restored.clock_ms == game.clock_ms == 1234
    restored.join(1, "ann", 2000)
    assert sent(restored) == [(1, {"kind": "pinned", "by": 2, "payload": {"keep": True}, "at_ms": 1234})]
    state = restored.state()
    assert state is not None and state["pinned"] == {"by": 2, "payload": {"keep": True}, "at_ms": 1234}


def test_a_snapshot_of_another_version_is_refused() -> None:
    snapshot = room("ann").snapshot()
    with pytest.raises(ValueError):
        RelayGame(context()).restore({**snapshot, "v": 99})


def test_same_seed_and_inputs_give_the_same_match() -> None:
    first = play(RelayGame(context(5, idle_ms=20_000, warn_ms=5000)), SCRIPT)
    second = play(RelayGame(context(5, idle_ms=20_000, warn_ms=5000)), SCRIPT)
    assert first == second
    refusals = [entry[2] for entry in first if len(entry) == 7 and entry[2] is not None]
    assert refusals == ["no_such_member"]


# -- the bot -----------------------------------------------------------------------------------------


def started_state(*pids: int) -> dict[str, Any]:
    return {"type": "state", "tick": 1, "t": 0, "pinned": None, "expires_ms": 300_000, "messages": 0,
            "members": [{"p": pid, "name": f"p{pid}", "sent": 0, "received": 0} for pid in pids]}


def test_the_bot_waits_for_a_started_room_that_lists_it() -> None:
    bot = RelayBot(random.Random(3))
    bot.on_message({"type": "welcome", "you": 2, "payload_max_bytes": 2048, "idle_ms": 300_000,
                    "warn_ms": 60_000}, 0)
    assert all(bot.on_tick(t) == [] for t in range(0, 20_000, 100))
    bot.on_message({**started_state(1, 2), "expires_ms": None}, 20_000)  # before the start
    assert all(bot.on_tick(t) == [] for t in range(20_000, 40_000, 100))
    bot.on_message(started_state(1, 3), 40_000)  # a room without it
    assert all(bot.on_tick(t) == [] for t in range(40_000, 60_000, 100))


def test_the_bot_sends_every_two_to_six_seconds_and_never_to_itself() -> None:
    bot = RelayBot(random.Random(8))
    bot.on_message({"type": "welcome", "you": 2, "payload_max_bytes": 2048}, 0)
    bot.on_message(started_state(1, 2, 3), 0)
    times: list[int] = []
    sends: list[dict[str, Any]] = []
    for t in range(0, 600_000, 100):
        for message in bot.on_tick(t):
            times.append(t)
            sends.append(message)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 2000 <= min(gaps) and max(gaps) <= 6100
    assert {message.get("to") for message in sends} <= {None, 1, 3}
    pins = [m for m in sends if m["type"] == "pin"]
    direct = [m for m in sends if m["type"] == "send" and "to" in m]
    assert 0 < len(pins) < len(direct) < len(sends) // 4
    assert all(isinstance(decode(orjson.dumps(m)), Send | Pin) for m in sends)
    assert sends[0]["payload"] in ({"n": 1, "from_bot": True}, {"note": "bot 2 was here (1)"})


def test_the_bot_alone_sends_to_everyone_and_stops_at_the_match_end() -> None:
    bot = RelayBot(random.Random(4))
    bot.on_message({"type": "welcome", "you": 1, "payload_max_bytes": 2048}, 0)
    bot.on_message(started_state(1), 0)
    sends = [m for t in range(0, 300_000, 100) for m in bot.on_tick(t)]
    assert sends and all("to" not in m for m in sends)
    bot.on_message({"type": "match_end", "reason": "idle"}, 300_000)
    assert all(bot.on_tick(t) == [] for t in range(300_000, 400_000, 100))


def test_the_bot_forgets_a_member_who_left_at_once() -> None:
    bot = RelayBot(random.Random(2))
    bot.on_message({"type": "welcome", "you": 1, "payload_max_bytes": 2048}, 0)
    bot.on_message(started_state(1, 2), 0)
    bot.on_message({"type": "event", "kind": "member_left", "p": 2}, 0)
    sends = [m for t in range(0, 600_000, 100) for m in bot.on_tick(t)]
    assert sends and all("to" not in m for m in sends)


def test_the_bot_shrinks_its_payload_to_fit_a_small_limit() -> None:
    bot = RelayBot(random.Random(5))
    bot.on_message({"type": "welcome", "you": 1, "payload_max_bytes": 16}, 0)
    bot.on_message(started_state(1, 2), 0)
    sends = [m for t in range(0, 600_000, 100) for m in bot.on_tick(t)]
    assert sends and all(isinstance(m["payload"], int) for m in sends)


class Table:
    """The host's side of a bot match: bots as clients over JSON, a simulated clock, every refusal kept."""

    def __init__(self, seed: int, **options: int) -> None:
        self.ctx = context(seed, **options)
        self.game = RelayGame(self.ctx)
        self.bots: dict[int, RelayBot] = {}
        self.connected: list[int] = []
        self.refusals: list[tuple[int, str]] = []
        self.seen: list[dict[str, Any]] = []  # everything sent to any bot
        self.tick = 0
        self.rng = random.Random(seed)

    def deliver(self, pid: int, message: dict[str, Any], now_ms: int) -> None:
        wire: dict[str, Any] = orjson.loads(orjson.dumps(message))  # as the server would encode it
        self.seen.append(wire)
        for answer in self.bots[pid].on_message(wire, now_ms):
            self.receive(pid, answer, now_ms)

    def receive(self, pid: int, answer: dict[str, Any], now_ms: int) -> None:
        message = decode(orjson.dumps(answer))
        try:
            self.game.handle(pid, message, now_ms)
        except Refused as refusal:
            self.refusals.append((pid, refusal.code))
        self.flush(now_ms)

    def flush(self, now_ms: int) -> None:
        state = self.game.state()
        if state is not None:
            self.tick += 1
            for pid in list(self.connected):
                self.deliver(pid, {"type": "state", "tick": self.tick, "t": now_ms, **state}, now_ms)
        for event in self.game.drain_events():
            for pid in [event.to] if event.to is not None else list(self.connected):
                if pid in self.connected:
                    self.deliver(pid, {"type": "event", **event.body}, now_ms)
        if self.game.end_reason is not None:
            for pid in list(self.connected):
                self.deliver(pid, {"type": "match_end", "reason": self.game.end_reason}, now_ms)
            self.connected = []

    def join(self, pid: int, now_ms: int) -> None:
        if pid not in self.bots:
            self.bots[pid] = RelayBot(random.Random(self.rng.random()))
        self.game.join(pid, f"bot{pid}", now_ms)
        self.connected.append(pid)
        self.deliver(pid, {"type": "welcome", "you": pid, **self.game.welcome(pid)}, now_ms)
        self.flush(now_ms)

    def away(self, pid: int, now_ms: int) -> None:
        self.connected.remove(pid)
        self.game.away(pid, now_ms)
        self.flush(now_ms)

    def release(self, pid: int, now_ms: int) -> None:
        if pid in self.connected:
            self.connected.remove(pid)
        self.game.release(pid, now_ms)
        self.flush(now_ms)

    def run(self, until_ms: int, start_ms: int, step_ms: int = 100) -> None:
        """Step the clock at the bots' input rate (10 Hz), waking the game when it asked to be."""
        for now_ms in range(start_ms, until_ms, step_ms):
            if self.game.end_reason is not None:
                return
            wake = self.game.next_wake_ms()
            if wake is not None and wake <= now_ms:
                self.game.advance(now_ms)
                self.flush(now_ms)
            for pid in list(self.connected):
                for answer in self.bots[pid].on_tick(now_ms):
                    self.receive(pid, answer, now_ms)


def test_bots_play_a_whole_match_through_json_until_the_last_member_leaves() -> None:
    table = Table(11)
    for pid in (1, 2, 3):
        table.join(pid, 0)
    table.game.start(0)
    table.flush(0)
    table.run(60_000, 0)
    table.join(4, 60_000)  # a backfilled newcomer
    table.run(90_000, 60_000)
    table.release(2, 90_000)
    table.run(150_000, 90_000)
    for pid in (1, 3, 4):
        table.release(pid, 150_000)
    assert table.refusals == []
    assert table.game.end_reason == "empty"
    kinds = [m.get("kind") for m in table.seen if m["type"] == "event"]
    assert {"message", "sent", "pinned", "member_joined", "member_left"} <= set(kinds)
    assert any(m.get("direct") for m in table.seen if m.get("kind") == "message")
    standings = table.game.standings()
    assert [s.pid for s in standings] == [1, 2, 3, 4]
    assert all(s.rank == 1 and s.score == 0 for s in standings)
    assert sum(s.figures["sent"] for s in standings) == kinds.count("sent")
    assert sum(s.figures["received"] for s in standings) >= kinds.count("message")


def test_bots_whose_connections_drop_leave_a_room_that_expires_idle() -> None:
    table = Table(12, idle_ms=10_000, warn_ms=3000, payload_max_bytes=16)
    for pid in (1, 2):
        table.join(pid, 0)
    table.game.start(0)
    table.flush(0)
    table.run(30_000, 0)
    table.away(1, 30_000)
    table.away(2, 30_000)
    table.run(60_000, 30_000)
    assert table.refusals == []
    assert table.game.end_reason == "idle"
    assert table.game.next_wake_ms() is None
    assert any(m.get("kind") == "message" for m in table.seen)


def test_a_bot_match_is_the_same_every_time_with_the_same_seed() -> None:
    def transcript() -> list[dict[str, Any]]:
        table = Table(13)
        table.join(1, 0)
        table.join(2, 0)
        table.game.start(0)
        table.flush(0)
        table.run(40_000, 0)
        return table.seen

    assert transcript() == transcript()


# -- the doc page ------------------------------------------------------------------------------------


def test_the_doc_page_lists_every_message_field_and_refusal_code() -> None:
    text = DOC.read_text()
    table = text.split("## Messages", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    documented = {re.findall(r"`(\w+)`", row.split("|")[1])[0]: set(re.findall(r"`(\w+)`", row.split("|")[2]))
                  for row in rows}
    declared = {message_type(cls): set(cls.__struct_fields__) for cls in DEFINITION.messages}
    assert documented == declared
    source = Path(__file__).resolve().parent.parent.joinpath("game", "relay.py").read_text()
    errors = text.split("## Errors", 1)[1].split("\n## ", 1)[0]
    for code in set(re.findall(r'Refused\("(\w+)"', source)):
        assert f"`{code}`" in errors, code
    options = text.split("## Options", 1)[1].split("\n## ", 1)[0]
    for name in RelayOptions.__struct_fields__:
        assert f"`{name}`" in options, name


def test_events_are_plain_json_and_never_recorded() -> None:
    game = room("ann", "bob")
    game.handle(1, Pin(payload={"a": 1}), 10)
    game.handle(1, Send(payload=[1]), 20)
    game.join(3, "cy", 30)
    events: list[Event] = game.drain_events()
    assert events and not any(event.record for event in events)
    assert all(orjson.loads(orjson.dumps(event.body)) == event.body for event in events)
