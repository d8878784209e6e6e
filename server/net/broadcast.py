"""Encode once, frame once, write the same bytes to every player's transport without awaiting.

Server-to-client WebSocket frames are unmasked, so one framed buffer serves a whole room. We write
whole frames straight to each connection's transport, which keeps frame boundaries intact next to
what websockets itself sends (pings, close frames), and we skip connections that are not open.
A client whose unsent bytes pile up is skipped, then dropped, so it never stalls the room.
"""

from __future__ import annotations

import struct

from websockets.protocol import State

from server.net.connection import GameConnection

_OPEN = State.OPEN
_TEXT_FIN = 0x81
_BINARY_FIN = 0x82


def _frame(first: int, payload: bytes) -> bytes:
    """A final, unmasked frame around `payload` (RFC 6455 section 5.2); `first` is FIN and the opcode."""
    length = len(payload)
    if length < 126:
        return bytes((first, length)) + payload
    if length < 65536:
        return struct.pack("!BBH", first, 126, length) + payload
    return struct.pack("!BBQ", first, 127, length) + payload


def text_frame(payload: bytes) -> bytes:
    """A text frame around UTF-8 JSON `payload`."""
    return _frame(_TEXT_FIN, payload)


def binary_frame(payload: bytes) -> bytes:
    """A binary frame around `payload` (a `delta` encoding state, server/net/wire.py)."""
    return _frame(_BINARY_FIN, payload)


def send_frames(connection: GameConnection, frames: bytes) -> bool:
    """Write already framed bytes to one connection if it is open; False if it was not."""
    if connection.protocol.state is not _OPEN:
        return False
    transport = connection.transport
    if transport.is_closing():
        return False
    transport.write(frames)
    traffic = connection.listener.traffic
    traffic.messages_out += 1
    traffic.bytes_out += len(frames)
    return True
