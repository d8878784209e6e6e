"""A connection's first request before websockets' handshake parser sees it: plain HTTP methods other than GET.

websockets reads GET requests without a body only, since a WebSocket opens with one. A node's small HTTP side takes a
few more: `POST /dev/token` with a JSON body, and the `OPTIONS` preflight a browser sends before a cross-origin
request with a JSON body or an `Authorization` header. A GET goes to websockets unchanged. Any other request is read
up to the end of its body, then handed on as a GET without its body; the connection keeps the method and the body
for the endpoint, which answers 405 where the method is not one it takes.
"""

from __future__ import annotations

from http import HTTPStatus

from server.net.protocol import ErrorCode, handshake_error_body

MAX_HEAD = 16 * 1024  # websockets refuses longer heads itself (8 KiB lines, 128 headers)
MAX_BODY = 16 * 1024  # the largest body an endpoint takes (a name for /dev/token needs a few dozen bytes)

_GET = b"GET "
_END = b"\r\n\r\n"


class HeadRefused(Exception):
    """A request refused before it reaches the endpoints: `response` is the whole HTTP answer to send."""

    def __init__(self, status: HTTPStatus, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        body = handshake_error_body(code, message)
        self.response = (f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


class RequestHead:
    """Collects a connection's first bytes until its request is whole; see the module's docstring."""

    __slots__ = ("_buffer", "body", "method")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.method = "GET"
        self.body = b""

    def feed(self, data: bytes) -> bytes | None:
        """The bytes for websockets' parser once the request is whole, or None while more are needed. Raises
        `HeadRefused` for a body this node does not read (too large, of no stated length)."""
        if not self._buffer and data.startswith(_GET):
            return data  # nearly every request: nothing to collect
        self._buffer += data
        if self._buffer.startswith(_GET) or len(self._buffer) < 4:
            return bytes(self._buffer) if len(self._buffer) >= 4 else None
        end = self._buffer.find(_END)
        if end < 0:
            # Too long to be a request we take: websockets refuses it as it would any other.
            return bytes(self._buffer) if len(self._buffer) > MAX_HEAD else None
        lines = bytes(self._buffer[:end]).split(b"\r\n")
        method, space, target = lines[0].partition(b" ")
        if not space or not method.isalpha():
            return bytes(self._buffer)  # not HTTP: websockets says so
        length = 0
        kept = [_GET + target]
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"transfer-encoding":
                raise HeadRefused(HTTPStatus.LENGTH_REQUIRED, ErrorCode.BAD_REQUEST,
                                  "send the body with a Content-Length, not in chunks")
            if name == b"content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    raise HeadRefused(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST,
                                      "Content-Length is not a number") from None
                continue
            kept.append(line)
        if not 0 <= length <= MAX_BODY:
            raise HeadRefused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, ErrorCode.BODY_TOO_LARGE,
                              f"a request body here is at most {MAX_BODY} bytes")
        start = end + len(_END)
        if len(self._buffer) < start + length:
            return None
        self.method = method.decode("ascii").upper()
        self.body = bytes(self._buffer[start:start + length])
        self._buffer = bytearray()
        # What follows the body (a pipelined request) is not read: the node closes after a plain HTTP answer.
        return b"\r\n".join(kept) + _END
