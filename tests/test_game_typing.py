"""The typing race, driven by plain calls with a simulated room clock: rules, refusals, time limit, seats,
snapshots, schemas, and whole races played by its bot through JSON."""

from __future__ import annotations

import random
import re
import string
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from game.api import EVENT_DRIVEN, Event, Forming, GameContext, Message, Refused, Seats, message_type
from game.typing_race import DEFINITION, KeyPress, TypingBot, TypingOptions, TypingRace, make
from game.typing_words import WORDS

START = 1_000  # room clock at the start of most races here


def new_race(seed: int = 7, words: int = 5, time_limit_ms: int = 120_000, match_limit_ms: int = 0,
             options: TypingOptions | None = None) -> TypingRace:
    if options is None:
        options = TypingOptions(words=words, time_limit_ms=time_limit_ms)
    return make(GameContext(random.Random(seed), match_limit_ms, options))


def started_race(players: int = 2, **kwargs: Any) -> TypingRace:
    race = new_race(**kwargs)
    for pid in range(1, players + 1):
        race.join(pid, f"p{pid}", 0)
    race.start(START)
    race.state()
    return race


def text_of(race: TypingRace) -> str:
    return str(race.welcome(1)["text"])


def press(race: TypingRace, pid: int, keys: str, now_ms: int) -> None:
    for key in keys:
        race.handle(pid, KeyPress(c=key), now_ms)


def player(race: TypingRace, pid: int) -> dict[str, Any]:
    race._dirty = True  # peek at the state without depending on what was sent before
    state = race.state()
    assert state is not None
    entries = [entry for entry in state["players"] if entry["p"] == pid]
    assert len(entries) == 1
    return dict(entries[0])


def wrong_key(expected: str) -> str:
    return "x" if expected != "x" else "y"


# -- the definition and the text -----------------------------------------------------------------------


def test_the_definition_declares_a_typing_race_for_two_to_five_players() -> None:
    assert DEFINITION.mode == "typing"
    assert DEFINITION.title == "Typing race"
    assert DEFINITION.seats == Seats(min=2, max=5)
    assert DEFINITION.forming is Forming.COUNTDOWN
    assert DEFINITION.clock == EVENT_DRIVEN
    assert [message_type(cls) for cls in DEFINITION.messages] == ["key"]
    assert tuple(DEFINITION.figures) == ("wpm", "accuracy", "finished")
    assert DEFINITION.options is TypingOptions
    assert DEFINITION.bot is not None
    assert TypingOptions() == TypingOptions(words=25, time_limit_ms=120_000)


def test_the_word_list_holds_about_500_distinct_lower_case_words_of_3_to_8_letters() -> None:
    assert 450 <= len(WORDS) <= 550
    assert len(set(WORDS)) == len(WORDS)
    assert all(re.fullmatch("[a-z]{3,8}", word) for word in WORDS)


def test_the_text_is_the_chosen_number_of_listed_words_joined_by_single_spaces() -> None:
    race = new_race(words=40)
    welcome = race.welcome(1)
    assert len(welcome["words"]) == 40
    assert all(word in WORDS for word in welcome["words"])
    assert welcome["text"] == " ".join(welcome["words"])
    assert set(welcome) == {"text", "words"}


def test_without_options_the_text_has_25_words() -> None:
    race = make(GameContext(random.Random(3), 0, None))
    assert len(race.welcome(1)["words"]) == 25


def test_the_text_comes_from_the_seeded_rng_before_the_start_and_is_the_same_for_everyone() -> None:
    race = new_race(seed=11)
    assert race.welcome(1) == race.welcome(2)
    assert new_race(seed=11).welcome(1) == race.welcome(1)
    assert new_race(seed=12).welcome(1) != race.welcome(1)
    race.join(1, "ann", 0)
    race.join(2, "bob", 0)
    before = race.welcome(1)
    race.start(START)
    assert race.welcome(2) == before


# -- keystrokes ----------------------------------------------------------------------------------------


def test_a_key_before_the_start_is_refused_and_changes_nothing() -> None:
    race = new_race()
    race.join(1, "ann", 0)
    race.join(2, "bob", 0)
    race.state()
    with pytest.raises(Refused) as refused:
        race.handle(1, KeyPress(c=text_of(race)[0]), 500)
    assert refused.value.code == "not_started"
    assert race.state() is None
    assert race.drain_events() == []


