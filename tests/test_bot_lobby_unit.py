"""The bot's --lobby mode without a server: its settings and process split, the summary's lobby figures
merged over processes, one bot's handling of lobby messages fed as fake frames, and its run loop
(lobby, then the matched game, then the lobby again) over a fake `ws_connect`."""

from __future__ import annotations

import asyncio
import random
from array import array
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

import orjson
import pytest
from picows import WSHandshakeError, WSListener, WSMsgType, WSTransport
from picows.picows import _make_test_ws_frame

from bot.cli import build_parser
from bot.client import BotClient, Phase, Tally
from bot.plan import BotSettings, BotSettingsError, bot_spec, plan_processes
from bot.stats import ProcessResult, Progress, ProgressBoard, summarize, summary_text
from game.arena_bot import ArenaBot
from tests.serverkit import wait_for

BASE_URL = "ws://127.0.0.1:8000"
JOIN = {"type": "join", "v": 1, "mode": "arena"}
GAME_URL = "ws://10.0.0.7:8001/game?room=arena-7f3a&ticket=t.k-1"


def settings_from(*argv: str) -> BotSettings:
    return BotSettings.from_args(build_parser().parse_args(list(argv)), {}, run_id="abc123")


def match_found(room: str = "arena-7f3a", url: str = GAME_URL, rejoin: bool = False) -> dict[str, Any]:
    return {"type": "match_found", "room": room, "mode": "arena", "node": "node-2", "url": url, "ticket": "t.k-1",
            "players": [{"id": "6f1c0e0a-0000-4000-8000-000000000001", "name": "bot-abc123-0"}], "rejoin": rejoin}


# -- settings and split ----------------------------------------------------------------------------


def test_lobby_mode_is_off_by_default() -> None:
    settings = settings_from()
    assert settings.lobby is False and settings.grouped


def test_the_lobby_flag_turns_lobby_mode_on_without_groups() -> None:
    settings = settings_from("--lobby")
    assert settings.lobby is True and settings.room is None and not settings.grouped


def test_lobby_with_a_room_is_refused_naming_both_flags() -> None:
    with pytest.raises(BotSettingsError) as refused:
        settings_from("--lobby", "--room", "arena1")
    assert "--room" in str(refused.value) and "--lobby" in str(refused.value)


def test_lobby_bots_are_split_over_processes_one_by_one_not_by_room_groups() -> None:
    settings = settings_from("--lobby", "--bots", "12", "--processes", "8")
    assert settings.processes == 8
    plans = plan_processes(settings, started_at=100.0)
    assert [len(plan.bots) for plan in plans] == [2, 2, 2, 2, 1, 1, 1, 1]
    assert {spec.group for plan in plans for spec in plan.bots} == {0}


# -- summary and progress ------------------------------------------------------------------------


def test_the_summary_counts_matches_found_distinct_rooms_and_wait_percentiles_over_every_process() -> None:
    first = ProcessResult(process=0, bots=2, matched=3, rooms={"a", "b"}, waits_ms=array("d", [300.0, 100.0]))
    second = ProcessResult(process=1, bots=2, matched=2, rooms={"b", "c"}, waits_ms=array("d", [200.0]))
    summary = summarize([first, second], bots=4, duration_s=10.0, wall_s=10.0)
    assert (summary["matched"], summary["rooms"]) == (5, 3)
    assert summary["wait_ms_p50"] == 200.0
    assert summary["wait_ms_p99"] == pytest.approx(298.0)
    assert orjson.loads(orjson.dumps(summary)) == summary


def test_a_summary_without_waits_still_has_the_lobby_keys_with_null_percentiles() -> None:
    summary = summarize([ProcessResult(process=0, bots=5)], bots=5, duration_s=3.0, wall_s=3.0)
    assert (summary["matched"], summary["rooms"], summary["wait_ms_p50"], summary["wait_ms_p99"]) == (0, 0, None, None)


def test_wait_percentiles_are_rounded_like_the_other_millisecond_figures() -> None:
    result = ProcessResult(process=0, bots=1, matched=1, rooms={"a"}, waits_ms=array("d", [12.345678]))
    summary = summarize([result], bots=1, duration_s=1.0, wall_s=1.0)
    assert summary["wait_ms_p50"] == summary["wait_ms_p99"] == 12.346


