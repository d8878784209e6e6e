"""Taking a node out of service without kicking anyone (`tickroom drain NODE`, or the admin call).

serving → draining: the node takes no new rooms (its heartbeat says so, and the lobby places rooms
elsewhere) and no new lobby connections (503 `node_draining`); its matches play on to their end, including
those of lobby rooms placed on it just before. When none is left (here, or forming for it in the lobby):
drained. At the deadline, draining → handing_off: its rooms' snapshots go to Redis, the lobby moves its rooms
to another node (which restores the running ones from those snapshots, as after a crash) and its players are
told to `reconnect`: they come back through the lobby into the same match on its new host.
→ drained: no room is left; players still waiting in the lobby through this node are told to reconnect (their
seats wait for them). The node stays up, idle, until the operator stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import logging
import time
from collections.abc import Callable, Iterable

from lobby.hub import LobbyHub
from lobby.outage import stop_if_cancelled
from server.cluster.node import Node
from server.net.broadcast import text_frame
from server.net.link import ClientLink
from server.net.protocol import CloseCode, ReconnectReason, reconnect_message
from server.rooms.snapshotter import Snapshotter

log = logging.getLogger("tickroom.drain")


class DrainState(enum.Enum):
    SERVING = "serving"
    DRAINING = "draining"
    HANDING_OFF = "handing_off"
    DRAINED = "drained"


RECONNECT_DRAIN = reconnect_message(ReconnectReason.DRAIN)


class Drainer:
    def __init__(self, node: Node, hub: LobbyHub | None, snapshotter: Snapshotter | None,
                 lobby_links: Callable[[], Iterable[ClientLink]], spawn: Callable[..., asyncio.Task[None]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.node = node
        self.hub = hub
        self.snapshotter = snapshotter
        self._lobby_links = lobby_links
        self._spawn = spawn
        self.clock = clock
        self._state = DrainState.SERVING
        self.deadline: float | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def state(self) -> DrainState:
        return self._state

    @state.setter
    def state(self, state: DrainState) -> None:
        self._state = state
        self.node.drain_state = state.value  # the heartbeat tells the lobby (and `tickroom drain`)

    def start(self, deadline_s: float) -> bool:
        """Begin draining (the deadline counts from now), or bring the deadline of a drain under way closer;
        False when there is nothing to change."""
        deadline = self.clock() + deadline_s
        if self.state is DrainState.DRAINING and self.deadline is not None and deadline < self.deadline:
            self.deadline = deadline
            log.warning("draining: the deadline is now in %g s", deadline_s)
            return True
        if self.state is not DrainState.SERVING:
            return False
        self.state = DrainState.DRAINING
        self.node.accepting = False
        self.deadline = deadline
        log.warning("draining: no new rooms; %d room(s) have %g s to finish before they are handed to other nodes",
                    len(self.node.rooms), deadline_s)
        # A context of its own: the drain's log lines are not those of the request that asked for it.
        self._task = self._spawn(self._run(), name="drain", context=contextvars.Context())
        return True

    def stop(self) -> None:
        """The node is shutting down (SIGTERM): the drain ends now rather than at its deadline, and the shutdown
        does what is left (snapshots, players told to reconnect, the node deregistered for others to sweep)."""
        if self._task is not None:
            self._task.cancel()

    def describe(self) -> dict[str, object]:
        left = None if self.deadline is None else max(0.0, round(self.deadline - self.clock(), 3))
        return {"state": self.state.value, "rooms": len(self.node.rooms), "deadline_in_s": left}

    async def _run(self) -> None:
        step = self.node.settings.node_heartbeat_s
        while True:
            try:
                await self._drain()
                return
            except Exception:  # Redis failing mid hand-off, say: never take the node's other tasks down
                stop_if_cancelled()
                log.exception("draining failed; trying again")
                if self.state is DrainState.HANDING_OFF:
                    self.state = DrainState.DRAINING
                await asyncio.sleep(step)

    async def _drain(self) -> None:
        assert self.deadline is not None
        step = self.node.settings.node_heartbeat_s
        # The matches play on until none is left here, nor forming for this node in the lobby; or the deadline.
        while (remaining := self.deadline - self.clock()) > 0:
            if not self.node.rooms:
                if not await self._assigned():
                    break
                await asyncio.sleep(min(step, remaining))  # a lobby room placed here is still forming
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.node.idle(), min(step, remaining))
        while self.node.rooms or await self._assigned():
            if await self._hand_off():
                break
            await asyncio.sleep(step)  # no other node takes rooms yet
        await self.node.idle()  # the rooms handed off close (their runners end)
        self._send_lobby_elsewhere()
        self.state = DrainState.DRAINED
        log.warning("drained: no room left on this node; it can be stopped")

    async def _assigned(self) -> int:
        return await self.hub.upkeep.rooms_assigned() if self.hub is not None else 0

    def _send_lobby_elsewhere(self) -> None:
        """Players waiting in the lobby through this node reconnect through another (their seats wait)."""
        for link in list(self._lobby_links()):
            link.close(CloseCode.GOING_AWAY, "node drained", last=RECONNECT_DRAIN)

    async def _hand_off(self) -> bool:
        """Snapshot the rooms left, move them to other nodes through the lobby's sweep of this node, and tell
        their players to reconnect. False when no other node takes rooms (nothing was changed)."""
        hub = self.hub
        if hub is None:  # no lobby: nobody could take the rooms; they end here
            log.warning("draining without a lobby: closing %d room(s)", len(self.node.rooms))
            self.state = DrainState.HANDING_OFF
            self.node.hand_off_rooms(text_frame(RECONNECT_DRAIN))
            return True
        new_host = hub.upkeep.pick_host()
        if not new_host or new_host == self.node.settings.node_id:
            log.warning("draining: no other node takes rooms; %d room(s) stay here for now", len(self.node.rooms))
            return False
        self.state = DrainState.HANDING_OFF
        if self.snapshotter is not None:
            saved = await self.snapshotter.save_all(timeout=2.0)
            log.info("draining: snapshots of %d running room(s) written", saved)
        await hub.hand_off(new_host)
        self.node.hand_off_rooms(text_frame(RECONNECT_DRAIN))
        self._send_lobby_elsewhere()
        log.warning("draining: rooms handed to other nodes; their players were told to reconnect")
        return True
