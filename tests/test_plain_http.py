"""Plain HTTP on the node's port beside WebSocket: requests other than GET (server/net/requesthead.py: `POST
/dev/token`, a browser's CORS preflight, 405 for the rest, bodies too large or of no stated length) and the
playground's static files (server/http/playground.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from http import HTTPStatus
from pathlib import Path

import orjson
import pytest

from server.app import App
from server.http.playground import PLAY_DIR, Playground
from server.net.requesthead import MAX_BODY, HeadRefused, RequestHead
from tests.serverkit import start_app

REPO = Path(__file__).resolve().parent.parent
GAME_SITE = "https://game.example.com"


# -- the request head, before websockets' parser -------------------------------------------------------------


def test_a_get_goes_to_websockets_unchanged_even_in_pieces() -> None:
    request = b"GET /lobby HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n"
    head = RequestHead()
    assert head.feed(request) == request and head.method == "GET"
    pieces = RequestHead()
    assert pieces.feed(b"GE") is None
    assert pieces.feed(b"T /lobby") == b"GET /lobby"  # a GET from then on: websockets reads the rest itself


def test_another_method_is_read_to_the_end_of_its_body_and_handed_on_as_a_get_without_it() -> None:
    head = RequestHead()
    assert head.feed(b"POST /dev/token HTTP/1.1\r\nHost: x\r\nContent-Len") is None
    assert head.feed(b"gth: 13\r\nContent-Type: application/json\r\n\r\n{\"name\"") is None
    handed = head.feed(b': "a"}')
    assert handed == b"GET /dev/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n"
    assert (head.method, head.body) == ("POST", b'{"name": "a"}')
    options = RequestHead()
    assert options.feed(b"options /leaderboard HTTP/1.1\r\nOrigin: o\r\n\r\n") == \
        b"GET /leaderboard HTTP/1.1\r\nOrigin: o\r\n\r\n"
    assert (options.method, options.body) == ("OPTIONS", b"")


@pytest.mark.parametrize(("head", "status", "code"), [
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", HTTPStatus.LENGTH_REQUIRED, "bad_request"),
    (b"POST / HTTP/1.1\r\nContent-Length: ten\r\n\r\n", HTTPStatus.BAD_REQUEST, "bad_request"),
    (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body_too_large"),
    (b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1), HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
     "body_too_large"),
])
def test_bodies_it_does_not_read_are_refused_before_they_arrive(head: bytes, status: HTTPStatus, code: str) -> None:
    with pytest.raises(HeadRefused) as refused:
        RequestHead().feed(head)
    assert (refused.value.status, refused.value.code) == (status, code)
    assert refused.value.response.startswith(f"HTTP/1.1 {status.value} ".encode())
    assert orjson.loads(refused.value.response.partition(b"\r\n\r\n")[2])["error"] == code


def test_what_is_not_http_goes_to_websockets_which_refuses_it() -> None:
    assert RequestHead().feed(b"\x16\x03\x01 hello\r\n\r\n") == b"\x16\x03\x01 hello\r\n\r\n"  # TLS to a plain port
    assert RequestHead().feed(b"POST" + b"x" * 20_000) is not None  # no end of head in sight: too long


# -- against a node -----------------------------------------------------------------------------------------


@pytest.fixture
async def app() -> AsyncIterator[App]:
    node = await start_app(allowed_origins=GAME_SITE)
    yield node
    await node.__aexit__(None, None, None)


async def exchange(app: App, *pieces: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send a request in these pieces (each its own write), read the whole answer until the node closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    try:
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.02)
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def post(path: str, body: bytes, *extra: str) -> bytes:
    headers = "".join(f"{line}\r\n" for line in extra)
    return f"POST {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {len(body)}\r\n\r\n".encode() + body


async def test_a_post_in_pieces_mints_a_token(app: App) -> None:
    request = post("/dev/token", b'{"name": "ann"}', "Content-Type: application/json")
    status, headers, body = await exchange(app, request[:20], request[20:-5], request[-5:])
    assert status == 200 and headers["content-type"] == "application/json"
    assert orjson.loads(body)["name"] == "ann"


async def test_methods_an_endpoint_does_not_take_get_405_with_what_it_takes(app: App) -> None:
    status, headers, body = await exchange(app, b"PUT /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert (status, headers["allow"], orjson.loads(body)["error"]) == (405, "GET", "method_not_allowed")
    status, headers, body = await exchange(app, b"GET /dev/token?name=ann HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, headers["allow"], orjson.loads(body)["error"]) == (405, "POST", "method_not_allowed")
    # A WebSocket opens with a GET only.
    upgrade = post("/lobby", b"", "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")
    status, headers, _ = await exchange(app, upgrade)
    assert status == 405


async def test_bodies_too_large_or_in_chunks_are_refused_and_the_connection_closed(app: App) -> None:
    status, _, body = await exchange(app, post("/dev/token", b"x" * (MAX_BODY + 1)))
    assert (status, orjson.loads(body)["error"]) == (413, "body_too_large")
    status, _, body = await exchange(app, b"POST /dev/token HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n")
    assert (status, orjson.loads(body)["error"]) == (411, "bad_request")
    assert app.metrics.traffic.errors["body_too_large"] == 1


async def test_a_cors_preflight_is_answered_with_cors_headers_for_listed_origins_only(app: App) -> None:
    def preflight(origin: str) -> bytes:
        return (f"OPTIONS /leaderboard HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\n"
                f"Access-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: authorization\r\n\r\n").encode()

    status, headers, _ = await exchange(app, preflight(GAME_SITE))
    assert status == 204
    assert headers["access-control-allow-origin"] == GAME_SITE
    assert "POST" in headers["access-control-allow-methods"]
    assert "Authorization" in headers["access-control-allow-headers"]
    status, headers, _ = await exchange(app, preflight("https://evil.example.net"))
    assert status == 204 and "access-control-allow-origin" not in headers  # the browser keeps the request back


# -- the playground -----------------------------------------------------------------------------------------


async def test_the_playground_and_its_library_are_served_at_play(app: App) -> None:
    status, headers, _ = await exchange(app, b"GET /play HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, headers["location"]) == (308, "/play/")
    status, headers, _ = await exchange(app, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, headers["location"]) == (308, "/play/")
    status, headers, body = await exchange(app, b"GET /play/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert body == (PLAY_DIR / "index.html").read_bytes()
    assert "default-src 'self'" in headers["content-security-policy"]
    status, headers, body = await exchange(app, b"GET /play/tickroom.js HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    assert body == (REPO / "clients" / "js" / "tickroom.js").read_bytes()  # the library itself, not a copy
    for missing in (b"/play/nothing.js", b"/play/../pyproject.toml", b"/play/%2e%2e/pyproject.toml", b"/playx"):
        status, _, body = await exchange(app, b"GET " + missing + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status, orjson.loads(body)["error"]) == (404, "not_found"), missing


async def test_an_operator_can_turn_the_playground_off() -> None:
    node = await start_app(playground=False)
    try:
        status, _, body = await exchange(node, b"GET /play/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status, orjson.loads(body)["error"]) == (404, "not_found")
    finally:
        await node.__aexit__(None, None, None)


def test_production_reads_the_files_once_development_on_every_request(tmp_path: Path) -> None:
    (tmp_path / "games").mkdir()
    (tmp_path / "index.html").write_text("<p>one</p>")
    (tmp_path / "games" / "dice.js").write_text("export {};")
    (tmp_path / "secret.py").write_text("no")
    once, live = Playground(tmp_path, reload=False), Playground(tmp_path, reload=True)
    (tmp_path / "index.html").write_text("<p>two</p>")
    (tmp_path / "new.css").write_text("p {}")
    assert once.answer("/play/").body == b"<p>one</p>"  # type: ignore[union-attr]
    assert live.answer("/play/").body == b"<p>two</p>"  # type: ignore[union-attr]
    assert once.answer("/play/new.css") is None and live.answer("/play/new.css") is not None
    for playground in (once, live):
        assert playground.answer("/play/games/dice.js") is not None
        assert playground.answer("/play/secret.py") is None  # only the page's kinds of files
        assert playground.answer("/play/../secret.py") is None