def test_the_human_summary_has_a_lobby_line_only_in_lobby_mode() -> None:
    result = ProcessResult(process=0, bots=1, matched=4, rooms={"a", "b"}, waits_ms=array("d", [150.0]))
    summary = summarize([result], bots=1, duration_s=1.0, wall_s=1.0)
    lobby_line = [line for line in summary_text(summary, lobby=True).splitlines() if line.startswith("lobby:")]
    assert lobby_line == ["lobby: matched 4 time(s) into 2 room(s), join->match_found wait p50 150.0 ms, "
                          "p99 150.0 ms"]
    assert "lobby:" not in summary_text(summary)


def test_the_progress_line_shows_matches_found_in_lobby_mode() -> None:
    board = ProgressBoard(bots=4, started_at=100.0, lobby=True)
    for process, matched in ((0, 3), (1, 4)):
        board.update(Progress(process=process, at=101.0, playing=1, states=66, inputs=30, errors=0, disconnects=0,
                              matches=0, acks_ms=array("d"), matched=matched))
    assert board.line(101.0).endswith("matched 7")
    assert "matched" not in ProgressBoard(bots=4, started_at=100.0).line(101.0)


# -- one bot's lobby messages ----------------------------------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed_with: Any = None
        self.disconnects = 0

    def send(self, msg_type: WSMsgType, message: bytes) -> None:
        self.sent.append(orjson.loads(message))

    def send_close(self, code: Any = None, message: Any = None) -> None:
        self.closed_with = code

    def disconnect(self, graceful: bool = True) -> None:
        self.disconnects += 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def new_lobby_bot() -> tuple[BotClient, FakeTransport, FakeClock, Tally]:
    """A lobby bot just connected to URL/lobby, as its run loop leaves it."""
    settings = settings_from("--lobby")
    clock = FakeClock()
    tally = Tally()
    bot = BotClient(bot_spec(settings.run_id, 0, grouped=False), settings.url, "token", None, tally,
                    random.Random(1), ArenaBot(random.Random(2)), clock)
    bot.phase = Phase.LOBBY_CONNECTING  # what the run loop's connect sets before the handshake
    transport = FakeTransport()
    bot.on_ws_connected(cast(WSTransport, transport))
    return bot, transport, clock, tally


def phase(bot: BotClient) -> Phase:
    return bot.phase  # through a function, so that mypy does not narrow `bot.phase` across calls


def feed(bot: BotClient, transport: FakeTransport, message: dict[str, Any]) -> None:
    frame = _make_test_ws_frame(WSMsgType.TEXT, orjson.dumps(message), True, False)
    bot.on_ws_frame(cast(WSTransport, transport), frame)


def close_from_server(bot: BotClient, transport: FakeTransport, code: int = 1000) -> None:
    frame = _make_test_ws_frame(WSMsgType.CLOSE, code.to_bytes(2, "big"), True, False)
    bot.on_ws_frame(cast(WSTransport, transport), frame)
    bot.on_ws_disconnected(cast(WSTransport, transport))


WAITING_MESSAGES: list[dict[str, Any]] = [
    {"type": "lobby", "status": "queued", "mode": "arena", "room": None, "players": [], "countdown_ms": None,
     "min": 3, "max": 5},
    {"type": "lobby", "status": "countdown", "mode": "arena", "room": "arena-7f3a",
     "players": [{"id": "6f1c0e0a-0000-4000-8000-000000000002", "name": "p2"}], "countdown_ms": 3000,
     "min": 3, "max": 5},
    {"type": "event", "kind": "join", "id": "6f1c0e0a-0000-4000-8000-000000000002", "name": "p2"},
    {"type": "event", "kind": "leave", "id": "6f1c0e0a-0000-4000-8000-000000000002"},
    {"type": "countdown", "room": "arena-7f3a", "ms": 2000},
    {"type": "pong", "t": 5},
]


def test_a_lobby_connection_sends_join_and_notes_when() -> None:
    bot, transport, clock, _ = new_lobby_bot()
    assert transport.sent == [JOIN]
    assert phase(bot) is Phase.QUEUED and bot.joined_at == clock.now