def test_the_right_key_moves_the_player_on_through_words_and_spaces() -> None:
    race = started_race()
    text = text_of(race)
    first = text.split(" ")[0]
    press(race, 1, first, 2_000)
    assert player(race, 1) == {"p": 1, "name": "p1", "word": 0, "char": len(first), "pos": len(first),
                               "errors": 0, "finished": False, "place": None}
    press(race, 1, " ", 2_100)
    assert (player(race, 1)["word"], player(race, 1)["char"], player(race, 1)["pos"]) == (1, 0, len(first) + 1)
    press(race, 1, text[len(first) + 1], 2_200)
    assert (player(race, 1)["word"], player(race, 1)["char"], player(race, 1)["pos"]) == (1, 1, len(first) + 2)
    assert player(race, 2)["pos"] == 0


def test_a_wrong_key_counts_an_error_and_the_player_must_still_type_the_right_one() -> None:
    race = started_race()
    text = text_of(race)
    press(race, 1, wrong_key(text[0]), 2_000)
    assert (player(race, 1)["pos"], player(race, 1)["errors"]) == (0, 1)
    press(race, 1, text[0].upper(), 2_050)  # a different character, however close
    press(race, 1, text[0], 2_100)
    assert (player(race, 1)["pos"], player(race, 1)["errors"]) == (1, 2)


def test_a_letter_where_a_space_is_due_is_an_error() -> None:
    race = started_race()
    first = text_of(race).split(" ")[0]
    press(race, 1, first, 2_000)
    press(race, 1, "a", 2_100)
    assert (player(race, 1)["word"], player(race, 1)["pos"], player(race, 1)["errors"]) == (0, len(first), 1)


def test_every_keystroke_right_or_wrong_changes_the_state_and_nothing_else_does() -> None:
    race = started_race()
    text = text_of(race)
    assert race.state() is None
    race.advance(1_500)
    assert race.state() is None
    race.handle(1, KeyPress(c=text[0]), 2_000)
    assert race.state() is not None
    assert race.state() is None
    race.handle(2, KeyPress(c=wrong_key(text[0])), 2_100)
    assert race.state() is not None
    assert race.state() is None
    race.away(2, 2_200)
    assert race.state() is None


def test_the_state_lists_players_in_join_order_with_the_time_limit_and_the_text_length() -> None:
    race = new_race()
    race.join(2, "bob", 0)
    race.join(1, "ann", 10)
    state = race.state()
    assert state is not None
    assert [entry["p"] for entry in state["players"]] == [2, 1]
    assert state["ends_ms"] is None
    assert state["length"] == len(text_of(race))
    assert "text" not in state
    assert not {"type", "tick", "t"} & set(state)
    race.start(START)
    state = race.state()
    assert state is not None
    assert state["ends_ms"] == START + 120_000
    assert state["players"][0] == {"p": 2, "name": "bob", "word": 0, "char": 0, "pos": 0, "errors": 0,
                                   "finished": False, "place": None}


# -- finishing and the end ------------------------------------------------------------------------------


def test_typing_the_last_character_finishes_with_place_wpm_accuracy_and_time() -> None:
    race = started_race(players=3)
    text = text_of(race)
    press(race, 1, wrong_key(text[0]) * 2, 2_000)
    press(race, 1, text, START + 60_000)
    assert race.drain_events() == [Event({"kind": "finished", "p": 1, "place": 1,
                                          "wpm": round(len(text) / 5, 1),
                                          "accuracy": round(len(text) / (len(text) + 2), 3), "ms": 60_000})]
    assert player(race, 1) == {"p": 1, "name": "p1", "word": len(text.split(" ")) - 1,
                               "char": len(text.split(" ")[-1]), "pos": len(text), "errors": 2,
                               "finished": True, "place": 1}
    press(race, 3, text, START + 30_000 + 60_000)
    event = race.drain_events()[0].body
    assert (event["p"], event["place"], event["wpm"], event["accuracy"], event["ms"]) == (
        3, 2, round(len(text) / 5 / 1.5, 1), 1.0, 90_000)
    assert race.end_reason is None


