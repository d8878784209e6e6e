"""A websockets server connection that hands complete text messages to a callback as they arrive.

websockets normally queues each message and wakes the handler task to `recv()` it: a task step per
message. Game input arrives at 30 Hz per player, so once a player is seated the session installs
`on_text` and single-frame text messages are dispatched synchronously from `data_received`, in order.
Everything else (fragmented or binary messages, control frames, the closing handshake) stays on
websockets' own path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import Event

from server.auth import Identity

_TEXT = Opcode.TEXT


@dataclass(frozen=True, slots=True)
class JoinRequest:
    """What the handshake established: who connects, and to which room."""

    identity: Identity
    room_id: str
    mode: str


class GameConnection(ServerConnection):
    join_request: JoinRequest | None = None
    on_text: Callable[[bytes | bytearray | memoryview], None] | None = None

    def process_event(self, event: Event) -> None:
        on_text = self.on_text
        if on_text is not None and isinstance(event, Frame) and event.opcode is _TEXT and event.fin:
            on_text(event.data)
            return
        super().process_event(event)