def test_status_events_countdowns_and_pongs_leave_the_bot_queued_and_silent() -> None:
    bot, transport, _, tally = new_lobby_bot()
    for message in WAITING_MESSAGES:
        feed(bot, transport, message)
    assert phase(bot) is Phase.QUEUED and transport.sent == [JOIN]
    assert (tally.matched, tally.errors, bot.game_url) == (0, Counter(), None)


def test_match_found_keeps_the_game_url_as_given_counts_the_match_and_records_the_wait() -> None:
    bot, transport, clock, tally = new_lobby_bot()
    clock.now += 1.25
    feed(bot, transport, match_found())
    assert phase(bot) is Phase.MATCHED
    assert bot.game_url == GAME_URL and bot.room == "arena-7f3a"
    assert tally.matched == 1 and tally.rooms == {"arena-7f3a"}
    assert list(tally.waits_ms) == [pytest.approx(1250.0)]


def test_the_lobby_closing_after_match_found_is_neither_an_error_nor_a_disconnect() -> None:
    bot, transport, _, tally = new_lobby_bot()
    feed(bot, transport, match_found())
    close_from_server(bot, transport)
    assert int(transport.closed_with.value) == 1000
    assert phase(bot) is Phase.IDLE and bot.game_url == GAME_URL
    assert tally.errors == Counter() and tally.disconnects == 0


def test_only_the_first_match_found_after_a_join_records_a_wait() -> None:
    bot, transport, clock, tally = new_lobby_bot()
    clock.now += 0.5
    feed(bot, transport, match_found())
    clock.now += 3.0
    feed(bot, transport, match_found(room="arena-other", url="ws://h:1/game?room=arena-other&ticket=x", rejoin=True))
    assert tally.matched == 2 and tally.rooms == {"arena-7f3a", "arena-other"}
    assert list(tally.waits_ms) == [pytest.approx(500.0)]
    assert bot.game_url == "ws://h:1/game?room=arena-other&ticket=x"


def test_a_new_join_measures_its_own_wait() -> None:
    bot, transport, clock, tally = new_lobby_bot()
    clock.now += 0.5
    feed(bot, transport, match_found())
    close_from_server(bot, transport)
    clock.now += 10.0
    bot.phase = Phase.LOBBY_CONNECTING
    second = FakeTransport()
    bot.on_ws_connected(cast(WSTransport, second))
    clock.now += 0.25
    feed(bot, second, match_found())
    assert [round(wait) for wait in tally.waits_ms] == [500, 250]


@pytest.mark.parametrize("code", ["lobby_unavailable", "already_connected", "already_in_match"])
def test_a_not_now_lobby_error_is_counted_and_the_bot_closes_to_back_off_and_join_again(code: str) -> None:
    bot, transport, _, tally = new_lobby_bot()
    feed(bot, transport, {"type": "error", "code": code, "message": "later"})
    assert tally.errors == Counter({code: 1}) and bot.refused
    assert phase(bot) is Phase.LOBBY_LEAVING
    assert int(transport.closed_with.value) == 1000 and transport.disconnects == 1
    bot.on_ws_disconnected(cast(WSTransport, transport))
    assert tally.errors == Counter({code: 1}) and bot.game_url is None and phase(bot) is Phase.IDLE


async def test_a_capacity_refusal_is_no_error_the_bot_keeps_the_connection_and_joins_again_after_retry_ms() -> None:
    bot, transport, _, tally = new_lobby_bot()
    assert [m["type"] for m in transport.sent] == ["join"]
    feed(bot, transport, {"type": "error", "code": "capacity", "message": "every node is full", "retry_ms": 40})
    assert tally.errors == Counter() and tally.capacity == 1 and not bot.refused
    assert phase(bot) is Phase.QUEUED and transport.closed_with is None and transport.disconnects == 0
    await wait_for(lambda: len(transport.sent) == 2, timeout=2.0)
    assert transport.sent[1]["type"] == "join" and phase(bot) is Phase.QUEUED


def test_another_lobby_error_is_counted_and_leaves_closing_to_the_server() -> None:
    bot, transport, _, tally = new_lobby_bot()
    feed(bot, transport, {"type": "error", "code": "bad_message", "message": "what?"})
    assert tally.errors == Counter({"bad_message": 1}) and phase(bot) is Phase.QUEUED
    assert transport.closed_with is None
    close_from_server(bot, transport, code=1008)
    assert tally.errors == Counter({"bad_message": 1})  # the close is explained by the error