def test_a_finished_player_s_keys_are_refused() -> None:
    race = started_race()
    text = text_of(race)
    press(race, 1, text, 20_000)
    race.state()
    with pytest.raises(Refused) as refused:
        race.handle(1, KeyPress(c="a"), 21_000)
    assert refused.value.code == "finished"
    assert race.state() is None
    assert player(race, 1)["errors"] == 0


def test_the_race_ends_when_every_seat_holder_has_finished() -> None:
    race = started_race(players=3)
    text = text_of(race)
    press(race, 2, text, 20_000)
    press(race, 3, text, 25_000)
    assert race.end_reason is None
    press(race, 1, text, 31_000)
    assert race.end_reason == "finished"
    assert race.clock_ms == 30_000
    assert race.next_wake_ms() is None
    with pytest.raises(Refused) as refused:
        race.handle(1, KeyPress(c="a"), 31_500)
    assert refused.value.code == "game_over"
    assert [(s.pid, s.rank) for s in race.standings()] == [(2, 1), (3, 2), (1, 3)]


def test_the_race_waits_for_an_away_player_who_holds_their_seat() -> None:
    race = started_race()
    text = text_of(race)
    press(race, 2, text[:4], 2_000)
    race.away(2, 3_000)
    press(race, 1, text, 20_000)
    assert race.end_reason is None
    assert player(race, 2)["pos"] == 4  # listed, progress kept
    race.join(2, "p2", 40_000)
    press(race, 2, text[4:], 45_000)
    assert race.end_reason == "finished"
    assert [(s.pid, s.rank, s.figures["finished"]) for s in race.standings()] == [(1, 1, 1), (2, 2, 1)]


def test_releasing_the_last_unfinished_seat_ends_the_race_as_finished() -> None:
    race = started_race(players=3)
    text = text_of(race)
    press(race, 1, text, 20_000)
    press(race, 2, text, 21_000)
    race.release(3, 22_000)
    assert race.end_reason == "finished"


# -- the time limit ------------------------------------------------------------------------------------


def test_the_time_limit_ends_the_race_through_next_wake_and_advance() -> None:
    race = started_race(time_limit_ms=30_000)
    assert race.next_wake_ms() == START + 30_000
    race.advance(START + 29_999)
    assert race.end_reason is None
    assert race.clock_ms == 29_999
    race.advance(START + 30_000)
    assert race.end_reason == "time"
    assert race.next_wake_ms() is None
    race.advance(START + 40_000)  # a late call changes nothing
    assert race.clock_ms == 30_000


def test_a_key_at_the_time_limit_is_refused_even_before_advance_ends_the_race() -> None:
    race = started_race(time_limit_ms=30_000)
    with pytest.raises(Refused) as refused:
        race.handle(1, KeyPress(c=text_of(race)[0]), START + 30_000)
    assert refused.value.code == "game_over"
    assert player(race, 1)["pos"] == 0
    race.advance(START + 30_001)
    assert race.end_reason == "time"
    assert race.clock_ms == 30_000  # the race ended at its limit, not when advance came


def test_the_match_limit_applies_when_shorter_and_not_zero() -> None:
    assert started_race(time_limit_ms=60_000, match_limit_ms=45_000).next_wake_ms() == START + 45_000
    assert started_race(time_limit_ms=60_000, match_limit_ms=90_000).next_wake_ms() == START + 60_000
    assert started_race(time_limit_ms=60_000, match_limit_ms=0).next_wake_ms() == START + 60_000


def test_there_is_no_wake_before_the_start_and_advance_is_harmless_any_time() -> None:
    race = new_race()
    race.join(1, "ann", 0)
    assert race.next_wake_ms() is None
    race.advance(500)
    race.advance(500)
    assert race.end_reason is None
    assert race.clock_ms == 0
    assert race.standings() == []


