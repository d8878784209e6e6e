"""The operator's endpoints: `/readyz` (can this node take players?), `/metrics` (Prometheus), and `/admin` (the
nodes, this node's rooms, players and tick figures as JSON, or as a plain HTML page for a person), with the
drain call `/admin/drain`. `/admin` needs `Authorization: Bearer TICKROOM_ADMIN_TOKEN` and is off without one.
"""

from __future__ import annotations

import asyncio
import hmac
import html
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import orjson
from websockets.datastructures import MultipleValuesError
from websockets.http11 import Request

from persistence.migrate import discover
from server.net.protocol import ErrorCode, handshake_error_body

Answer = tuple[HTTPStatus, bytes, str]  # status, body, content type
JSON = "application/json"
CHECK_TIMEOUT_S = 2.0
MAX_DRAIN_DEADLINE_S = 86400.0


def _json(status: HTTPStatus, body: object) -> Answer:
    return status, orjson.dumps(body), JSON


def _error(status: HTTPStatus, code: ErrorCode, message: str) -> Answer:
    return status, handshake_error_body(code, message), JSON


async def _check(probe: Callable[[], Awaitable[object]]) -> tuple[bool, str]:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            detail = await probe()
    except Exception as error:  # the point of the check: any failure is a "no", named
        return False, f"{type(error).__name__}: {error}"[:200]
    return True, str(detail)


async def readiness(redis_ping: Callable[[], Awaitable[object]] | None,
                    schema_version: Callable[[], Awaitable[int]] | None, draining: bool) -> Answer:
    """200 when Redis and Postgres answer, the schema is the newest this code knows, and the node is not
    draining; else 503. Each check is named in the body."""
    checks: dict[str, dict[str, object]] = {}
    if redis_ping is not None:
        ok, detail = await _check(redis_ping)
        checks["redis"] = {"ok": ok, "detail": "PONG" if ok else detail}
    if schema_version is not None:
        ok, detail = await _check(schema_version)
        checks["postgres"] = {"ok": ok, "detail": "reachable" if ok else detail}
        wanted = max((migration.version for migration in discover()), default=0)
        applied = int(detail) if ok else None
        # Newer than this code knows is fine: a rolling upgrade migrates first, while the old nodes run.
        checks["migrations"] = {"ok": applied is not None and applied >= wanted,
                                "detail": f"{applied} (this code needs {wanted})" if ok else "unknown"}
    checks["draining"] = {"ok": not draining, "detail": "draining" if draining else "serving"}
    ready = all(check["ok"] for check in checks.values())
    return _json(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE, {"ready": ready, "checks": checks})


def authorized(token: str, request: Request) -> bool:
    """The admin token in `Authorization: Bearer TOKEN`, compared in constant time."""
    try:
        header = request.headers.get("Authorization", "")
    except MultipleValuesError:  # two Authorization headers: no
        return False
    scheme, _, given = header.partition(" ")
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def refused(token: str) -> Answer:
    if not token:
        return _error(HTTPStatus.NOT_FOUND, ErrorCode.NOT_FOUND,
                      "the admin view is off: set TICKROOM_ADMIN_TOKEN to turn it on")
    return _error(HTTPStatus.UNAUTHORIZED, ErrorCode.ADMIN_TOKEN_INVALID,
                  "send the admin token as 'Authorization: Bearer TOKEN'")


def drain_request(query: dict[str, list[str]], node_id: str, default_s: float) -> float | Answer:
    """The deadline of `/admin/drain?node=NODE_ID&deadline_s=N`, or the error to answer. The node id must be
    named (this endpoint is a GET, the only method the node's HTTP layer takes: the name is the
    confirmation)."""
    named = query.get("node", [""])[0]
    if named != node_id:
        return _error(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST,
                      f"name this node to drain it: /admin/drain?node={node_id}")
    raw = query.get("deadline_s", [None])[0]
    if raw is None:
        return default_s
    try:
        deadline = float(raw)
    except ValueError:
        deadline = -1.0
    if not 0 <= deadline <= MAX_DRAIN_DEADLINE_S:
        return _error(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST,
                      f"deadline_s must be a number of seconds from 0 to {MAX_DRAIN_DEADLINE_S:g}")
    return deadline


def wants_html(request: Request, query: dict[str, list[str]]) -> bool:
    accept = ",".join(request.headers.get_all("Accept"))
    return query.get("format", [""])[0] == "html" or "text/html" in accept


def admin_page(view: dict[str, Any]) -> bytes:
    """The admin JSON as a plain HTML page: tables, no script."""
    def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
        if not rows:
            return "<p>none</p>"
        head = "".join(f"<th>{html.escape(column)}</th>" for column in columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(row.get(column)))}</td>" for column in columns)
                       + "</tr>" for row in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    node = view["node"]
    rooms = [{"room": room_id, **room} for room_id, room in view["rooms"].items()]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Tickroom node ",
        html.escape(str(node["id"])), "</title><style>body{font-family:sans-serif;margin:1.5em}"
        "table{border-collapse:collapse;margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:.2em .6em;"
        "text-align:left}th{background:#eee}</style></head><body>",
        f"<h1>Node {html.escape(str(node['id']))}</h1>",
        table([node], ["id", "state", "uptime_s", "connections", "rooms", "accepting", "deadline_in_s"]),
        "<h2>Nodes</h2>", table(view["nodes"], ["id", "url", "load", "accepting", "state"]),
        "<h2>Rooms</h2>", table(rooms, ["room", "mode", "state", "players", "seats", "tick", "ticks_per_s",
                                        "lateness_ms", "duration_ms", "lobby"]),
        "<h2>Players</h2>", table(view["players"], ["player", "room", "pid", "name", "connected"]),
        "<h2>Ticks (all rooms)</h2>", table([view["totals"]], ["rooms", "lateness_ms", "duration_ms"]),
        "</body></html>",
    ]
    return "".join(parts).encode()


def _cell(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key} {item}" for key, item in value.items())
    return "" if value is None else str(value)