def test_a_lobby_close_before_match_found_counts_as_an_error() -> None:
    bot, transport, _, tally = new_lobby_bot()
    close_from_server(bot, transport, code=1001)
    assert tally.errors == Counter({"closed_before_match": 1}) and tally.disconnects == 0
    assert bot.game_url is None


def test_the_matched_game_is_played_as_without_the_lobby() -> None:
    bot, lobby, clock, tally = new_lobby_bot()
    feed(bot, lobby, match_found())
    close_from_server(bot, lobby)
    bot.phase = Phase.CONNECTING  # what the run loop's connect sets before the handshake
    game = FakeTransport()
    bot.on_ws_connected(cast(WSTransport, game))
    assert game.sent == [{"type": "hello", "v": 1}] and phase(bot) is Phase.JOINING
    feed(bot, game, {"type": "welcome", "v": 1, "room": "arena-7f3a", "mode": "arena", "you": 1, "id": "x",
                     "state": "running", "tick_ms": 15, "arena": {"w": 1000, "h": 1000}, "countdown_ms": None,
                     "players": []})
    assert phase(bot) is Phase.PLAYING
    bot.act()
    clock.now += 2.0
    feed(bot, game, {"type": "match_end", "reason": "kills", "duration_ms": 1, "ranking": []})
    assert game.sent[-1] == {"type": "leave"} and phase(bot) is Phase.LEAVING
    assert tally.matches == {"arena-7f3a"} and bot.connected_s == pytest.approx(2.0)


def test_end_of_run_while_queued_sends_leave_to_the_lobby_once() -> None:
    bot, transport, _, tally = new_lobby_bot()
    bot.leave()
    bot.leave()
    assert transport.sent == [JOIN, {"type": "leave"}] and phase(bot) is Phase.LOBBY_LEAVING
    close_from_server(bot, transport)
    assert tally.errors == Counter() and phase(bot) is Phase.IDLE


def test_a_match_found_after_leaving_the_lobby_is_counted_but_not_played() -> None:
    bot, transport, _, tally = new_lobby_bot()
    bot.leave()
    feed(bot, transport, match_found())
    assert tally.matched == 1 and len(tally.waits_ms) == 1
    assert bot.game_url is None and phase(bot) is Phase.LOBBY_LEAVING


def test_end_of_run_once_matched_sends_nothing_more_to_the_closing_lobby() -> None:
    bot, transport, _, _ = new_lobby_bot()
    feed(bot, transport, match_found())
    bot.leave()
    assert transport.sent == [JOIN] and phase(bot) is Phase.MATCHED


# -- the run loop over a fake ws_connect ---------------------------------------------------------


class LoopTransport(FakeTransport):
    """A connection whose disconnect tells its listener, as picows does."""

    def __init__(self, listener: WSListener) -> None:
        super().__init__()
        self.listener = listener
        self.gone = asyncio.get_running_loop().create_future()

    def disconnect(self, graceful: bool = True) -> None:
        super().disconnect(graceful)
        if not self.gone.done():
            self.gone.set_result(None)
            self.listener.on_ws_disconnected(cast(WSTransport, self))

    async def wait_disconnected(self) -> None:
        await self.gone


class FakeConnector:
    """Stands in for picows' `ws_connect`: every attempt is queued for the test to see; an attempt at a
    URL in `refuse` fails its handshake with that body."""

    def __init__(self) -> None:
        self.attempts: asyncio.Queue[tuple[str, dict[str, str], LoopTransport | None]] = asyncio.Queue()
        self.refuse: dict[str, bytes] = {}

    async def __call__(self, factory: Callable[[], WSListener], url: str, *, extra_headers: dict[str, str],
                       **options: Any) -> tuple[LoopTransport, WSListener]:
        if url in self.refuse:
            await self.attempts.put((url, extra_headers, None))
            raise WSHandshakeError("refused", b"", self.refuse[url])
        listener = factory()
        transport = LoopTransport(listener)
        listener.on_ws_connected(cast(WSTransport, transport))
        await self.attempts.put((url, extra_headers, transport))
        return transport, listener

    async def next(self) -> tuple[str, dict[str, str], LoopTransport | None]:
        async with asyncio.timeout(5.0):
            return await self.attempts.get()