def test_at_the_time_limit_unfinished_players_rank_by_progress_after_the_finishers() -> None:
    race = started_race(players=5, words=25, time_limit_ms=60_000)
    text = text_of(race)
    press(race, 3, text, START + 30_000)  # 1st
    press(race, 5, text, START + 50_000)  # 2nd
    press(race, 1, text[:20], START + 10_000)  # 20 chars till the end: 4.0 wpm
    press(race, 2, text[:20] + wrong_key(text[20]) * 5, START + 10_000)  # equal progress, shares the rank
    press(race, 4, text[:30], START + 5_000)
    race.release(4, START + 30_000)  # more progress, but out of the race: 30 chars in 30 s, 12.0 wpm
    race.advance(START + 60_000)
    assert race.end_reason == "time"
    results = [(s.pid, s.rank, s.score, dict(s.figures)) for s in race.standings()]
    wpm_3 = round(len(text) / 5 / 0.5, 1)
    wpm_5 = round(len(text) / 5 / (50 / 60), 1)
    assert results == [
        (3, 1, round(wpm_3), {"wpm": wpm_3, "accuracy": 1.0, "finished": 1}),
        (5, 2, round(wpm_5), {"wpm": wpm_5, "accuracy": 1.0, "finished": 1}),
        (1, 3, 2, {"wpm": 4.0, "accuracy": 1.0, "finished": 0}),
        (2, 3, 2, {"wpm": 4.0, "accuracy": 0.8, "finished": 0}),
        (4, 5, 6, {"wpm": 12.0, "accuracy": 1.0, "finished": 0}),
    ]


def test_a_player_without_a_key_has_zero_wpm_and_full_accuracy() -> None:
    race = started_race(time_limit_ms=10_000)
    race.advance(START + 10_000)
    assert [(s.rank, s.score, dict(s.figures)) for s in race.standings()] == [
        (1, 0, {"wpm": 0.0, "accuracy": 1.0, "finished": 0})] * 2


# -- seats ----------------------------------------------------------------------------------------------


def test_a_player_who_releases_before_the_start_is_not_in_the_race() -> None:
    race = new_race()
    for pid in (1, 2, 3):
        race.join(pid, f"p{pid}", 0)
    race.release(2, 100)
    race.start(START)
    state = race.state()
    assert state is not None
    assert [entry["p"] for entry in state["players"]] == [1, 3]
    race.release(3, 2_000)
    assert race.end_reason == "last_player"
    assert [s.pid for s in race.standings()] == [1, 3]


def test_all_but_one_releasing_ends_the_race_for_the_last_player() -> None:
    race = started_race(players=3)
    text = text_of(race)
    press(race, 2, text[:10], 2_000)
    race.release(2, 3_000)
    state = race.state()
    assert state is not None
    assert [entry["p"] for entry in state["players"]] == [1, 3]  # out of the race
    assert race.end_reason is None
    race.release(3, 4_000)
    assert race.end_reason == "last_player"
    assert race.clock_ms == 3_000
    assert [(s.pid, s.rank) for s in race.standings()] == [(1, 1), (2, 2), (3, 3)]


def test_a_last_player_who_is_away_ends_the_race_when_they_come_back() -> None:
    race = started_race(players=2)
    race.away(1, 2_000)
    race.release(2, 3_000)
    assert race.end_reason is None
    race.join(1, "p1", 5_000)
    assert race.end_reason == "last_player"


def test_dropping_keeps_progress_and_coming_back_sends_the_state_again() -> None:
    race = started_race()
    text = text_of(race)
    press(race, 1, text[:6], 2_000)
    race.state()
    race.away(1, 3_000)
    assert race.state() is None
    race.join(1, "ann again", 4_000)
    state = race.state()
    assert state is not None
    assert [(entry["name"], entry["pos"]) for entry in state["players"]] == [("ann again", 6), ("p2", 0)]
    press(race, 1, text[6], 5_000)
    assert player(race, 1)["pos"] == 7


# -- snapshots and determinism ---------------------------------------------------------------------------


def scripted_race(race: TypingRace, steps: list[tuple[int, int, str]]) -> list[Any]:
    """Feed (now, pid, keys) steps, noting refusals, states, events and the end after each."""
    seen: list[Any] = []
    for now, pid, keys in steps:
        for key in keys:
            try:
                race.handle(pid, KeyPress(c=key), now)
            except Refused as refused:
                seen.append(("refused", refused.code))
        wake = race.next_wake_ms()
        if wake is not None and wake <= now:
            race.advance(now)
        seen.append((race.state(), [(e.body, e.to, e.record) for e in race.drain_events()], race.end_reason,
                     race.clock_ms))
    seen.append([(s.pid, s.rank, s.score, dict(s.figures)) for s in race.standings()])
    return seen


