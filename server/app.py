"""Wires a node together: the WebSocket server, its small HTTP endpoints, auth at the handshake, the rooms.

`App` is an async context manager so that tests run a real node in-process on a free port, and
`tickroom serve` runs the same thing until a signal arrives (in each of its workers, with `--workers N`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import uuid
from collections import Counter
from collections.abc import Mapping
from contextlib import AsyncExitStack
from functools import partial
from http import HTTPStatus
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from game.api import Forming
from lobby.hub import HubConfig, LobbyHub
from lobby.keys import LobbyKeys
from lobby.leaderboard import Leaderboard, LeaderboardFeed, rebuild_if_missing
from lobby.outage import OUTAGE, LobbyUnavailable, lobby_client, stop_if_cancelled
from lobby.seating import SeatingRules
from lobby.tickets import TicketError, verify_ticket
from persistence.migrate import schema_version
from persistence.recovery import ended_matches, room_ended
from persistence.snapshots import SnapshotStore
from persistence.writebehind import WriteBehind, spill_key
from server.cluster.drain import Drainer, DrainState
from server.cluster.lobby_session import LobbySession
from server.cluster.node import Node
from server.cluster.postgres_recovery import PostgresRecovery
from server.http import admin as admin_http
from server.http.lobby import LobbyEndpoints
from server.http.playground import Playground
from server.http.records import RecordEndpoints, is_records_path
from server.net.auth import NAME_MAX, AuthError, Identity, mint_token, verify_token
from server.net.broadcast import text_frame
from server.net.connection import GameConnection, JoinRequest
from server.net.listener import Listener, Timeouts
from server.net.protocol import (
    MAX_FRAME_BYTES,
    CloseCode,
    ErrorCode,
    ReconnectReason,
    handshake_error_body,
    reconnect_message,
)
from server.ops.logs import PLAYER
from server.ops.metrics import NodeCollector, NodeMetrics, Reading, registry_of, render
from server.ops.settings import Settings
from server.ops.workers import WorkerSlot
from server.rooms.catalog import DEFAULT_MODE, HostedGame
from server.rooms.session import PlayerSession
from server.rooms.snapshotter import Snapshotter

log = logging.getLogger("tickroom.app")

ROOM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# A refused handshake told over WebSocket (`refusal=close`) closes with this plus the HTTP status: 4401, 4403...
REFUSAL_CLOSE_BASE = 4000
DEV_TOKEN_TTL_S = 86_400  # POST /dev/token (development only): a day
# A browser's CORS preflight (OPTIONS) is told what a page of an allowed origin may send, for this long.
PREFLIGHT_HEADERS = [("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
                     ("Access-Control-Allow-Headers", "Authorization, Content-Type"),
                     ("Access-Control-Max-Age", "600")]


def json_response(status: HTTPStatus, body: bytes) -> Response:
    return body_response(status, body, "application/json")


def body_response(status: HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-store")])
    return Response(status.value, status.phrase, headers, body)


def refuse(status: HTTPStatus, code: ErrorCode, message: str) -> Response:
    return json_response(status, handshake_error_body(code, message))


def refuse_method(allowed: str, message: str) -> Response:
    response = refuse(HTTPStatus.METHOD_NOT_ALLOWED, ErrorCode.METHOD_NOT_ALLOWED, message)
    response.headers["Allow"] = allowed
    return response


def origin_allowed(origin: str, host: str | None, allowed: frozenset[str],
                   sibling_ports: frozenset[int] = frozenset()) -> bool:
    """May a page of `origin` use this node: listed, any (`*`), or the node's own pages (same host and port, or
    the same host and a port of its sibling workers: a page of the shared port follows `match_found` to a
    worker's own port)?"""
    origin = origin.strip().rstrip("/").lower()
    if "*" in allowed or origin in allowed:
        return True
    if not host or origin == "null":
        return False
    page = urlsplit(origin)
    if page.netloc == host.lower():
        return True
    try:
        return bool(sibling_ports) and page.port in sibling_ports and \
            page.hostname == urlsplit(f"//{host}").hostname
    except ValueError:  # a port that is not a number
        return False


def bearer_token(request: Request, query: dict[str, list[str]]) -> str | None:
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    tokens = query.get("token")
    return tokens[0] if tokens else None


