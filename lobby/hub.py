"""A node's side of the lobby: its waiting players, its heartbeat, and the Redis work nobody waits for.

The hub seats the players of this node's lobby connections (`Waiter`s), pushes them their room's changes as
notices and periodic reads reveal them, starts rooms whose countdown ran out, and hands `match_found` with a
seat ticket to the players of a room that starts. It also heart-beats the node, keeps its players' and rooms'
keys alive, sweeps up after dead nodes, decides expired rooms, and runs the game side's lobby writes (attach,
detach, leave, finish: lobby/writes.py) in order, so that a tick never waits for Redis. The deployment-wide
chores (heartbeat, presence, sweeps, expiry) are lobby/upkeep.py's.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from lobby.keys import LobbyKeys
from lobby.nodes import NodeRegistry
from lobby.notices import Notice, NoticeBus
from lobby.outage import OUTAGE, Backoff, LobbyUnavailable, stop_if_cancelled
from lobby.seating import Claim, Outcome, RoomRecord, RoomView, Seating, SeatingRules
from lobby.tickets import Ticket, mint_ticket
from lobby.upkeep import HostedMatch, LocalState, Upkeep
from lobby.writes import GameReports, Write, WriteQueue

log = logging.getLogger("tickroom.lobby")

REFRESH_EVERY_S = 1.0  # periodic read of the rooms local players wait in: countdown ticks, lost notices
PROBE_RETRY_S = 0.25  # a join that found the player busy on another connection tries again this often,
PROBE_MARGIN_S = 1.0  # until that connection's probe is over, plus this for the drop to reach Redis
START_SLACK_S = 0.02  # a countdown timer fires this long after the deadline, so that start.lua sees it due
# Script outcomes that may have changed rooms other than the one they name.
WIDE_OUTCOMES = frozenset({"swept", "requeued", "recovery", "removed", "claimed"})
LATEST_MAX = 10_000  # rooms whose newest view a node remembers
# A join held for a match whose host stopped beating waits at most this many dead-after times: the sweep comes
# after one, recovery from Postgres (Redis lost the room too) after MISSING_SCANS + 1
# (server/cluster/postgres_recovery.py).
HOLD_DEAD_AFTERS = 6


class Waiter(Protocol):
    """A lobby connection waiting to be matched (server/cluster/lobby_session.py)."""

    @property
    def player_id(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def conn_id(self) -> str: ...

    @property
    def mode(self) -> str: ...

    @property
    def active(self) -> bool:
        """False once the connection has ended: the hub then forgets the waiter."""

    def show(self, view: RoomView, now_ms: int) -> None:
        """The room (or the queue: state "queued") as it is now; called again whenever it changes."""

    def countdown(self, room_id: str, remaining_ms: int) -> None: ...

    def matched(self, view: RoomView, url: str, ticket: str) -> None: ...

    def dropped(self, reason: str) -> None:
        """The player's place is gone (another node swept it up, say): they must join again."""

    def results_saved(self, match_ids: Sequence[str]) -> None:
        """These matches' results became durable after the player had left their rooms."""

    def hold(self, room_id: str) -> None:
        """The player's running match is in `room_id`, whose host stopped heart-beating: the join waits until
        the match has a live host (status `recovering`)."""

    async def probe(self, timeout_s: float) -> bool:
        """Whether the client still answers (a ping); one that does not is disconnected, and False."""


@dataclass(frozen=True, slots=True)
class HubConfig:
    node_id: str
    url: str
    prefix: str
    secret: str
    rules: Mapping[str, SeatingRules]  # by mode: each game's rooms have their own size and forming
    ticket_ttl_s: float = 60.0
    lobby_grace_s: float = 5.0
    stale_probe_s: float = 2.0
    heartbeat_s: float = 1.0
    dead_after_s: float = 5.0
    refresh_every_s: float = REFRESH_EVERY_S

    @property
    def presence_every_s(self) -> float:
        """Refresh keys several times per TTL, so one missed refresh never lets a live key expire."""
        return max(0.2, min(min(rules.player_ttl_s, rules.room_ttl_s) for rules in self.rules.values()) / 4)

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(sorted(self.rules))


RoomKey = tuple[str, str]  # (mode, room id)


