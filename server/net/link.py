"""A client connection's way back, shared by `/game` and `/lobby` sessions: send a message, refuse one with an
`error` (closing when the error says so), close once, and the flood check every message passes first."""

from __future__ import annotations

from collections.abc import Callable

from server.net.broadcast import send_frames, text_frame
from server.net.connection import GameConnection
from server.net.protocol import CloseCode, ErrorCode, ProtocolError, error_message


class TokenBucket:
    """Per-connection flood control: `burst` messages at once, refilled at `rate` per second."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = now

    def take(self, now: float) -> bool:
        tokens = self._tokens + (now - self._last) * self._rate
        self._last = now
        if tokens > self._burst:
            tokens = self._burst
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True


class ClientLink:
    def __init__(self, ws: GameConnection, bucket: TokenBucket, clock: Callable[[], float]) -> None:
        self.ws = ws
        self.closing = False
        self._bucket = bucket
        self._clock = clock

    def send(self, payload: bytes) -> None:
        send_frames(self.ws, text_frame(payload))

    def close(self, code: CloseCode, reason: str, *, last: bytes = b"") -> None:
        """Close once, after the message `last` if given (one write for both)."""
        if not self.closing:
            self.closing = True
            self.ws.close(code, reason, last=text_frame(last) if last else b"")

    def refuse(self, error: ProtocolError) -> None:
        self.ws.listener.traffic.errors[error.code.value] += 1
        message = error_message(error.code, error.message, error.retry_ms)
        if error.close is None:
            self.send(message)
        else:
            self.close(error.close, error.code.value, last=message)

    def admit(self, binary: bool) -> None:
        """Raise `ProtocolError` for a message over the flood limit, or a binary one."""
        if not self._bucket.take(self._clock()):
            raise ProtocolError(ErrorCode.RATE_LIMITED, "too many messages; slow down", CloseCode.POLICY)
        if binary:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "binary frames are not supported; send JSON text frames")

    async def closed(self) -> None:
        """Wait for the closing handshake this side started, if any (the close timeout bounds it)."""
        if self.closing:
            await self.ws.wait_closed()