def race_steps(text: str) -> list[tuple[int, int, str]]:
    """Three players typing the text in chunks of 4 at 4, 2.5 and 0.5 keys a second, now and then a wrong key
    first; then keys after the finish and after a 60 s limit."""
    steps: list[tuple[int, int, str]] = []
    for pid, ms_per_key in ((1, 250), (2, 400), (3, 2_000)):
        for i in range(0, len(text), 4):
            chunk = text[i:i + 4] if i % 12 else wrong_key(text[i]) + text[i:i + 4]
            steps.append((START + ms_per_key * (i + 4), pid, chunk))
    steps.append((START + 30_000, 1, "q"))
    steps.append((START + 70_000, 3, "a"))
    return sorted(steps, key=lambda step: step[0])


def test_the_same_seed_and_inputs_play_the_same_race() -> None:
    first = started_race(players=3, seed=5, time_limit_ms=60_000)
    second = started_race(players=3, seed=5, time_limit_ms=60_000)
    steps = race_steps(text_of(first))
    assert scripted_race(first, steps) == scripted_race(second, steps)


def test_a_race_restored_from_a_snapshot_mid_match_goes_on_exactly_the_same() -> None:
    original = started_race(players=4, seed=9, words=8, time_limit_ms=60_000)
    full = race_steps(text_of(original))
    half = len(full) // 2
    scripted_race(original, full[:half])
    now = full[half - 1][0]
    original.away(4, now)
    original.release(4, now)
    saved = orjson.loads(orjson.dumps(original.snapshot()))
    assert [entry["pid"] for entry in saved["players"]] == [1, 2, 3, 4]

    restored = new_race(seed=9, words=8, time_limit_ms=60_000)
    restored.restore(saved)
    for pid in (1, 2, 3):
        original.join(pid, f"p{pid}", now)
        restored.join(pid, f"p{pid}", now)
    assert restored.state() == original.state()
    assert restored.welcome(1) == original.welcome(1)
    assert restored.next_wake_ms() == original.next_wake_ms()
    assert restored.clock_ms == original.clock_ms
    assert scripted_race(restored, full[half:]) == scripted_race(original, full[half:])
    assert restored.end_reason == "time"


def test_after_a_restore_every_player_is_away_until_they_join() -> None:
    race = started_race(players=3)
    race.away(2, 2_000)
    race.release(3, 3_000)
    restored = new_race()
    restored.restore(orjson.loads(orjson.dumps(race.snapshot())))
    restored.release(2, 4_000)
    assert restored.end_reason is None  # player 1 holds the last seat but is away
    restored.join(1, "p1", 5_000)
    assert restored.end_reason == "last_player"


def test_a_restore_refuses_another_snapshot_version_or_a_game_with_players() -> None:
    race = started_race()
    saved = race.snapshot()
    with pytest.raises(ValueError):
        new_race().restore(saved | {"v": 99})
    with pytest.raises(ValueError):
        race.restore(saved)


# -- schemas --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [
    b'{"type": "key", "c": "ab"}',
    b'{"type": "key", "c": ""}',
    b'{"type": "key", "c": 1}',
    b'{"type": "key", "c": null}',
    b'{"type": "key"}',
    b'{"type": "keys", "c": "a"}',
])
def test_the_key_message_schema_rejects_anything_but_one_character(raw: bytes) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(raw, type=KeyPress)


def test_the_key_message_schema_takes_any_single_character() -> None:
    for raw, key in [(b'{"type": "key", "c": "a"}', "a"), (b'{"type": "key", "c": " ", "seq": 4}', " "),
                     ('{"type": "key", "c": "é"}'.encode(), "é")]:
        message = msgspec.json.decode(raw, type=KeyPress)
        assert isinstance(message, Message)
        assert message.c == key


