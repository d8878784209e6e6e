"""Lobby building blocks: the node registry against a real Redis, and seat tickets."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from lobby.keys import LobbyKeys
from lobby.leaderboard import Leaderboard, Standing
from lobby.nodes import NodeInfo, NodeRegistry
from lobby.notices import NoticeBus
from lobby.tickets import Ticket, TicketError, mint_ticket, verify_ticket
from lobby.upkeep import STEADY_BEATS, LocalState, Upkeep
from server.net.auth import AuthError, mint_token, verify_token

SECRET = "a-test-secret-that-is-long-enough-for-hs256"


@pytest.fixture
async def registry(redis_url: str) -> AsyncIterator[NodeRegistry]:
    client = aioredis.Redis.from_url(redis_url)
    yield NodeRegistry(client, f"t{uuid.uuid4().hex[:8]}", dead_after_s=0.3)
    await client.aclose()


async def test_live_nodes_are_listed_least_loaded_first(registry: NodeRegistry) -> None:
    await registry.heartbeat("a", "ws://a:8000", 12, now_ms=1)
    await registry.heartbeat("b", "ws://b:8000", 3, now_ms=1)
    await registry.heartbeat("c", "ws://c:8000", 7, now_ms=1)
    assert [node.node_id for node in await registry.live_nodes()] == ["b", "c", "a"]
    assert await registry.least_loaded() == NodeInfo("b", "ws://b:8000", 3)
    await registry.heartbeat("b", "ws://b:8000", 20, now_ms=2)
    assert (await registry.least_loaded()) == NodeInfo("c", "ws://c:8000", 7)


async def test_a_node_that_stops_heartbeating_is_dead_within_its_ttl_until_forgotten(registry: NodeRegistry) -> None:
    await registry.heartbeat("quiet", "ws://q:8000", 0, now_ms=1)
    await registry.heartbeat("busy", "ws://b:8000", 50, now_ms=1)
    assert await registry.is_alive("quiet")
    for _ in range(6):  # "busy" keeps beating, "quiet" does not
        await asyncio.sleep(0.1)
        await registry.heartbeat("busy", "ws://b:8000", 50, now_ms=2)
    assert not await registry.is_alive("quiet")
    live, dead = await registry.survey()
    assert [node.node_id for node in live] == ["busy"] and dead == ["quiet"]
    await registry.forget("quiet")
    assert [m.decode() for m in await registry.client.zrange(registry.index, 0, -1)] == ["busy"]


async def test_a_deregistered_node_is_dead_at_once_and_left_for_a_sweep(registry: NodeRegistry) -> None:
    await registry.heartbeat("a", "ws://a:8000", 1, now_ms=1)
    await registry.deregister("a")
    assert await registry.live_nodes() == [] and await registry.least_loaded() is None
    assert await registry.survey() == ([], ["a"])


def test_a_ticket_is_accepted_for_its_player_and_room_only() -> None:
    ticket = Ticket("player-1", "room-9", "node-a")
    token = mint_ticket(SECRET, ticket)
    assert verify_ticket(SECRET, token, player_id="player-1", room_id="room-9") == ticket
    with pytest.raises(TicketError) as info:
        verify_ticket(SECRET, token, player_id="player-1", room_id="room-8")
    assert info.value.code == "ticket_wrong_room"
    with pytest.raises(TicketError) as info:
        verify_ticket(SECRET, token, player_id="player-2", room_id="room-9")
    assert info.value.code == "ticket_invalid"


def test_expired_forged_and_foreign_tickets_are_refused() -> None:
    ticket = Ticket("p", "r", "n")
    expired = mint_ticket(SECRET, ticket, ttl_s=30, now=1_000_000)
    with pytest.raises(TicketError) as info:
        verify_ticket(SECRET, expired, player_id="p", room_id="r")
    assert info.value.code == "ticket_expired"
    forged = mint_ticket("another-secret-that-is-long-enough-for-hs256", ticket)
    with pytest.raises(TicketError) as info:
        verify_ticket(SECRET, forged, player_id="p", room_id="r")
    assert info.value.code == "ticket_invalid"
    # A player's login token is not a ticket, and a ticket is not a login token.
    login = mint_token(SECRET, "ann", player_id="0b6f7a2e-4a39-4c47-a1a4-3b0e8d2b4c11")
    with pytest.raises(TicketError):
        verify_ticket(SECRET, login, player_id="0b6f7a2e-4a39-4c47-a1a4-3b0e8d2b4c11", room_id="r")
    with pytest.raises(AuthError):
        verify_token(SECRET, mint_ticket(SECRET, Ticket("0b6f7a2e-4a39-4c47-a1a4-3b0e8d2b4c11", "r", "n")))


@pytest.fixture
async def leaderboard(redis_url: str) -> AsyncIterator[Leaderboard]:
    client = aioredis.Redis.from_url(redis_url)
    yield Leaderboard(client, LobbyKeys(f"t{uuid.uuid4().hex[:8]}", "arena"))
    await client.aclose()


async def test_the_leaderboard_adds_points_ranks_best_first_and_shares_ranks_on_ties(
        leaderboard: Leaderboard) -> None:
    assert await leaderboard.top(10) == [] and await leaderboard.standing("ann") is None
    assert await leaderboard.add("ann", 100) == 100
    await leaderboard.add("bob", 240)
    await leaderboard.add("cy", 100)
    assert await leaderboard.add("ann", -10) == 90
    await leaderboard.add("ann", 10)
    assert await leaderboard.top(10) == [Standing(1, "bob", 240), Standing(2, "ann", 100), Standing(2, "cy", 100)]
    assert await leaderboard.top(1) == [Standing(1, "bob", 240)]
    assert await leaderboard.standing("cy") == Standing(2, "cy", 100)


async def test_the_leaderboard_can_be_replaced_whole(leaderboard: Leaderboard) -> None:
    await leaderboard.add("old", 5)
    await leaderboard.replace({"a": 3, "b": 7})
    assert [s.player_id for s in await leaderboard.top(10)] == ["b", "a"]
    await leaderboard.replace({})
    assert await leaderboard.top(10) == []


async def test_a_node_judges_a_silent_peer_gone_only_long_enough_after_an_outage(redis_url: str) -> None:
    """Upkeep takes a peer for a dead process when its notice listener left Redis and its heartbeat is late; but
    right after Redis came back, every peer may still be in its back-off, so none is judged until that passed."""
    client = aioredis.Redis.from_url(redis_url)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    registry = NodeRegistry(client, prefix, dead_after_s=10.0)
    bus = NoticeBus(client, prefix)
    listener = client.pubsub()
    await listener.subscribe(bus.channel("me"))  # this node's own listener is there; the peer's is not

    async def nothing(*_: object) -> None:
        return None

    upkeep = Upkeep("me", "ws://me", registry, {}, LocalState, lambda mode, outcome: None,
                    lambda coro, name: None, lambda what, write: None, lambda mode, rooms: None, lambda: 0,
                    heartbeat_s=0.1, presence_every_s=1.0, listeners=bus.listeners, adopt=nothing)
    try:
        await registry.heartbeat("peer", "ws://peer", 0, now_ms=1)
        await registry.heartbeat("me", "ws://me", 0, now_ms=1)
        await asyncio.sleep(0.3)  # the peer missed more than GONE_AFTER_BEATS heartbeats
        live, _ = await registry.survey()
        upkeep._steady = STEADY_BEATS
        assert [node.node_id for node in await upkeep._processes_gone(live)] == ["peer"]
        upkeep.redis_came_back()
        assert await upkeep._processes_gone(live) == []  # the peer may be waiting out its back-off
        upkeep._judge_after = 0.0  # as when the longest back-off and a heartbeat have passed
        assert [node.node_id for node in await upkeep._processes_gone(live)] == ["peer"]
    finally:
        await listener.aclose()
        await client.aclose()