def seating_rules(hosted: HostedGame, settings: Settings) -> SeatingRules:
    """How the lobby forms rooms of a game: its seats (and line), and a countdown only if it forms that way."""
    seats = hosted.seats
    forming = hosted.definition.forming
    countdown_ms = round(settings.countdown_s * 1000) if forming is Forming.COUNTDOWN else 0
    # A full-start game waits for its last seat: its rooms start at the maximum, never at a countdown.
    min_players = seats.max if forming is Forming.FULL else seats.min
    return SeatingRules(min_players=min_players, max_players=seats.capacity, countdown_ms=countdown_ms,
                        backfill=(settings.backfill and hosted.mode == DEFAULT_MODE) or seats.backfill,
                        join_running=seats.backfill,
                        player_ttl_s=settings.player_ttl_s,
                        room_ttl_s=settings.room_ttl_s)


class App:
    """A running node: `async with App(settings, modes) as app:` serves on `app.port` until the block ends."""

    def __init__(self, settings: Settings, modes: Mapping[str, HostedGame], *, persist: bool = False,
                 slot: WorkerSlot | None = None) -> None:
        """`persist`: record matches and positions in the settings' Postgres (`tickroom serve` does, after
        checking Postgres and migrating it); without it the node keeps no record (tests of other things).
        `slot`: this node is a worker of several (`tickroom serve --workers N`): it shares the settings' port
        with its siblings and listens on its own too, which its public URL names."""
        self.settings = settings
        self.slot = slot
        self.modes = dict(modes)
        # GET /modes: every game this node serves, with its seats, clock and message schemas (JSON Schema).
        self._modes_body = orjson.dumps({"modes": [self.modes[mode].describe() for mode in sorted(self.modes)]})
        self.persist = persist
        self.records: WriteBehind | None = None
        self._records_task: asyncio.Task[None] | None = None
        self._stack = AsyncExitStack()
        self._server: Listener | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self.node: Node | None = None
        self.hub: LobbyHub | None = None
        self._hub_task: asyncio.Task[None] | None = None
        self._lobby_http: LobbyEndpoints | None = None
        self._records_http: RecordEndpoints | None = None
        # /play: the browser playground (read from disk on each request in development, once in production).
        self._playground = Playground(reload=settings.environment == "development") if settings.playground else None
        self.leaderboard: LeaderboardFeed | None = None
        self._leaderboard_task: asyncio.Task[None] | None = None
        self.snapshotter: Snapshotter | None = None
        self._snapshot_task: asyncio.Task[None] | None = None
        self._load_task: asyncio.Task[None] | None = None
        self.recovery: PostgresRecovery | None = None
        self._recovery_task: asyncio.Task[None] | None = None
        self.metrics = NodeMetrics()
        self._reading = Reading({}, 0, 0, {}, 0, 0, 0, False)
        self._metrics_registry = registry_of([NodeCollector(settings.node_id, self.metrics, lambda: self._reading)])
        self.drainer: Drainer | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.port

    @property
    def url(self) -> str:
        return f"ws://{self.settings.host}:{self.port}"

    async def __aenter__(self) -> App:
        self._tasks = await self._stack.enter_async_context(asyncio.TaskGroup())
        self.metrics.gc_pauses.install()
        self._stack.callback(self.metrics.gc_pauses.remove)
        self.node = Node(self.settings, self.modes, self._tasks)
        self.node.metrics = self.metrics
        self._server = Listener(self._process_request, self._handle, max_size=MAX_FRAME_BYTES, timeouts=Timeouts(),
                                logger=logging.getLogger("tickroom.ws"), traffic=self.metrics.traffic)
        # Bursts of players arriving at once (a lobby wave, a node's players reconnecting) must not overflow
        # the kernel's accept queue: the default of 100 drops SYNs under 1,500 connections/s. The ports are only
        # bound until the lobby and the drain are wired (a worker's siblings take the shared port's connections).
        await self._server.start(self.settings.host, self.settings.port, backlog=1024,
                                 reuse_port=self.slot is not None, serving=False)
        if self.slot is not None:
            await self._server.start(self.settings.host, self.slot.own_port, backlog=1024, serving=False)
        self._start_lobby()
        hub = self.hub
        assert hub is not None
        hub.count_errors(self.metrics.backend_errors)
        self.drainer = Drainer(self.node, hub, self.snapshotter,
                               lambda: [waiter.link for waiter in hub.waiters.values()
                                        if isinstance(waiter, LobbySession)],
                               self._tasks.create_task)
        hub.upkeep.on_drain = self._drain_requested
        hub.upkeep.accepting_now = lambda: self.node is not None and self.node.takes_rooms
        hub.upkeep.placed_here = self.node.room_placed
        self.node.on_load_change = hub.upkeep.beat_soon  # the lobby hears at once that the node is full, or not
        self._load_task = self._tasks.create_task(self.node.watch_load(), name="load-gauge")
        await self._server.serve()  # listening before the hub's first heartbeat sends anyone here
        log.info("node %s listening on %s (players are sent to %s)", self.settings.node_id, self.url,
                 self.public_url)
        return self

    def _drain_requested(self, deadline_s: float) -> None:
        assert self.drainer is not None
        if self.drainer.start(deadline_s):
            log.warning("an operator asked this node to drain (deadline %g s)", deadline_s)

    @property
    def own_port(self) -> int:
        """The port that reaches this node and no other: a worker's own, else the one port it listens on."""
        assert self._server is not None
        return self._server.ports[-1]

    @property
    def public_url(self) -> str:
        # The settings' rule, with the port actually bound (port 0 asks the kernel for a free one).
        return dataclasses.replace(self.settings, port=self.own_port).advertised_url

    def _start_lobby(self) -> None:
        settings = self.settings
        assert self._tasks is not None and self.node is not None
        client = lobby_client(settings.redis_url)
        self._stack.push_async_callback(client.aclose)
        rules = {mode: seating_rules(hosted, settings) for mode, hosted in self.modes.items()}
        config = HubConfig(node_id=settings.node_id, url=self.public_url, prefix=settings.lobby_prefix,
                           secret=settings.jwt_secret, rules=rules,
                           ticket_ttl_s=settings.ticket_ttl_s, lobby_grace_s=settings.lobby_grace_s,
                           stale_probe_s=settings.stale_probe_s,
                           heartbeat_s=settings.node_heartbeat_s,
                           dead_after_s=settings.node_dead_after_s)
        self.hub = LobbyHub(client, config, self.node.lobby_state, evict=self.node.evict_lobby_rooms,
                            adopt=self.node.adopt_rooms, hosted=self.node.hosted_matches)
        snapshots = self.node.snapshots = SnapshotStore(client, settings.lobby_prefix, settings.snapshot_ttl_s)
        self.node.lobby = self.hub
        self._lobby_http = LobbyEndpoints(self.hub)
        self._hub_task = self._tasks.create_task(self.hub.run(), name="lobby-hub")
        node = self.node
        if self.persist:
            # One spill per node, emptied by its worker; a node that starts again under the same id empties what
            # it left there, and the nodes that sweep a dead one take over its spill.
            spill = spill_key(settings.lobby_prefix, settings.node_id)
            self.records = WriteBehind(settings.database_url, client, spill)
            self.records.tally = self.metrics.backend_errors
            self._stack.push_async_callback(self.records.close)
            node.recorder = self.records.submit
            self._records_task = self._tasks.create_task(self.records.run(), name="postgres-writes")
            prefix = settings.lobby_prefix
            self._records_http = RecordEndpoints(settings.database_url,
                                                 lambda mode: Leaderboard(client, LobbyKeys(prefix, mode)),
                                                 sorted(self.modes))
            self._stack.push_async_callback(self._records_http.close)
            self.leaderboard = LeaderboardFeed(client, prefix)
            node.scorer = self.leaderboard.add
            node.told = self.leaderboard.told
            self._leaderboard_task = self._tasks.create_task(self._run_leaderboard(), name="leaderboard")
            self.recovery = PostgresRecovery(settings, self.hub, self._records_http.with_conn, self.records.submit,
                                             node.restore_room, node.told, lambda: node.rooms.keys(), self.modes,
                                             accepting=lambda: node.accepting)
            node.stored_rooms = self.recovery.documents
            records_http = self._records_http
            node.ended_matches = lambda ids: records_http.with_conn(lambda conn: ended_matches(conn, ids))
            self.hub.room_ended = lambda room: records_http.with_conn(lambda conn: room_ended(conn, room))
            self.records.committed = self._results_in_postgres
            self._recovery_task = self._tasks.create_task(self.recovery.run(), name="recovery")
            self.hub.upkeep.on_swept = self._take_over_writes
        self.snapshotter = Snapshotter(lambda: node.rooms.values(), snapshots, settings.snapshot_every_s,
                                       on_slot=self.metrics.snapshot_round.observe)
        self._snapshot_task = self._tasks.create_task(self.snapshotter.run(), name="snapshots")
        node.drop_snapshot = self.snapshotter.forget

    def _results_in_postgres(self, writes: list[dict[str, Any]]) -> None:
        """Committed writes: for each match result (or cancellation) among them, Postgres now says the match is
        over, and what guarded it in Redis goes: what the leaderboard was told of it, its `over` mark and claim."""
        for write in writes:
            if write.get("op") != "match_result":
                continue
            mode, room_id, match_id = str(write["mode"]), str(write["room"]), str(write["match"])
            if self.leaderboard is not None:
                self.leaderboard.forget(mode, match_id)
            if self.node is not None:
                self.node.result_in_postgres(mode, room_id, match_id)

    async def _take_over_writes(self, dead: str) -> None:
        """What a node that is gone had spilled to Redis and not yet written to Postgres, this node writes."""
        if self.records is not None:
            await self.records.take_over(spill_key(self.settings.lobby_prefix, dead))

    async def _run_leaderboard(self) -> None:
        """Rebuild each mode's leaderboard from Postgres if Redis has none, then feed it as kills happen."""
        assert self.leaderboard is not None and self._records_http is not None
        records = self._records_http
        for mode in sorted(self.modes):
            keys = LobbyKeys(self.settings.lobby_prefix, mode)
            try:
                rebuilt = await rebuild_if_missing(self.leaderboard.client, keys, partial(records.totals, mode))
            except Exception as error:  # Redis or Postgres down: the feed goes on, the next start rebuilds
                stop_if_cancelled()
                log.warning("could not check the %s leaderboard at start: %r", mode, error)
                continue
            if rebuilt:
                log.info("rebuilt the %s leaderboard from Postgres", mode)
        records.leaderboards_checked.set()
        await self.leaderboard.run()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.shutdown()
        await self._stack.__aexit__(exc_type, exc, tb)

    async def shutdown(self) -> None:
        if self._recovery_task is not None:
            self._recovery_task.cancel()  # no match is claimed by a node on its way out
        if self.drainer is not None:
            self.drainer.stop()  # a drain under way would hold the node's tasks until its deadline
        if self.node is not None:
            self.node.accepting = False
        if self._server is not None:
            told = self._server.broadcast(text_frame(reconnect_message(ReconnectReason.SHUTDOWN)))
            log.info("shutting down: told %d clients to reconnect", told)
        if self.snapshotter is not None:
            # Before deregistering: the node that the sweep gives the running matches to restores these.
            saved = await self.snapshotter.save_all(timeout=2.0)
            log.info("shutting down: snapshots of %d running rooms written", saved)
        if self.hub is not None:
            await self.hub.deregister()
        if self._server is not None:
            self._server.close(CloseCode.GOING_AWAY, "server shutting down")
            await self._server.wait_closed()
            self._server = None
        if self.node is not None:
            self.node.stop_rooms()
        if self.hub is not None:
            # What the rooms and sessions told the lobby while closing (finish, leave) is written before the
            # hub stops, as far as Redis answers within the bound.
            await self.hub.writes.drain(timeout=2.0)
        if self.records is not None:
            # Results of matches that ended are written before the node goes (or wait in the Redis spill).
            if not await self.records.drain(timeout=5.0):
                log.warning("%d Postgres writes were not written before shutdown", self.records.depth)
        if self._records_task is not None:
            self._records_task.cancel()
        if self._hub_task is not None:
            self._hub_task.cancel()
        if self._snapshot_task is not None:
            self._snapshot_task.cancel()
        if self._load_task is not None:
            self._load_task.cancel()
        if self._leaderboard_task is not None:
            self._leaderboard_task.cancel()

    # -- the operator's endpoints (server/http/admin.py) ------------------------------------------------

    async def _operator(self, path: str, query: dict[str, list[str]], request: Request) -> admin_http.Answer:
        assert self.node is not None and self.drainer is not None
        draining = self.drainer.state is not DrainState.SERVING
        if path == "/readyz":
            hub, records = self.hub, self._records_http
            ping = hub.client.ping if hub is not None else None
            schema = (partial(records.with_conn, schema_version) if records is not None else None)
            return await admin_http.readiness(ping, schema, draining)
        if path == "/metrics":
            self._reading = await self._read_now()
            return HTTPStatus.OK, render(self._metrics_registry), CONTENT_TYPE_LATEST
        token = self.settings.admin_token
        if not admin_http.authorized(token, request):
            return admin_http.refused(token)
        if path.rstrip("/") == "/admin/drain":
            deadline = admin_http.drain_request(query, self.settings.node_id, self.settings.drain_deadline_s)
            if not isinstance(deadline, float):
                return deadline
            self._drain_requested(deadline)
            return HTTPStatus.OK, orjson.dumps(self.drainer.describe()), admin_http.JSON
        if path.rstrip("/") != "/admin":
            return HTTPStatus.NOT_FOUND, handshake_error_body(ErrorCode.NOT_FOUND, f"no endpoint at {path}"), \
                admin_http.JSON
        view = await self._admin_view()
        if admin_http.wants_html(request, query):
            return HTTPStatus.OK, admin_http.admin_page(view), "text/html; charset=utf-8"
        return HTTPStatus.OK, orjson.dumps(view), admin_http.JSON

    async def _admin_view(self) -> dict[str, Any]:
        """The nodes of the deployment (as of the last heartbeat), this node's rooms with their tick figures,
        and its players."""
        assert self.node is not None and self.drainer is not None
        node = self.node
        stats = orjson.loads(await node.stats())
        players = [{"player": seat.player_id, "room": room.room_id, "pid": seat.pid, "name": seat.name,
                    "connected": seat.conn is not None}
                   for room in list(node.rooms.values()) for seat in room.seats()]
        live = self.hub.upkeep.live if self.hub is not None else []
        return {"node": {"id": self.settings.node_id, **self.drainer.describe(), "uptime_s": stats["uptime_s"],
                         "connections": node.connections, "accepting": node.takes_rooms,
                         "url": self.public_url},
                "nodes": [{"id": info.node_id, "url": info.url, "load": info.load, "accepting": info.accepting,
                           "state": info.state} for info in live],
                "rooms": stats["rooms"], "players": players, "totals": stats["totals"]}

    async def _read_now(self) -> Reading:
        assert self.node is not None and self.drainer is not None
        node, hub, records = self.node, self.hub, self.records
        queue: dict[str, int] = {}
        if hub is not None:
            try:
                async with asyncio.timeout(1.0):
                    for mode, seating in hub.seatings.items():
                        queue[mode] = await seating.queue_length()
            except Exception:  # Redis down: the scrape answers without the queue lengths
                stop_if_cancelled()
                queue = {}
        rooms = list(node.rooms.values())
        return Reading(rooms_by_state=dict(Counter(room.phase.value for room in rooms)),
                       players_connected=node.connections,
                       lobby_waiting=len(hub.waiters) if hub is not None else 0, lobby_queue=queue,
                       write_queue_depth=records.depth if records is not None else 0,
                       write_retries=records.retries if records is not None else 0,
                       writes=records.written if records is not None else 0,
                       draining=self.drainer.state is not DrainState.SERVING,
                       accepting=node.takes_rooms, cpu_share=node.load.cpu,
                       live_messages_out=sum(room.stats.sent_messages for room in rooms),
                       live_bytes_out=sum(room.stats.sent_bytes for room in rooms))

    # -- handshake ---------------------------------------------------------------------------------

    async def _process_request(self, connection: GameConnection, request: Request) -> Response | None:
        origin = request.headers.get("Origin")
        siblings = self.slot.sibling_ports if self.slot is not None else frozenset()
        if origin is not None and not origin_allowed(origin, request.headers.get("Host"), self.settings.origins,
                                                     siblings):
            if urlsplit(request.path).path in ("/game", "/lobby"):
                # A page of another site may not use a player's token here (cross-site WebSocket hijacking).
                response: Response | None = refuse(HTTPStatus.FORBIDDEN, ErrorCode.ORIGIN_NOT_ALLOWED,
                                                   f"pages of {origin[:100]} may not connect to this node")
                self.metrics.traffic.errors[ErrorCode.ORIGIN_NOT_ALLOWED.value] += 1
                return self._as_close_if_asked(connection, request, response)
            origin = None  # answered as to anyone, without CORS headers: the browser keeps it from the page
        response = await self._answer(connection, request)
        response = self._as_close_if_asked(connection, request, response)
        if connection.refusal is not None:
            self.metrics.traffic.errors[connection.refusal[1]] += 1
        if response is not None and origin is not None:
            allow = "*" if "*" in self.settings.origins else origin
            response.headers["Access-Control-Allow-Origin"] = allow
            response.headers["Vary"] = "Origin"
        operator = request.path.startswith(("/readyz", "/admin", "/metrics"))  # probes are not client errors
        if response is not None and response.status_code >= 400 and not operator:
            try:  # every refusal is counted by its code (the body is small: {"error": CODE, "message": ...})
                self.metrics.traffic.errors[str(orjson.loads(response.body)["error"])] += 1
            except (ValueError, KeyError, TypeError):
                self.metrics.traffic.errors["http_" + str(response.status_code)] += 1
        return response

    async def _answer(self, connection: GameConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        query = parse_qs(url.query)
        assert self.node is not None
        if connection.method != "GET":
            return self._not_a_get(connection, url.path, query)
        if url.path == "/healthz":
            return json_response(HTTPStatus.OK, b'{"status":"ok"}')
        if url.path == "/stats":
            return json_response(HTTPStatus.OK, await self.node.stats())
        if url.path.rstrip("/") == "/modes":
            return json_response(HTTPStatus.OK, self._modes_body)
        if url.path == "/dev/token":
            return refuse_method("POST", "POST /dev/token mints a token (a GET never does)")
        if self._playground is not None and (url.path == "/" or url.path.startswith("/play")):
            played = self._playground.answer("/play" if url.path == "/" else url.path)
            if played is not None:
                return played
        if url.path in ("/readyz", "/metrics") or url.path.startswith("/admin"):
            status, body, content_type = await self._operator(url.path, query, request)
            return body_response(status, body, content_type)
        if url.path.startswith("/lobby/rooms") and self._lobby_http is not None:
            status, body = await self._lobby_http.answer(url.path, query)
            return json_response(status, body)
        if is_records_path(url.path):
            if self._records_http is None:
                return refuse(HTTPStatus.NOT_FOUND, ErrorCode.NOT_FOUND, "this node keeps no match records")
            status, body = await self._records_http.answer(url.path, query)
            return json_response(status, body)
        if url.path not in ("/game", "/lobby"):
            return refuse(HTTPStatus.NOT_FOUND, ErrorCode.NOT_FOUND, f"no endpoint at {url.path}")
        token = bearer_token(request, query)
        if token is None:
            return refuse(HTTPStatus.UNAUTHORIZED, ErrorCode.TOKEN_MISSING,
                          "send the token as 'Authorization: Bearer TOKEN' or '?token=TOKEN'")
        try:
            identity = verify_token(self.settings.jwt_secret, token)
        except AuthError as error:
            return refuse(HTTPStatus.UNAUTHORIZED, ErrorCode(error.code), error.message)
        PLAYER.set(identity.player_id)  # this connection's log lines name its player from here on
        if url.path == "/lobby":
            assert self.drainer is not None
            if self.drainer.state is not DrainState.SERVING:
                # The load balancer in front (docs/operations.md) passes a 503 on to another node.
                return refuse(HTTPStatus.SERVICE_UNAVAILABLE, ErrorCode.NODE_DRAINING,
                              "this node is being taken out of service; join through another node")
            connection.identity = identity
            return None
        if query.get("spectate") == ["1"]:
            return self._spectator(connection, identity, query)
        tickets = query.get("ticket")
        if tickets:
            return await self._ticketed_join(connection, identity, query, tickets[0])
        if not self.settings.direct_join:
            return refuse(HTTPStatus.UNAUTHORIZED, ErrorCode.TICKET_MISSING,
                          "/game needs the seat ticket that the lobby's match_found gives (?ticket=TICKET)")
        rooms = query.get("room")
        if not rooms:
            return refuse(HTTPStatus.BAD_REQUEST, ErrorCode.ROOM_REQUIRED, "/game needs ?room=ROOM_ID")
        room_id = rooms[0]
        if ROOM_ID.fullmatch(room_id) is None:
            return refuse(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_ROOM_ID,
                          "a room id is 1 to 64 characters of A-Z a-z 0-9 _ -")
        mode = query.get("mode", ["arena"])[0]
        if mode not in self.modes:
            return refuse(HTTPStatus.BAD_REQUEST, ErrorCode.UNKNOWN_MODE,
                          f"unknown mode {mode[:40]!r}; this node has {sorted(self.modes)}")
        connection.join_request = JoinRequest(identity, room_id, mode)
        return None

    def _spectator(self, connection: GameConnection, identity: Identity,
                   query: dict[str, list[str]]) -> Response | None:
        """A spectator of a room this node hosts: any player may watch (no ticket), and sends nothing."""
        assert self.node is not None
        room_id = query.get("room", [""])[0]
        room = self.node.rooms.get(room_id)
        if room is None:
            return refuse(HTTPStatus.NOT_FOUND, ErrorCode.ROOM_NOT_FOUND,
                          f"this node hosts no room {room_id[:64]!r}: GET /lobby/rooms names each room's node")
        connection.join_request = JoinRequest(identity, room_id, room.mode, spectator=True)
        return None

    async def _ticketed_join(self, connection: GameConnection, identity: Identity, query: dict[str, list[str]],
                             ticket: str) -> Response | None:
        """A lobby match: the ticket must be this player's, for this room, hosted here, and the lobby must
        still seat the player in it (a room this node already runs with the player in it needs no Redis)."""
        assert self.node is not None and self.hub is not None
        room_id = query.get("room", [""])[0]
        try:
            seat = verify_ticket(self.settings.jwt_secret, ticket, player_id=identity.player_id, room_id=room_id)
        except TicketError as error:
            status = HTTPStatus.FORBIDDEN if error.code == "ticket_wrong_room" else HTTPStatus.UNAUTHORIZED
            return refuse(status, ErrorCode(error.code), error.message)
        if seat.mode not in self.modes:
            return refuse(HTTPStatus.BAD_REQUEST, ErrorCode.UNKNOWN_MODE, f"this node has no mode {seat.mode!r}")
        room = self.node.rooms.get(room_id)
        if room is not None and room.roster is not None and identity.player_id in room.roster:
            connection.join_request = JoinRequest(identity, room_id, seat.mode, frozenset(room.roster))
            return None
        try:
            record = await self.hub.room(seat.mode, room_id)
        except LobbyUnavailable:
            return refuse(HTTPStatus.SERVICE_UNAVAILABLE, ErrorCode.LOBBY_UNAVAILABLE,
                          "matchmaking is unavailable right now; try again in a few seconds")
        if record is None:
            return refuse(HTTPStatus.NOT_FOUND, ErrorCode.ROOM_NOT_FOUND,
                          f"room {room_id} no longer exists; join through the lobby again")
        if record.node != self.settings.node_id:
            where = self.hub.node_url(record.node)
            return refuse(HTTPStatus.MISDIRECTED_REQUEST, ErrorCode.WRONG_NODE,
                          f"room {room_id} is hosted by node {record.node}" + (f" at {where}" if where else ""))
        if identity.player_id not in record.player_ids:
            return refuse(HTTPStatus.FORBIDDEN, ErrorCode.NOT_IN_ROOM,
                          f"you hold no seat in room {room_id} any more; join through the lobby again")
        try:
            adopting = record.state == "running" and await self.hub.adoption_pending(seat.mode, room_id)
        except LobbyUnavailable:
            return refuse(HTTPStatus.SERVICE_UNAVAILABLE, ErrorCode.LOBBY_UNAVAILABLE,
                          "matchmaking is unavailable right now; try again in a few seconds")
        if adopting:
            # A match this node was given to restore (its host died), and this player is back before the next
            # heartbeat would have restored it: restore it now, rather than open an empty room of that id.
            try:
                await self.node.adopt_rooms(seat.mode, [room_id])
            except OUTAGE:
                return refuse(HTTPStatus.SERVICE_UNAVAILABLE, ErrorCode.LOBBY_UNAVAILABLE,
                              "matchmaking is unavailable right now; try again in a few seconds")
            room = self.node.rooms.get(room_id)
            if room is None:
                return refuse(HTTPStatus.NOT_FOUND, ErrorCode.ROOM_NOT_FOUND,
                              f"room {room_id} could not be restored; join through the lobby again")
        connection.join_request = JoinRequest(identity, room_id, seat.mode, frozenset(record.player_ids))
        return None

    def _not_a_get(self, connection: GameConnection, path: str, query: dict[str, list[str]]) -> Response:
        """A request other than a GET: a CORS preflight, `POST /dev/token`, or a 405."""
        if connection.method == "OPTIONS":
            # The CORS headers proper (Access-Control-Allow-Origin) are added for allowed origins only.
            headers = Headers([("Content-Length", "0"), ("Allow", "GET, POST, OPTIONS"), *PREFLIGHT_HEADERS])
            return Response(HTTPStatus.NO_CONTENT.value, HTTPStatus.NO_CONTENT.phrase, headers, b"")
        if path == "/dev/token" and connection.method == "POST":
            return self._dev_token(connection.body, query)
        if path == "/dev/token":
            return refuse_method("POST", f"/dev/token takes POST, not {connection.method}")
        return refuse_method("GET", f"{path[:100]} takes GET, not {connection.method}")

    def _dev_token(self, body: bytes, query: dict[str, list[str]]) -> Response:
        """Development only: a player token for `name` (a fresh player id each time), so that a page (the
        playground) needs no CLI step. The name comes as JSON (`{"name": "ann"}`) or in the query (`?name=ann`)."""
        if self.settings.environment != "development":
            return refuse(HTTPStatus.NOT_FOUND, ErrorCode.NOT_FOUND, "no endpoint at /dev/token outside development")
        name = query.get("name", [""])[0]
        if body.strip():
            try:
                fields = orjson.loads(body)
            except orjson.JSONDecodeError:
                return refuse(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_JSON, 'the body must be JSON: {"name": "ann"}')
            if not isinstance(fields, dict) or not isinstance(fields.get("name"), str):
                return refuse(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST, 'the body must be {"name": "NAME"}')
            name = fields["name"]
        name = name.strip()
        if not 1 <= len(name) <= NAME_MAX or not name.isprintable():
            return refuse(HTTPStatus.BAD_REQUEST, ErrorCode.BAD_REQUEST,
                          f"name must be 1 to {NAME_MAX} printable characters")
        player_id = str(uuid.uuid4())
        token = mint_token(self.settings.jwt_secret, name, player_id=player_id, ttl_s=DEV_TOKEN_TTL_S)
        return json_response(HTTPStatus.OK, orjson.dumps({"token": token, "player_id": player_id, "name": name,
                                                          "expires_in_s": DEV_TOKEN_TTL_S}))

    @staticmethod
    def _as_close_if_asked(connection: GameConnection, request: Request, response: Response | None) -> Response | None:
        """A refusal of /lobby or /game that the client asked to get over WebSocket (`?refusal=close`: a browser
        never sees an HTTP refusal's status or body): accept the upgrade, then send the `error` and close with
        4000 + the HTTP status, the error code as the reason. Other clients keep the HTTP refusal."""
        if response is None or response.status_code < 400:
            return response
        url = urlsplit(request.path)
        if url.path not in ("/game", "/lobby") or parse_qs(url.query).get("refusal") != ["close"]:
            return response
        try:
            body = orjson.loads(response.body)
            code, message = str(body["error"]), str(body["message"])
        except (ValueError, KeyError, TypeError):
            return response
        frame = orjson.dumps({"type": "error", "code": code, "message": message})
        connection.refusal = (REFUSAL_CLOSE_BASE + response.status_code, code, frame)
        return None

    async def _handle(self, ws: GameConnection) -> None:
        assert self.node is not None
        if ws.refusal is not None:
            close_code, code, frame = ws.refusal
            ws.close(close_code, code, last=text_frame(frame))
            await ws.wait_closed()
            return
        if ws.join_request is None:
            assert ws.identity is not None and self.hub is not None
            await LobbySession(self.hub, ws, ws.identity, self.settings, logging.getLogger("tickroom.lobby.session"),
                               self.node.clock, on_matched=self.metrics.lobby_wait.observe).run()
            return
        await PlayerSession(self.node, ws, ws.join_request, logging.getLogger("tickroom.session")).run()
