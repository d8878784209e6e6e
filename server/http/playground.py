"""The browser playground at `/play/`: static files shipped in the package (server/http/play/), the JavaScript client
library among them (`play/tickroom.js` is a link to clients/js/tickroom.js, which a wheel holds as a copy).

Only files found under the folder are served, by their path: nothing outside it can be named. A production node
reads them once; a development node reads them on every request, so that an edited page shows on reload.
"""

from __future__ import annotations

from http import HTTPStatus
from pathlib import Path

from websockets.datastructures import Headers
from websockets.http11 import Response

PLAY_DIR = Path(__file__).resolve().parent / "play"
PREFIX = "/play/"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
# The pages run only their own scripts and fetch only from their own node; WebSockets may go to other ports and
# hosts, because `match_found` may send a player to another node, or to a worker's own port (`--workers`).
SECURITY_HEADERS = [
    ("Content-Security-Policy", "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
                                "frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
]


def _listing(root: Path) -> dict[str, Path]:
    """Every servable file under `root` by its URL path (`/play/games/arena.js`)."""
    return {PREFIX + path.relative_to(root).as_posix(): path for path in sorted(root.rglob("*"))
            if path.suffix in CONTENT_TYPES and path.is_file()}


class Playground:
    def __init__(self, root: Path = PLAY_DIR, *, reload: bool) -> None:
        self.root = root
        self.reload = reload
        self._files: dict[str, tuple[str, bytes]] = {} if reload else self._read()

    def _read(self) -> dict[str, tuple[str, bytes]]:
        return {url: (CONTENT_TYPES[path.suffix], path.read_bytes()) for url, path in _listing(self.root).items()}

    def answer(self, path: str) -> Response | None:
        """The file at `path` (`/play`, `/play/`, `/play/play.js`...), or None when there is none."""
        if path == "/play":
            return _response(HTTPStatus.PERMANENT_REDIRECT, "text/plain; charset=utf-8", b"/play/",
                             [("Location", PREFIX)])
        if path == PREFIX:
            path = PREFIX + "index.html"
        files = self._files
        if self.reload:
            listed = _listing(self.root).get(path)
            if listed is None:
                return None
            try:
                return _response(HTTPStatus.OK, CONTENT_TYPES[listed.suffix], listed.read_bytes())
            except OSError:
                return None
        found = files.get(path)
        if found is None:
            return None
        return _response(HTTPStatus.OK, *found)


def _response(status: HTTPStatus, content_type: str, body: bytes,
              extra: list[tuple[str, str]] | None = None) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-cache"), *SECURITY_HEADERS, *(extra or [])])
    return Response(status.value, status.phrase, headers, body)