class LobbyRefused(Exception):
    """The lobby refuses this join; `code` is the protocol error code. `close`: the connection ends (else the
    client may send `join` again on it, at the time the error says when `retry`)."""

    def __init__(self, code: str, message: str, *, close: bool = True, retry: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.close = close
        self.retry = retry  # the client is told when to try again


class LobbyHub:
    def __init__(self, client: object, config: HubConfig, local_state: Callable[[], LocalState],
                 wall_ms: Callable[[], int] | None = None,
                 evict: Callable[[str, set[str]], None] | None = None,
                 adopt: Callable[[str, list[str]], Awaitable[None]] | None = None,
                 hosted: Callable[[], list[HostedMatch]] | None = None) -> None:
        from redis.asyncio import Redis

        assert isinstance(client, Redis)
        self.client = client
        self.config = config
        self.node_id = config.node_id
        self._local_state = local_state
        self.wall_ms = wall_ms or (lambda: int(time.time() * 1000))
        self.registry = NodeRegistry(client, config.prefix, dead_after_s=config.dead_after_s)
        self.bus = NoticeBus(client, config.prefix)
        self.seatings = {mode: Seating(client, LobbyKeys(config.prefix, mode), rules)
                         for mode, rules in sorted(config.rules.items())}
        self.waiters: dict[str, Waiter] = {}  # by connection id
        self._room_of: dict[str, RoomKey] = {}  # connection id -> the room it waits in
        self._in_room: dict[RoomKey, set[str]] = {}  # room -> connection ids waiting in it
        self._queued: set[str] = set()  # connection ids waiting with no room (no node could host one)
        self._countdowns: dict[RoomKey, int] = {}  # room -> countdown end (wall ms)
        # The newest view of each room seen lately (script replies and reads may arrive out of order).
        self._latest: OrderedDict[RoomKey, RoomView] = OrderedDict()
        self._timers: dict[RoomKey, asyncio.TimerHandle] = {}
        self._dirty: set[RoomKey] = set()
        self._refreshing: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Joins waiting for a probe of another node's connection, by that connection's id: the other node's
        # "probed" notice says whether it answered.
        self._probe_answers: dict[str, asyncio.Future[bool]] = {}
        self._subscriptions = 0  # times the notice listener subscribed (more than once: after an outage)
        self.expiry_events = False
        self.writes = WriteQueue()
        self.tally: Counter[str] | None = None
        self.games = GameReports(self.writes, self.seatings, self._publish, self.wall_ms, config.node_id)
        # Whether a room's last match is over in Postgres (a node that keeps records sets it): a player back with
        # the ticket of a match the lobby no longer knows need not wait for its recovery.
        self.room_ended: Callable[[str], Awaitable[bool]] | None = None
        self.upkeep = Upkeep(config.node_id, config.url, self.registry, self.seatings, self._state, self._publish,
                             self._spawn, self.writes.submit, evict or (lambda mode, kept: None), self.wall_ms,
                             heartbeat_s=config.heartbeat_s,
                             presence_every_s=config.presence_every_s, adopt=adopt, listeners=self.bus.listeners,
                             hosted=hosted, attach=self.games.attached)

    async def hand_off(self, new_host: str) -> None:
        """Draining: the lobby moves this node's rooms to `new_host` (`Upkeep.hand_off`)."""
        await self.upkeep.hand_off(new_host)

    def count_errors(self, tally: Counter[str]) -> None:
        """Count every Redis failure of the hub's loops in `tally["redis"]` (the node's metrics)."""
        self.tally = self.writes.tally = self.bus.tally = self.upkeep.tally = tally

    # -- lifetime --------------------------------------------------------------------------------------

    async def run(self) -> None:
        """The hub's background work; runs until cancelled (by the node's task group at shutdown). A failure
        that escapes a loop restarts the hub after a pause: it never reaches the rooms' task group."""
        backoff = Backoff(low=1.0, high=30.0, tally=self.tally)
        while True:
            try:
                await self._run_once()
            except Exception as error:
                await backoff.wait("the lobby hub", error)

    async def _run_once(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.upkeep.heartbeat_loop(), name="lobby-heartbeat")
                group.create_task(self.upkeep.presence_loop(), name="lobby-presence")
                group.create_task(self._refresh_loop(), name="lobby-refresh")
                group.create_task(self.writes.run(), name="lobby-writes")
                group.create_task(self.bus.listen(self.node_id, self._on_notice, self.upkeep.on_expired,
                                                  self._on_subscribed), name="lobby-notices")
        finally:
            for timer in self._timers.values():
                timer.cancel()
            self._timers.clear()  # the periodic read arms them again
            for task in list(self._tasks):
                task.cancel()

    async def deregister(self) -> None:
        """At a clean shutdown: stop heart-beating and be dead at once, so that no new room is placed here and
        the other nodes sweep up after this one without waiting for its heartbeat to expire."""
        await self.upkeep.stop_heartbeat()
        try:
            await self.registry.deregister(self.node_id)
        except OUTAGE:
            log.warning("could not deregister node %s: Redis unreachable (it will be found dead)", self.node_id)

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        async def guarded() -> None:
            try:
                await coro
            except OUTAGE as error:
                log.debug("%s: Redis unreachable: %s", name, error)
            except Exception:
                log.exception("lobby task %s failed", name)

        # A context of its own: the task serves the lobby as a whole, not the connection that happened to start
        # it (whose log context it would otherwise carry: server/ops/logs.py).
        task = asyncio.get_running_loop().create_task(guarded(), name=name, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- joining and leaving (lobby connections) ---------------------------------------------------

    @property
    def reachable(self) -> bool:
        """Redis answered the last heartbeat."""
        return self.upkeep.reachable

    def _state(self) -> LocalState:
        """The node's own state plus the players waiting through it and their rooms."""
        state = self._local_state()
        for conn_id, waiter in self.waiters.items():
            state.players.setdefault(waiter.mode, []).append(waiter.player_id)
            key = self._room_of.get(conn_id)
            if key is not None:
                state.rooms.setdefault(key[0], set()).add(key[1])
        return state

    async def join(self, waiter: Waiter) -> Outcome:
        """Seat the waiter's player; raise `LobbyRefused` or `LobbyUnavailable` (Redis unreachable at any step)."""
        try:
            return await self._join(waiter)
        except OUTAGE as error:
            raise LobbyUnavailable(str(error)) from error

    async def _join(self, waiter: Waiter) -> Outcome:
        seating = self.seatings[waiter.mode]
        host = self.upkeep.pick_host()
        new_room = uuid.uuid4().hex[:16]

        async def join_once(takeover: str = "") -> Outcome:
            outcome = await seating.join(waiter.player_id, waiter.name, self.wall_ms(), conn_id=waiter.conn_id,
                                         conn_node=self.node_id, new_room_id=new_room, new_room_node=host,
                                         takeover=takeover, refuse_full=True)
            if outcome.saved:  # each join hands over (and deletes) the results saved since the last one
                waiter.results_saved(outcome.saved)
            return outcome

        outcome = await join_once()
        if outcome.outcome == "busy" and await self._connection_gone(outcome):
            outcome = await join_once(takeover=outcome.conn)
        if outcome.outcome == "busy" and outcome.conn_kind == "lobby" and outcome.conn:
            outcome = await self._after_probe(waiter, outcome, join_once)
        if not waiter.active:
            return outcome  # the connection ended meanwhile; its leave follows
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HOLD_DEAD_AFTERS * self.config.dead_after_s
        held = False
        while outcome.outcome == "busy" and outcome.conn_kind == "game" and waiter.active:
            playing = await self._running_match(seating, waiter.player_id, outcome.room)
            if playing is not None:
                # A player in a running match comes back to it, whatever became of their old connection (the
                # game endpoint takes over from one that no longer answers): match_found, with a fresh ticket.
                host_ok = await self._host_reachable(playing.node)
                self.waiters[waiter.conn_id] = waiter
                self._deliver_to(waiter, playing, host_ok=host_ok)
                return outcome
            if await self._host_reachable(outcome.conn_node) or loop.time() >= deadline:
                if held:  # told `recovering`: it ends as documented, with match_found or seat_lost
                    waiter.dropped(f"your match in room {outcome.room} could not be brought back; join again")
                    return outcome
                raise LobbyRefused("already_in_match", f"you are playing in room {outcome.room} "
                                   f"on node {outcome.conn_node}; finish or leave that match first")
            # The connection holding the player is on a node that is gone, and the lobby no longer knows its
            # match as running (Redis lost it as the node died): wait, as `recovering`, until the sweep or the
            # recovery from Postgres has settled where the player is, then join again.
            if not held:
                held = True
                waiter.hold(outcome.room)
            await asyncio.sleep(self.config.heartbeat_s / 2)
            if await self.lost_to_recovery(waiter.mode, waiter.player_id, outcome.room):
                continue  # Redis lost the player and the room: recovery from Postgres places them back first
            outcome = await join_once()
        if not waiter.active:
            return outcome
        if outcome.outcome == "busy":
            raise LobbyRefused("already_connected", "this player is already waiting in the lobby on another "
                                                    "connection")
        if outcome.outcome == "full":
            # A new player, no room with a free seat, and no node takes a new room: every node is at its capacity.
            # The script wrote nothing (one round trip per refusal: a full node refuses crowds cheaply).
            raise LobbyRefused("capacity", "every node is at its capacity; send join again in a few seconds",
                               close=False, retry=True)
        if outcome.outcome == "seated" and not host and outcome.view is not None and not outcome.view.room_id:
            # A new player, no room with a free seat, and no node takes a new room: every node is at its capacity.
            # They are not left in line for an unknown time; the client tries again later.
            left = await seating.leave(waiter.player_id, self.wall_ms(), conn_id=waiter.conn_id, scope="queue")
            self._publish(waiter.mode, left)
            raise LobbyRefused("capacity", "every node is at its capacity; send join again in a few seconds",
                               close=False, retry=True)
        self.waiters[waiter.conn_id] = waiter
        view = outcome.view
        if view is not None and view.room_id == new_room:
            self.upkeep.placed(host)
        self._publish(waiter.mode, outcome)
        if view is not None:
            # A newer view may be here already: the reply of a later join, say the one that started the room,
            # can overtake this one on another connection.
            view = self._newest(waiter.mode, view) if view.room_id else view
            # Back for a running match: is its host still there (a killed host's listener is gone at once)?
            host_ok = view.state != "running" or await self._host_reachable(view.node)
            self._deliver_to(waiter, view, host_ok=host_ok)
        return outcome

    @staticmethod
    async def _running_match(seating: Seating, player_id: str, room_id: str) -> RoomView | None:
        """The running match `room_id`, if the player holds a seat in it."""
        record = await seating.room(room_id) if room_id else None
        if record is None or record.state != "running" or player_id not in record.player_ids:
            return None
        return view_of(record)

    async def _after_probe(self, waiter: Waiter, busy: Outcome,
                           join_again: Callable[[], Awaitable[Outcome]]) -> Outcome:
        """The player waits in the lobby on another connection, which may be a dead one that nobody noticed
        yet (a half-open TCP connection). Its node pings it (a "kick" notice, or here at once when it is ours)
        and drops it if it does not answer within `stale_probe_s`; the drop frees the player's connection in
        Redis, and the join, tried again meanwhile, takes the player's seat back. A live one keeps the player,
        and the join is refused as soon as its node says so (a "probed" notice), not at the deadline."""
        loop = asyncio.get_running_loop()
        answer = self._probe_answers.get(busy.conn) or loop.create_future()
        if busy.conn_node == self.node_id:
            other = self.waiters.get(busy.conn)
            if other is not None:
                self._spawn(self._probe(other, answer), "probe")
        elif busy.conn not in self._probe_answers:
            self._probe_answers[busy.conn] = answer
            notice: Notice = {"kind": "kick", "mode": waiter.mode, "conn": busy.conn, "from": self.node_id}
            self._spawn(self.bus.publish([busy.conn_node], notice), "kick")
        deadline = loop.time() + self.config.stale_probe_s + PROBE_MARGIN_S
        outcome = busy
        try:
            while outcome.outcome == "busy" and waiter.active and loop.time() < deadline:
                if answer.done():
                    await asyncio.sleep(PROBE_RETRY_S)  # it did not answer: wait for its drop to reach Redis
                else:
                    await asyncio.wait([answer], timeout=PROBE_RETRY_S)
                if answer.done() and answer.result():
                    break  # it answered: the player really is connected twice
                outcome = await join_again()
        finally:
            if self._probe_answers.get(busy.conn) is answer:
                del self._probe_answers[busy.conn]
        return outcome

    async def _probe(self, waiter: Waiter, answer: asyncio.Future[bool] | None = None) -> None:
        alive = await waiter.probe(self.config.stale_probe_s)
        if not alive:
            log.info("dropped a lobby connection of player %s that no longer answered", waiter.player_id)
        if answer is not None and not answer.done():
            answer.set_result(alive)

    async def _probe_for(self, node_id: str, waiter: Waiter | None, conn_id: str) -> None:
        """Probe a connection of ours that another node's join found in the way, and tell that node the
        outcome (a connection we no longer hold counts as gone)."""
        alive = False
        if waiter is not None:
            answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            await self._probe(waiter, answer)
            alive = answer.result()
        notice: Notice = {"kind": "probed", "conn": conn_id, "alive": alive}
        await self.bus.publish([node_id], notice)

    async def _connection_gone(self, outcome: Outcome) -> bool:
        """Is the connection that holds a busy player gone (its node dead, or a stale one of ours)?"""
        if not outcome.conn:
            return False
        if outcome.conn_node == self.node_id:
            return outcome.conn not in self.waiters and outcome.conn not in self.games.conns
        return not await self.registry.is_alive(outcome.conn_node)

    async def leave(self, waiter: Waiter) -> None:
        """The waiter's connection ends (or it asked to leave the queue): a waiting player gives up their
        seat at once; a matched one keeps it for the game."""
        self._unregister(waiter.conn_id)
        outcome = await self.seatings[waiter.mode].leave(waiter.player_id, self.wall_ms(), conn_id=waiter.conn_id,
                                                         scope="queue")
        self._publish(waiter.mode, outcome)

    async def lost_to_recovery(self, mode: str, player_id: str, room_id: str) -> bool:
        """Whether the lobby knows neither the player nor the room they come back to (nor saw it end, nor has its
        snapshot): Redis lost them, and recovery from Postgres may be about to bring the room back."""
        keys = self.seatings[mode].keys
        try:
            known = await self.client.exists(keys.player(player_id), keys.room(room_id), keys.room_over(room_id),
                                             keys.room_snapshot(room_id))
        except OUTAGE as error:
            raise LobbyUnavailable(str(error)) from error
        return not known

    async def adoption_pending(self, mode: str, room_id: str) -> bool:
        """Whether a sweep gave this node the running room to restore, and it is not restored yet."""
        try:
            return bool(await self.client.sismember(self.seatings[mode].keys.node_adopt(self.node_id), room_id))
        except OUTAGE as error:
            raise LobbyUnavailable(str(error)) from error

    async def give_back(self, mode: str, room_id: str) -> None:
        """A running match this node could not restore: the room ends in the lobby and its players are free to
        join again."""
        outcome = await self.seatings[mode].finish(room_id, self.wall_ms(), host=self.node_id)
        self._publish(mode, outcome)

    async def reclaim_many(self, mode: str, claims: Sequence[Claim]) -> list[Outcome]:
        """Claim live matches the lobby lost, for this node to restore from Postgres ('claimed': this node won;
        see `lobby/lua/reclaim.lua`): one round trip, and one notice to the nodes concerned."""
        outcomes = await self.seatings[mode].reclaim_many(self.node_id, self.wall_ms(), claims)
        notify = {node for outcome in outcomes if outcome.outcome == "claimed" for node in outcome.notify}
        if notify:
            self._publish(mode, Outcome("claimed", None, tuple(sorted(notify))))
        return outcomes

    def forget(self, conn_id: str) -> None:
        """Stop pushing to a connection that ended (its leave follows as a write)."""
        self._unregister(conn_id)

    def dropped(self, waiter: Waiter) -> None:
        """The waiter's connection dropped without `leave`: the player keeps their seat for the lobby grace
        window, so that joining again (on any node) gives it back, then lets it go."""
        self._unregister(waiter.conn_id)
        seating = self.seatings[waiter.mode]

        async def detach() -> None:
            await seating.detach(waiter.player_id, waiter.conn_id, self.wall_ms(), keep_node=True)
            # Whatever detach answered (a retried detach whose first reply was lost answers "stale"): the
            # release only acts if no connection holds the player by then.
            asyncio.get_running_loop().call_later(self.config.lobby_grace_s, self.submit,
                                                  f"{waiter.player_id}'s lobby grace is over", release)

        async def release() -> None:
            # Only if no connection took the player back meanwhile ("" = "none holds them").
            outcome = await seating.leave(waiter.player_id, self.wall_ms(), conn_id="", scope="queue")
            self._publish(waiter.mode, outcome)

        self.submit(f"{waiter.player_id} dropped out of the lobby", detach)

    def _unregister(self, conn_id: str) -> None:
        self.waiters.pop(conn_id, None)
        self._queued.discard(conn_id)
        key = self._room_of.pop(conn_id, None)
        if key is not None:
            members = self._in_room.get(key)
            if members is not None:
                members.discard(conn_id)
                if not members:
                    # No waiter of this node's is in the room any more: its newest view goes too, so that what
                    # the node remembers of rooms follows its waiters, not every room it ever saw (LATEST_MAX).
                    del self._in_room[key]
                    self._latest.pop(key, None)
                    self._countdowns.pop(key, None)
                    timer = self._timers.pop(key, None)
                    if timer is not None:
                        timer.cancel()

    def _place(self, conn_id: str, key: RoomKey | None) -> None:
        """Record where a waiter waits now (None: in the queue with no room)."""
        if self._room_of.get(conn_id) == key and key is not None:
            return
        waiter = self.waiters.get(conn_id)
        self._unregister(conn_id)
        if waiter is None:
            return
        self.waiters[conn_id] = waiter
        if key is None:
            self._queued.add(conn_id)
        else:
            self._room_of[conn_id] = key
            self._in_room.setdefault(key, set()).add(conn_id)

    # -- delivering room changes to waiters ----------------------------------------------------------

    def _newest(self, mode: str, view: RoomView) -> RoomView:
        """`view`, or a newer view of the same room already seen here; remembered either way."""
        key = (mode, view.room_id)
        known = self._latest.get(key)
        if known is not None and known.version > view.version:
            return known
        self._latest[key] = view
        self._latest.move_to_end(key)
        if len(self._latest) > LATEST_MAX:
            self._latest.popitem(last=False)
        return view

    async def _host_reachable(self, node_id: str) -> bool:
        """May a player be sent to this node: it heart-beats, and its process is there (its notice listener is
        subscribed: a killed node's goes the moment it dies, long before its heartbeat is missed)?"""
        if node_id == self.node_id:
            return True
        if not self.upkeep.heart_beating(node_id):
            return False
        return (await self.bus.listeners([node_id])).get(node_id, 0) > 0

    def _deliver_to(self, waiter: Waiter, view: RoomView, *, host_ok: bool | None = None) -> None:
        """Show the waiter its room, or send it to its running match: `host_ok` says whether the match's host was
        found reachable (None: not asked yet; it is asked here before anyone is sent to another node)."""
        key = (waiter.mode, view.room_id)
        if view.state == "queued" or not view.room_id:
            self._place(waiter.conn_id, None)
            waiter.show(view, self.wall_ms())
            return
        if waiter.player_id not in view.player_ids:
            self._spawn(self._relocate(waiter), f"relocate:{waiter.player_id}")
            return
        self._place(waiter.conn_id, key)
        if view.state == "running":
            self._unregister(waiter.conn_id)
            if host_ok is None and view.node != self.node_id:
                self._spawn(self._match_if_reachable(waiter, view), f"match:{waiter.player_id}")
            else:
                self._match_if_hosted(waiter, view, host_ok=host_ok is not False)
            return
        if view.state == "countdown" and view.countdown_ends_ms is not None:
            self._arm_countdown(key, view.countdown_ends_ms)
        elif view.state == "waiting":
            self._countdowns.pop(key, None)
        waiter.show(view, self.wall_ms())

    async def _match_if_reachable(self, waiter: Waiter, view: RoomView) -> None:
        try:
            host_ok = await self._host_reachable(view.node)
        except OUTAGE:  # Redis cannot say whether the host's process is there: its last heartbeat decides
            host_ok = self.upkeep.heart_beating(view.node)
        self._match_if_hosted(waiter, view, host_ok=host_ok)

    def _match_if_hosted(self, waiter: Waiter, view: RoomView, *, host_ok: bool) -> None:
        """match_found for a running match, unless its host is suspected dead: then hold the player."""
        if not host_ok or not self.upkeep.heart_beating(view.node):
            self._spawn(self._match_when_hosted(waiter, view), f"hold:{waiter.player_id}")
            return
        url = self.upkeep.urls.get(view.node)
        if url is None:
            self._spawn(self._match_later(waiter, view), "match-url")
            return
        self._match(waiter, view, url)

    def _match(self, waiter: Waiter, view: RoomView, url: str) -> None:
        ticket = mint_ticket(self.config.secret, Ticket(waiter.player_id, view.room_id, view.node, waiter.mode),
                             ttl_s=self.config.ticket_ttl_s)
        waiter.matched(view, url, ticket)

    async def _match_later(self, waiter: Waiter, view: RoomView) -> None:
        try:
            url = await self.registry.url_of(view.node)
        except Exception:
            # The waiter is no longer registered anywhere: it must hear something, or it would wait for ever.
            waiter.dropped("matchmaking could not reach the node hosting your match; join again")
            raise
        if url is None:
            # The host died between the match and now: the sweep re-queues the room's players.
            log.warning("room %s is matched on node %s, which is not registered", view.room_id, view.node)
            waiter.dropped("the node hosting your match is gone; join again")
            return
        self.upkeep.urls[view.node] = url
        self._match(waiter, view, url)

    async def _match_when_hosted(self, waiter: Waiter, view: RoomView) -> None:
        """The match's host stopped heart-beating: never send the player there. Hold the join until the room
        has a live host (a sweep moved it, or the host beats again), then match_found; the player joins again
        if the match ends meanwhile or no live node takes it within the time a sweep and a recovery take."""
        waiter.hold(view.room_id)
        seating = self.seatings[waiter.mode]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HOLD_DEAD_AFTERS * self.config.dead_after_s
        try:
            while waiter.active and loop.time() < deadline:
                await asyncio.sleep(self.config.heartbeat_s / 2)
                playing = await self._running_match(seating, waiter.player_id, view.room_id)
                if playing is None:
                    if await self.lost_to_recovery(waiter.mode, waiter.player_id, view.room_id):
                        continue  # Redis lost the room as its host died: recovery from Postgres brings it back
                    waiter.dropped("your match is over, or your seat in it is gone; join again")
                    return
                if await self._host_reachable(playing.node):
                    url = self.upkeep.urls.get(playing.node)
                    if url is None:
                        await self._match_later(waiter, playing)
                    else:
                        self._match(waiter, playing, url)
                    return
        except Exception:  # an outage (or a bug): the waiter, registered nowhere now, must hear something
            waiter.dropped("matchmaking is unavailable right now; join again in a few seconds")
            raise
        if waiter.active:
            waiter.dropped("no live node took your match over in time; join again")

    def _arm_countdown(self, key: RoomKey, ends_ms: int) -> None:
        if self._countdowns.get(key) == ends_ms and key in self._timers:
            return
        self._countdowns[key] = ends_ms
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        delay = max(0.0, (ends_ms - self.wall_ms()) / 1000.0) + START_SLACK_S
        self._timers[key] = asyncio.get_running_loop().call_later(delay, self._countdown_over, key,
                                                                  context=contextvars.Context())

    def _countdown_over(self, key: RoomKey) -> None:
        self._timers.pop(key, None)
        if key in self._in_room:
            self._spawn(self._start(key), f"start:{key[1]}")

    async def _start(self, key: RoomKey) -> None:
        mode, room_id = key
        outcome = await self.seatings[mode].start_if_due(room_id, self.wall_ms())
        self._publish(mode, outcome)
        if outcome.view is not None:
            self._deliver_room(mode, outcome.view)
        if outcome.outcome == "unchanged" and outcome.view is not None and outcome.view.state == "countdown":
            ends = outcome.view.countdown_ends_ms
            if ends is not None:
                self._countdowns.pop(key, None)
                self._arm_countdown(key, ends)

    def _deliver_room(self, mode: str, view: RoomView) -> None:
        """Show a room's new state to every local waiter in it; waiters no longer in it look themselves up.
        A read older than one already delivered (reads and notices may cross) is ignored."""
        key = (mode, view.room_id)
        if key not in self._in_room:
            return  # nobody waits in it here: nothing to show, nor to remember (the node's rooms are elsewhere)
        if self._newest(mode, view) is not view:
            return
        members = view.player_ids
        for conn_id in list(self._in_room.get(key, ())):
            waiter = self.waiters.get(conn_id)
            if waiter is None:
                continue
            if waiter.player_id in members:
                self._deliver_to(waiter, view)
            else:
                self._spawn(self._relocate(waiter), f"relocate:{waiter.player_id}")

    async def _relocate(self, waiter: Waiter) -> None:
        """A waiter is not in the room we thought: find where Redis has them now (moved, or dropped)."""
        seating = self.seatings[waiter.mode]
        placement = await seating.player(waiter.player_id)
        if waiter.conn_id not in self.waiters:
            return
        conn = placement.get("conn", "")
        # Gone: no placement, or another connection holds the player. A matched player's connection was let go
        # by the match itself (conn ''), and their room is the one to send them to.
        if not placement or (conn != waiter.conn_id and (conn or placement.get("status") != "playing")):
            self._unregister(waiter.conn_id)
            waiter.dropped("your place in the lobby is gone; join again")
            return
        room_id = placement.get("room", "")
        if not room_id:
            self._deliver_to(waiter, RoomView("", "queued", "", None, None, ()))
            return
        record = await seating.room(room_id)
        if record is None:
            return  # the next periodic read tries again
        self._deliver_to(waiter, view_of(record))

    def _publish(self, mode: str, outcome: Outcome) -> None:
        """Tell the other nodes concerned that rooms changed, and refresh the local waiters of those rooms.
        A notice names the room when the script changed only that one; an empty name (a sweep, an expiry, a
        leave that may have backfilled from other rooms) means "look at all your rooms again"."""
        if not outcome.notify:
            return
        room_id = outcome.view.room_id if outcome.view is not None else outcome.room
        wide = outcome.outcome in WIDE_OUTCOMES or (outcome.outcome == "left" and self.seatings[mode].rules.backfill)
        others = [node for node in outcome.notify if node != self.node_id]
        if others:
            notice: Notice = {"kind": "room", "mode": mode, "room": "" if wide else room_id}
            self._spawn(self.bus.publish(others, notice), "publish")
        if outcome.view is not None and outcome.view.room_id:
            self._deliver_room(mode, outcome.view)
        elif room_id:
            self._mark_dirty((mode, room_id))
        if wide and self.node_id in outcome.notify:
            self._mark_all_dirty(mode)

    def _on_notice(self, notice: Notice) -> None:
        mode = notice.get("mode")
        if notice.get("kind") == "kick":
            conn_id = str(notice.get("conn"))
            waiter = self.waiters.get(conn_id)
            origin = notice.get("from")
            if isinstance(origin, str) and origin:
                self._spawn(self._probe_for(origin, waiter, conn_id), "probe")
            elif waiter is not None:
                self._spawn(self._probe(waiter), "probe")
            return
        if notice.get("kind") == "probed":
            answer = self._probe_answers.get(str(notice.get("conn")))
            if answer is not None and not answer.done():
                answer.set_result(notice.get("alive") is True)
            return
        if notice.get("kind") != "room" or not isinstance(mode, str) or mode not in self.seatings:
            log.debug("ignoring notice %r", notice)
            return
        room_id = notice.get("room")
        if isinstance(room_id, str) and room_id:
            self._mark_dirty((mode, room_id))
        else:
            self._mark_all_dirty(mode)

    def _mark_all_dirty(self, mode: str) -> None:
        for key in self._in_room:
            if key[0] == mode:
                self._mark_dirty(key)

    def _mark_dirty(self, key: RoomKey) -> None:
        if key not in self._in_room:
            return
        self._dirty.add(key)
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh_dirty(),
                                                                      context=contextvars.Context())

    async def _refresh_dirty(self) -> None:
        await asyncio.sleep(0)  # gather the notices of one burst into one read
        while self._dirty:
            keys, self._dirty = self._dirty, set()
            try:
                await self._read_rooms(keys)
            except OUTAGE as error:
                log.debug("room refresh postponed: %s", error)
                return  # the periodic read repairs it
            except Exception:
                log.exception("room refresh failed")
                return

    async def _read_rooms(self, keys: Iterable[RoomKey]) -> None:
        by_mode: dict[str, list[str]] = {}
        for mode, room_id in keys:
            by_mode.setdefault(mode, []).append(room_id)
        for mode, room_ids in by_mode.items():
            records = {record.room_id: record for record in await self.seatings[mode].rooms(room_ids)}
            for room_id in room_ids:
                record = records.get(room_id)
                if record is not None:
                    self._deliver_room(mode, view_of(record))
                else:
                    self._latest.pop((mode, room_id), None)  # the room is gone: nothing newer will come of it
                    for conn_id in list(self._in_room.get((mode, room_id), ())):
                        waiter = self.waiters.get(conn_id)
                        if waiter is not None:
                            self._spawn(self._relocate(waiter), f"relocate:{waiter.player_id}")

    # -- background loops ------------------------------------------------------------------------------

    def _on_subscribed(self) -> None:
        if self._subscriptions:  # subscribed again: Redis dropped the connections, every node's listener too
            self.upkeep.redis_came_back()
        self._subscriptions += 1
        self._spawn(self._after_reconnect(), "after-reconnect")

    async def _after_reconnect(self) -> None:
        self.expiry_events = await self.bus.enable_expiry_events()
        for seating in self.seatings.values():
            await seating.load_scripts()
        for mode in self.seatings:
            self._mark_all_dirty(mode)

    async def _refresh_loop(self) -> None:
        """Every second: countdown ticks, and a fresh read of every room local players wait in (which repairs
        any lost notice and starts overdue countdowns); queued players try for a seat again."""
        while True:
            stop_if_cancelled()
            await asyncio.sleep(self.config.refresh_every_s)
            now = self.wall_ms()
            for key, ends in list(self._countdowns.items()):
                for conn_id in list(self._in_room.get(key, ())):
                    waiter = self.waiters.get(conn_id)
                    if waiter is not None:
                        waiter.countdown(key[1], max(0, ends - now))
                if ends + START_SLACK_S * 1000 < now and key not in self._timers:
                    self._spawn(self._start(key), f"start:{key[1]}")
            try:
                await self._read_rooms(list(self._in_room))
                for conn_id in list(self._queued):
                    waiter = self.waiters.get(conn_id)
                    if waiter is None:
                        continue
                    try:  # a queued player's own connection holds them: this join seats them or leaves them be
                        await self.join(waiter)
                    except LobbyRefused:
                        continue  # that one is refused; the others still try for a seat
            except OUTAGE as error:
                log.debug("periodic lobby read failed: %s", error)
            except LobbyUnavailable as error:
                log.debug("periodic lobby read failed: %s", error)
            except Exception:
                log.exception("periodic lobby read failed")

    # -- the game side's writes: in order, never awaited by a tick ---------------------------------

    def submit(self, what: str, write: Write) -> None:
        self.writes.submit(what, write)

    @property
    def pending_writes(self) -> int:
        return len(self.writes)

    # -- reads for the node's endpoints ----------------------------------------------------------------

    async def room(self, mode: str, room_id: str) -> RoomRecord | None:
        try:
            return await self.seatings[mode].room(room_id)
        except OUTAGE as error:
            raise LobbyUnavailable(str(error)) from error

    async def rooms(self, mode: str) -> list[RoomRecord]:
        try:
            return await self.seatings[mode].rooms()
        except OUTAGE as error:
            raise LobbyUnavailable(str(error)) from error

    def node_url(self, node_id: str) -> str | None:
        return self.upkeep.urls.get(node_id)


def view_of(record: RoomRecord) -> RoomView:
    return RoomView(room_id=record.room_id, state=record.state, node=record.node,
                    countdown_ends_ms=record.countdown_ends_ms, started_ms=record.started_ms, players=record.players,
                    version=record.version)