@pytest.mark.parametrize("raw", [b'{"words": 4}', b'{"words": 201}', b'{"time_limit_ms": 9999}',
                                 b'{"time_limit_ms": 600001}', b'{"words": "many"}'])
def test_the_options_schema_rejects_values_out_of_range(raw: bytes) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(raw, type=TypingOptions)


def test_the_doc_page_lists_the_key_message_and_every_error_code() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "games" / "typing.md").read_text()
    messages = doc.split("## Messages", 1)[1].split("##", 1)[0]
    rows = [line for line in messages.splitlines() if line.startswith("| `")]
    assert [re.findall(r"`([a-z_]+)`", row.split("|")[1]) for row in rows] == [["key"]]
    assert re.findall(r"`([a-z_]+)`", rows[0].split("|")[2]) == list(KeyPress.__struct_fields__)
    errors = doc.split("## Errors", 1)[1].split("##", 1)[0]
    assert set(re.findall(r"^\| `([a-z_]+)`", errors, re.M)) == {"not_started", "game_over", "finished"}


# -- the bot --------------------------------------------------------------------------------------------


class SimulatedRoom:
    """The host's part, as far as the bots can tell: JSON both ways, states and events to everyone, errors
    to the sender, `match_end` to everyone as soon as the race ends; bots and room share one simulated clock."""

    def __init__(self, race: TypingRace, bots: dict[int, TypingBot]) -> None:
        self.race = race
        self.bots = bots
        self.tick = 0
        self.over = False
        self.refusals: list[tuple[int, str]] = []
        self.sent: dict[int, list[str]] = {pid: [] for pid in bots}

    def deliver(self, pid: int, message: dict[str, Any], now_ms: int) -> None:
        for reply in self.bots[pid].on_message(orjson.loads(orjson.dumps(message)), now_ms):
            self.receive(pid, reply, now_ms)

    def flush(self, now_ms: int) -> None:
        state = self.race.state()
        if state is not None:
            self.tick += 1
            for pid in self.bots:
                self.deliver(pid, {"type": "state", "tick": self.tick, "t": self.race.clock_ms, **state}, now_ms)
        for event in self.race.drain_events():
            for pid in self.bots if event.to is None else [event.to]:
                self.deliver(pid, {"type": "event", **event.body}, now_ms)
        if self.race.end_reason is not None and not self.over:
            self.over = True
            ranking = [{"p": s.pid, "rank": s.rank, "score": s.score} for s in self.race.standings()]
            for pid in self.bots:
                self.deliver(pid, {"type": "match_end", "reason": self.race.end_reason,
                                   "duration_ms": self.race.clock_ms, "ranking": ranking}, now_ms)

    def receive(self, pid: int, reply: dict[str, Any], now_ms: int) -> None:
        message = msgspec.json.decode(orjson.dumps(reply), type=KeyPress)
        self.sent[pid].append(message.c)
        try:
            self.race.handle(pid, message, now_ms)
        except Refused as refused:
            self.refusals.append((pid, refused.code))
            self.deliver(pid, {"type": "error", "code": refused.code, "message": refused.message}, now_ms)
        self.race.advance(now_ms)
        self.flush(now_ms)

    def play(self, start_ms: int = 3_000, step_ms: int = 33, until_ms: int = 700_000) -> int:
        """Seat every bot, start at `start_ms`, then tick the bots every `step_ms` until the race is over."""
        for pid in self.bots:
            self.race.join(pid, f"bot{pid}", 0)
            self.deliver(pid, {"type": "welcome", "v": 1, "room": "r1", "mode": "typing", "you": pid,
                               **self.race.welcome(pid)}, 0)
            self.flush(0)
        now = 0
        while not self.over and now < until_ms:
            now += step_ms
            if now >= start_ms and self.race.next_wake_ms() is None:
                self.race.start(now)
                self.flush(now)
            wake = self.race.next_wake_ms()
            if wake is not None and wake <= now:
                self.race.advance(now)
                self.flush(now)
            for pid, bot in self.bots.items():
                for reply in bot.on_tick(now):
                    self.receive(pid, reply, now)
        return now