@pytest.fixture
def connector(monkeypatch: pytest.MonkeyPatch) -> FakeConnector:
    fake = FakeConnector()
    monkeypatch.setattr("bot.client.ws_connect", fake)
    # Keep the loop's pauses short; how long they are is not what these tests are about.
    monkeypatch.setattr("bot.client.BACKOFF_MIN_S", 0.001)
    monkeypatch.setattr("bot.client.REJOIN_PAUSE_S", 0.001)
    return fake


async def run_lobby_bot() -> tuple[BotClient, Tally, asyncio.Event, asyncio.Task[None]]:
    settings = settings_from("--lobby")
    tally = Tally()
    bot = BotClient(bot_spec(settings.run_id, 0, grouped=False), settings.url, "token", None, tally,
                    random.Random(1), ArenaBot(random.Random(2)))
    stop = asyncio.Event()
    return bot, tally, stop, asyncio.create_task(bot.run(0.0, stop))


async def finish(task: asyncio.Task[None]) -> None:
    task.cancel()  # as the swarm does at the end of the run
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_lobby_bot_queues_plays_the_game_at_the_url_it_was_sent_and_queues_again(
        connector: FakeConnector) -> None:
    bot, tally, _, task = await run_lobby_bot()
    try:
        url, headers, lobby = await connector.next()
        assert url == f"{BASE_URL}/lobby" and headers == {"Authorization": "Bearer token"}
        assert lobby is not None and lobby.sent == [JOIN]
        feed(bot, lobby, match_found())
        close_from_server(bot, lobby)

        url, headers, game = await connector.next()
        assert url == GAME_URL and headers == {"Authorization": "Bearer token"}
        assert game is not None and game.sent == [{"type": "hello", "v": 1}]
        feed(bot, game, {"type": "match_end", "reason": "kills", "duration_ms": 1, "ranking": []})
        close_from_server(bot, game)

        url, _, again = await connector.next()
        assert url == f"{BASE_URL}/lobby" and again is not None and again.sent == [JOIN]
        assert tally.matched == 1 and tally.matches == {"arena-7f3a"} and tally.errors == Counter()
    finally:
        await finish(task)


async def test_a_refused_game_handshake_is_counted_and_the_bot_goes_back_to_the_lobby(
        connector: FakeConnector) -> None:
    connector.refuse[GAME_URL] = b'{"error":"ticket_invalid","message":"expired"}'
    bot, tally, _, task = await run_lobby_bot()
    try:
        _, _, lobby = await connector.next()
        assert lobby is not None
        feed(bot, lobby, match_found())
        close_from_server(bot, lobby)
        url, _, refused = await connector.next()
        assert url == GAME_URL and refused is None
        url, _, again = await connector.next()
        assert url == f"{BASE_URL}/lobby" and again is not None
        assert tally.errors == Counter({"ticket_invalid": 1})
    finally:
        await finish(task)


async def test_a_not_now_error_sends_the_bot_back_to_the_lobby_after_a_back_off(connector: FakeConnector) -> None:
    bot, tally, _, task = await run_lobby_bot()
    try:
        _, _, lobby = await connector.next()
        assert lobby is not None
        feed(bot, lobby, {"type": "error", "code": "lobby_unavailable", "message": "no nodes"})
        url, _, again = await connector.next()
        assert url == f"{BASE_URL}/lobby" and again is not None and again.sent == [JOIN]
        assert tally.errors == Counter({"lobby_unavailable": 1})
    finally:
        await finish(task)


async def test_a_lobby_that_does_not_close_after_match_found_is_closed_by_the_bot(
        connector: FakeConnector, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("bot.client.LEAVE_TIMEOUT_S", 0.01)
    bot, tally, _, task = await run_lobby_bot()
    try:
        _, _, lobby = await connector.next()
        assert lobby is not None
        feed(bot, lobby, match_found())
        url, _, game = await connector.next()
        assert url == GAME_URL and game is not None
        assert int(lobby.closed_with.value) == 1000 and tally.errors == Counter()
    finally:
        await finish(task)

