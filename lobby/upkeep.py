"""What a node does for the deployment's lobby as a whole: it heart-beats and keeps the directory of live
nodes, keeps its players' and rooms' keys alive, sweeps up after dead nodes, and decides expired rooms."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from lobby.keys import text
from lobby.nodes import NodeInfo, NodeRegistry
from lobby.outage import BACKOFF_MAX_S, OUTAGE, Backoff, stop_if_cancelled
from lobby.seating import Claim, Outcome, Seating

log = logging.getLogger("tickroom.lobby")

# A node whose last heartbeat is older than this many heartbeat intervals is suspected dead (it beats once an
# interval, and the survey that saw it is at most one interval old): no player is sent to it until its rooms
# have moved or it beats again.
SUSPECT_AFTER_BEATS = 3
# A node is taken for dead before its key expires when its process is gone: its notice listener has left Redis
# (the kernel closed the connection when the process died) and it missed a heartbeat (its beat is older than
# this many intervals). A machine that vanished keeps its connections open until TCP gives up: its key expires.
GONE_AFTER_BEATS = 1.5
STEADY_BEATS = 3  # only a node that heart-beat this many times in a row judges others (not just after an outage)
# After Redis was unreachable, the other nodes' listeners and heartbeats may still wait in their back-off (at most
# BACKOFF_MAX_S) for a while after this node is back: none is judged by its listener until that time has passed.

Listeners = Callable[[list[str]], Awaitable[dict[str, int]]]


@dataclass(slots=True)
class LocalState:
    """What the node holds, per mode: its load, whether it takes new rooms, and the players connected to it
    and rooms it hosts or has players waiting in (whose keys it keeps alive)."""

    load: int = 0
    accepting: bool = True
    state: str = "serving"  # serving, draining, handing_off, drained (server/cluster/drain.py)
    players: dict[str, list[str]] = field(default_factory=dict)
    rooms: dict[str, set[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HostedMatch:
    """A running lobby match this node hosts, as the lobby must know it again after Redis lost it: the claim
    (`reclaim.lua`, with its members in join order) and the game connections of the players connected now."""

    mode: str
    claim: Claim
    connected: tuple[tuple[str, str], ...] = ()  # (player id, connection id)


Publish = Callable[[str, Outcome], None]
Attach = Callable[[str, str, str, str], None]  # (mode, player id, room id, connection id)
# Restores running matches this node was given (mode, room ids), or gives their players back.
Adopt = Callable[[str, list[str]], Awaitable[None]]


async def _no_adoption(mode: str, room_ids: list[str]) -> None:
    log.warning("rooms %s (%s) were given to this node to restore, and it cannot restore rooms", room_ids, mode)
Spawn = Callable[[Awaitable[None], str], None]
Submit = Callable[[str, Callable[[], Awaitable[object]]], None]
Evict = Callable[[str, set[str]], None]  # (mode, the rooms a sweep took from this node)


class Upkeep:
    def __init__(self, node_id: str, url: str, registry: NodeRegistry, seatings: Mapping[str, Seating],
                 local_state: Callable[[], LocalState], publish: Publish, spawn: Spawn, submit: Submit,
                 evict: Evict, wall_ms: Callable[[], int], *, heartbeat_s: float, presence_every_s: float,
                 adopt: Adopt | None = None, listeners: Listeners | None = None,
                 hosted: Callable[[], list[HostedMatch]] | None = None, attach: Attach | None = None) -> None:
        self.node_id = node_id
        self.url = url
        self.registry = registry
        self.seatings = seatings
        self._local_state = local_state
        self._publish = publish
        self._spawn = spawn
        self._submit = submit
        self._evict = evict
        self._adopt = adopt or _no_adoption
        self._adopted_at_start = False
        self._started_ms = wall_ms()  # rooms of this node running from before are a previous life's
        self.wall_ms = wall_ms
        self.heartbeat_s = heartbeat_s
        self.presence_every_s = presence_every_s
        self.stopping = False
        self._beats = 0
        self._steady = 0  # heartbeats in a row since the last outage
        self._judge_after = 0.0  # time.monotonic() before which no node is taken for dead by its listener
        self._hash_lost = False  # this node's heartbeat hash was gone: fence and re-assert until both are done
        self._listeners = listeners
        self._hosted = hosted
        self._attach = attach
        self._beating = asyncio.Lock()  # held while a heartbeat is in flight
        self.live: list[NodeInfo] = []
        self.surveyed_at = 0.0  # time.monotonic() of the survey `live` comes from
        self.urls: dict[str, str] = {node_id: url}
        self.reachable = False
        self.surveyed = asyncio.Event()  # set once the directory of live nodes was read
        self.tally: Counter[str] | None = None  # Redis failures, for the node's metrics
        # Called with each node this one swept (the app takes over the dead node's unwritten Postgres writes).
        self.on_drain: Callable[[float], None] | None = None  # an operator asked this node to drain (deadline)
        self.on_swept: Callable[[str], Awaitable[None]] | None = None
        # Whether this node takes new rooms right now (its load may have changed since its last heartbeat).
        self.accepting_now: Callable[[], bool] | None = None
        self.placed_here: Callable[[], None] | None = None  # a new room placed on this node (its load gauge)
        self._beat_soon = asyncio.Event()

    def pick_host(self) -> str:
        """Where a new room goes: the least-loaded live node taking rooms, as of the last heartbeat ('' when
        none is; before the first heartbeat, this node)."""
        if not self.live:
            return self.node_id if self._local_state().accepting else ""
        own = self.accepting_now
        return next((node.node_id for node in self.live
                     if (node.accepting if own is None or node.node_id != self.node_id else own())), "")

    def beat_soon(self) -> None:
        """Heart-beat now rather than at the next period: what the node says of itself changed (it became full,
        or took rooms again)."""
        self._beat_soon.set()

    def heart_beating(self, node_id: str) -> bool:
        """Is the node alive and its heartbeat recent (at most SUSPECT_AFTER_BEATS heartbeats old)? A node that
        stopped beating is suspected dead before its key expires: the lobby sends nobody to it meanwhile."""
        if node_id == self.node_id:
            return True
        node = next((node for node in self.live if node.node_id == node_id), None)
        if node is None:
            return False
        age_ms = node.beat_age_ms + (time.monotonic() - self.surveyed_at) * 1000
        return age_ms <= SUSPECT_AFTER_BEATS * self.heartbeat_s * 1000

    def redis_came_back(self) -> None:
        """Redis was unreachable (or dropped this node's connections) and answers again: the other nodes may
        take up to the longest back-off plus a heartbeat to resubscribe and beat, so judge none of them before."""
        self._judge_after = time.monotonic() + BACKOFF_MAX_S + self.heartbeat_s

    def placed(self, node_id: str) -> None:
        """A new room was just put on `node_id`: count it now, so that a burst of new rooms spreads over the
        nodes instead of all going to the one that was least loaded at the last heartbeat."""
        self.live = sorted((dataclasses.replace(node, load=node.load + 1) if node.node_id == node_id else node
                            for node in self.live), key=lambda node: (node.load, node.node_id))
        self._spawn(self.registry.count_room(node_id), "count-room")
        if node_id == self.node_id and self.placed_here is not None:
            self.placed_here()

    async def stop_heartbeat(self) -> None:
        """No heartbeat after this returns (one in flight is waited for): the node can deregister for good."""
        self.stopping = True
        async with self._beating:
            pass

    async def heartbeat_loop(self) -> None:
        backoff = Backoff(tally=self.tally)
        while True:
            stop_if_cancelled()
            try:
                async with self._beating:
                    if self.stopping:
                        return
                    state = self._local_state()
                    was_alive, drain = await self.registry.heartbeat(
                        self.node_id, self.url, state.load, self.wall_ms(), accepting=state.accepting,
                        state=state.state)
                    if drain is not None and self.on_drain is not None:
                        self.on_drain(drain)
                        await self.registry.clear_drain(self.node_id)
                        # Say "not accepting" at once rather than at the next heartbeat: fewer rooms land here.
                        state = self._local_state()
                        await self.registry.heartbeat(self.node_id, self.url, state.load, self.wall_ms(),
                                                      accepting=state.accepting, state=state.state)
                    if not was_alive and self._beats:
                        self._hash_lost = True
                    if self._hash_lost:  # until both are done: an outage in between leaves them for next time
                        await self._fence()
                        await self._reassert()
                        self._hash_lost = False
                    self._beats += 1
                    self._steady += 1
                await self.adopt_rooms(first=not self._adopted_at_start)
                self._adopted_at_start = True
                live, dead = await self.registry.survey()
                self.live = live
                self.surveyed_at = time.monotonic()
                self.surveyed.set()
                self.urls.update({node.node_id: node.url for node in live})
                self.reachable = True
                if backoff.failing:
                    self.redis_came_back()
                backoff.reset("heartbeat")
                for node in await self._processes_gone(live):
                    if await self.registry.declare_dead(node):
                        log.warning("node %s's process is gone (its notice listener left Redis and it missed a "
                                    "heartbeat): taking it for dead now", node.node_id)
                        dead.append(node.node_id)
                        self.live = [other for other in self.live if other.node_id != node.node_id]
                for node_id in dead:
                    # Asked again just before: a node that only stalled may have come back meanwhile.
                    if node_id != self.node_id and not await self.registry.is_alive(node_id):
                        await self.sweep(node_id)
            except OUTAGE as error:
                self.reachable = False
                self._steady = 0
                await backoff.wait("heartbeat", error)
                continue
            except Exception as error:  # a Redis answer we did not expect: never take the rooms down with it
                self._steady = 0
                await backoff.wait("heartbeat", error)
                continue
            try:
                async with asyncio.timeout(self.heartbeat_s):
                    await self._beat_soon.wait()
            except TimeoutError:
                pass
            self._beat_soon.clear()

    async def _processes_gone(self, live: list[NodeInfo]) -> list[NodeInfo]:
        """Live nodes whose process is gone: no listener on their notice channel, and a missed heartbeat. Judged
        only while this node's own listener is there and it heart-beat steadily, and long enough after an outage
        for every node to have come back from its back-off: after a Redis restart every listener is gone for a
        while, this one's too."""
        others = [node for node in live if node.node_id != self.node_id]
        if (self._listeners is None or not others or self._steady < STEADY_BEATS
                or time.monotonic() < self._judge_after):
            return []
        counts = await self._listeners([self.node_id, *(node.node_id for node in others)])
        if counts.get(self.node_id, 0) < 1:
            return []
        late_ms = GONE_AFTER_BEATS * self.heartbeat_s * 1000
        return [node for node in others if counts.get(node.node_id, 0) == 0 and node.beat_age_ms > late_ms]

    async def _fence(self) -> None:
        """This node's heartbeat had expired (a stall longer than the dead-after time, or Redis lost its data):
        another node may have swept it, giving its running matches' players back to the lobby. Close exactly
        the rooms a sweep wrote down as taken, so that none of their players is in two rooms."""
        log.warning("node %s found its heartbeat gone (a stall, or Redis lost its data); checking for rooms the "
                    "other nodes took over", self.node_id)
        for mode, seating in self.seatings.items():
            key = seating.keys.node_swept(self.node_id)
            taken = {text(room_id) for room_id in await seating.client.smembers(key)}
            if taken:
                self._evict(mode, taken)
                await seating.client.delete(key)

    async def _reassert(self) -> None:
        """This node's heartbeat hash was gone. If Redis lost the lobby's state (a flush, a restart without
        persistence, a failover to an empty replica), put back the running matches this node still hosts, with
        their seats and connected players, so that comebacks reach them and `GET /lobby/rooms` lists them:
        `reclaim.lua` for this node itself, which leaves alone every room the lobby still knows (a stall)."""
        if self._hosted is None:
            return
        by_mode: dict[str, list[HostedMatch]] = {}
        for match in self._hosted():
            by_mode.setdefault(match.mode, []).append(match)
        for mode, matches in by_mode.items():
            outcomes = await self.seatings[mode].reclaim_many(self.node_id, self.wall_ms(),
                                                              [match.claim for match in matches])
            restored = 0
            for match, outcome in zip(matches, outcomes, strict=True):
                if outcome.outcome != "claimed" or outcome.view is None:
                    continue
                restored += 1
                seated = set(outcome.view.player_ids)
                for player_id, conn_id in match.connected:
                    if player_id in seated and self._attach is not None:
                        self._attach(mode, player_id, match.claim.room_id, conn_id)
                self._publish(mode, outcome)
            if restored:
                log.warning("the lobby had lost %d running match(es) of this node (%s): registered again with "
                            "their players", restored, mode)

    async def adopt_rooms(self, *, first: bool) -> None:
        """Restore the running matches a sweep gave this node (its `adopt` set), and at the first heartbeat
        those still assigned to it from before a restart: a few round trips for any number of rooms. The set
        is emptied of what was handled; an outage leaves it for the next heartbeat."""
        state = self._local_state()
        for mode, seating in self.seatings.items():
            key = seating.keys.node_adopt(self.node_id)
            given = {text(room_id) for room_id in await seating.client.smembers(key)}
            mine: set[str] = set()
            if first:
                hosted = await seating.client.smembers(seating.keys.node_rooms(self.node_id))
                mine = {text(room_id) for room_id in hosted}
                # Rooms swept from this node's previous life are not this process's to fence.
                await seating.client.delete(seating.keys.node_swept(self.node_id))
            candidates = sorted((given | mine) - state.rooms.get(mode, set()))
            if candidates:
                records = {record.room_id: record for record in await seating.rooms(candidates)}
                # Of its own rooms, only those that were running before this process started: a match that
                # starts now has its players on their way here.
                wanted = [room_id for room_id in candidates
                          if (record := records.get(room_id)) is not None and record.state == "running"
                          and record.node == self.node_id
                          and (room_id in given or (record.started_ms or self._started_ms) < self._started_ms)]
                if wanted:
                    await self._adopt(mode, wanted)
            if given:
                await seating.client.srem(key, *given)

    async def sweep(self, dead: str) -> None:
        """Free what a dead node held; any number of nodes may sweep the same node, the first does the work."""
        log.warning("node %s is dead (no heartbeat): sweeping up after it", dead)
        for mode, seating in self.seatings.items():
            outcome = await seating.sweep(dead, self.wall_ms(), new_host=self.pick_host(),
                                          alive_key=self.registry.node_key(dead))
            if outcome.outcome == "alive":
                log.info("node %s heart-beats again: not swept", dead)
                return
            if outcome.counts and any(outcome.counts.values()):
                log.info("swept node %s (%s): %d waiting room(s) moved, %d running room(s) to recovery",
                         dead, mode, outcome.counts.get("moved", 0), outcome.counts.get("recovered", 0))
            self._publish(mode, outcome)
        if self.on_swept is not None:
            await self.on_swept(dead)  # before it leaves the index: a sweep cut short here is done again
        await self.registry.forget(dead)
        self.urls.pop(dead, None)

    async def hand_off(self, new_host: str) -> None:
        """Draining: move this node's rooms to `new_host`, as a sweep of a dead node would (the running ones
        for it to restore from their snapshots), while this node lives on, idle; players waiting through this
        node keep their seats."""
        for mode, seating in self.seatings.items():
            outcome = await seating.sweep(self.node_id, self.wall_ms(), new_host=new_host, hand_off=True)
            log.info("handed off this node's rooms (%s): %s", mode, outcome.counts)
            self._publish(mode, outcome)

    async def rooms_assigned(self) -> int:
        """How many rooms the lobby has on this node (those it hosts, and those still forming for it)."""
        total = 0
        for seating in self.seatings.values():
            total += int(await seating.client.scard(seating.keys.node_rooms(self.node_id)))
        return total

    async def presence_loop(self) -> None:
        backoff = Backoff(tally=self.tally)
        while True:
            stop_if_cancelled()
            try:
                await self.refresh_presence()
                backoff.reset("presence")
            except Exception as error:  # outages, and anything unexpected: keep refreshing
                await backoff.wait("presence", error)
                continue
            await asyncio.sleep(self.presence_every_s)

    async def refresh_presence(self) -> None:
        """Keep alive the keys of the players connected here and of the rooms they wait or play in."""
        state = self._local_state()
        for mode, seating in self.seatings.items():
            players = state.players.get(mode, [])
            rooms = state.rooms.get(mode, set())
            if players or rooms:
                await seating.refresh(players, rooms)

    def on_expired(self, key: str) -> None:
        for mode, seating in self.seatings.items():
            room_id = seating.keys.room_id_of_shadow(key)
            if room_id is not None:
                # Through the write queue: an expiry met by an outage is tried again, not forgotten.
                self._submit(f"expire {room_id}", functools.partial(self.expire, mode, room_id))

    async def expire(self, mode: str, room_id: str) -> None:
        """A room's shadow key expired (every node hears it; the first to decide wins, the others see it gone)."""
        seating = self.seatings[mode]
        record = await seating.room(room_id)
        host_alive = record is not None and (record.node == self.node_id or await self.registry.is_alive(record.node))
        outcome = await seating.expire(room_id, self.wall_ms(), host_alive=host_alive,
                                       new_room_ids=[uuid.uuid4().hex[:16] for _ in range(2)],
                                       new_room_node=self.pick_host())
        if outcome.outcome not in ("alive", "gone"):
            log.info("room %s (%s) expired: %s", room_id, mode, outcome.outcome)
        self._publish(mode, outcome)