def test_five_bots_race_through_json_to_the_finish_without_a_refused_key() -> None:
    race = new_race(seed=21, words=25)
    bots = {pid: TypingBot(random.Random(100 + pid)) for pid in range(1, 6)}
    room = SimulatedRoom(race, bots)
    room.play()
    assert race.end_reason == "finished"
    assert room.refusals == []
    standings = race.standings()
    assert sorted(s.rank for s in standings) == [1, 2, 3, 4, 5]
    for standing in standings:
        assert standing.figures["finished"] == 1
        assert 5 * 60 / 5 * 0.9 <= standing.figures["wpm"] <= 9 * 60 / 5 * 1.1  # 5-9 chars/s
        assert standing.figures["accuracy"] > 0.9
    text = text_of(race)
    for pid in bots:
        progress = player(race, pid)
        assert progress["pos"] == len(text)
        assert len(room.sent[pid]) == len(text) + progress["errors"]  # every key sent was taken
    # With the bots' own clock idle afterwards, nothing more is sent.
    assert all(bot.on_tick(10**9) == [] for bot in bots.values())


def test_bots_stop_typing_at_the_time_limit_without_a_refused_key() -> None:
    race = new_race(seed=22, words=200, time_limit_ms=10_000)
    bots = {pid: TypingBot(random.Random(200 + pid)) for pid in (1, 2)}
    room = SimulatedRoom(race, bots)
    end = room.play()
    assert race.end_reason == "time"
    assert room.refusals == []
    assert all(s.figures["finished"] == 0 and s.figures["wpm"] > 0 for s in race.standings())
    assert all(bot.on_tick(end + 1_000) == [] for bot in bots.values())


def test_the_bot_waits_for_the_start_then_types_5_to_9_keys_a_second_with_few_wrong_ones() -> None:
    race = new_race(seed=3, words=200)
    bot = TypingBot(random.Random(4))
    text = text_of(race)
    bot.on_message({"type": "welcome", "you": 1, **race.welcome(1)}, 0)
    bot.on_message({"type": "state", "tick": 1, "t": 0, "players": [], "ends_ms": None, "length": len(text)}, 10)
    assert bot.on_tick(5_000) == []
    bot.on_message({"type": "state", "tick": 2, "t": 0, "players": [{"p": 1, "pos": 0, "finished": False}],
                    "ends_ms": 125_000, "length": len(text)}, 5_000)
    keys = [key for now in range(5_000, 65_000, 33) for key in bot.on_tick(now)]
    assert all(set(key) == {"type", "c"} and key["type"] == "key" for key in keys)
    assert 5 * 60 <= len(keys) <= 9 * 60 + 1
    pos = errors = 0
    wrong_before = False
    for key in keys:
        if key["c"] == text[pos]:
            pos += 1
            wrong_before = False
        else:
            assert key["c"] in string.ascii_lowercase
            assert not wrong_before  # a wrong key is put right at once
            errors += 1
            wrong_before = True
    assert 0 < errors < len(keys) * 0.08


def test_the_bot_sends_every_key_due_since_its_last_tick_at_once() -> None:
    race = new_race(seed=3)
    bot = TypingBot(random.Random(4))
    bot.on_message({"type": "welcome", "you": 1, **race.welcome(1)}, 0)
    bot.on_message({"type": "state", "players": [], "ends_ms": 100_000, "length": 10}, 0)
    assert 4 <= len(bot.on_tick(1_000)) <= 9
    assert bot.on_tick(1_000) == []


def test_a_bot_that_comes_back_goes_on_from_where_the_state_says_it_is() -> None:
    race = new_race(seed=3)
    text = text_of(race)
    bot = TypingBot(random.Random(4))
    bot.on_message({"type": "welcome", "you": 2, **race.welcome(2)}, 0)
    bot.on_message({"type": "state", "players": [{"p": 2, "pos": 9, "finished": False}], "ends_ms": 100_000,
                    "length": len(text)}, 0)
    keys = [key["c"] for now in range(0, 3_000, 33) for key in bot.on_tick(now)]
    assert text[9] in keys[:2]  # the first key, or the one right after a wrong first one
    finished = {"p": 2, "pos": len(text), "finished": True}
    bot.on_message({"type": "state", "players": [finished], "ends_ms": 100_000, "length": len(text)}, 3_000)
    assert bot.on_tick(10_000) == []
