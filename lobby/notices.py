"""Cross-node notices over Redis pub/sub: one channel per node, plus the expiry events of rooms' shadow keys.

A notice only says "look again" (a room changed, a player to kick); the state in Redis is the truth, so a lost
notice costs the time until the next periodic read, never correctness. The listener reconnects by itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from lobby.keys import text
from lobby.outage import OUTAGE, Backoff, stop_if_cancelled

log = logging.getLogger("tickroom.lobby.notices")

Notice = dict[str, Any]



class NoticeBus:
    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.tally: Counter[str] | None = None  # Redis failures, for the node's metrics
        self.client = client
        self.prefix = prefix
        db = client.connection_pool.connection_kwargs.get("db", 0)
        self.expired_channel = f"__keyevent@{db}__:expired"

    def channel(self, node_id: str) -> str:
        return f"{self.prefix}:node:{node_id}:notices"

    async def publish(self, node_ids: Iterable[str], notice: Notice) -> None:
        nodes = list(node_ids)
        if not nodes:
            return
        payload = orjson.dumps(notice)
        async with self.client.pipeline(transaction=False) as pipe:
            for node_id in nodes:
                pipe.publish(self.channel(node_id), payload)
            await pipe.execute()

    async def listeners(self, node_ids: Iterable[str]) -> dict[str, int]:
        """How many connections listen on each node's channel: a node's own listener, whose connection the
        kernel closes the moment its process dies (so Redis drops the subscription at once)."""
        nodes = list(node_ids)
        if not nodes:
            return {}
        replies = await self.client.pubsub_numsub(*(self.channel(node_id) for node_id in nodes))
        counts = {text(channel): int(count) for channel, count in replies}
        return {node_id: counts.get(self.channel(node_id), 0) for node_id in nodes}

    async def enable_expiry_events(self) -> bool:
        """Make Redis publish key expiry events (`notify-keyspace-events` with E and x), keeping the flags
        already set. False when the server refuses CONFIG (a managed Redis): set it in its configuration."""
        try:
            current = text((await self.client.config_get("notify-keyspace-events")).get(
                "notify-keyspace-events", ""))
            wanted = "".join(sorted(set(current) | {"E", "x"}))
            if "A" in current or ("E" in current and "x" in current):
                return True
            await self.client.config_set("notify-keyspace-events", wanted)
            return True
        except ResponseError as error:
            log.warning("cannot enable Redis expiry events (%s): set notify-keyspace-events to include 'Ex' in "
                        "the Redis configuration, or expired rooms are only found by the node sweeps", error)
            return False

    async def listen(self, node_id: str, on_notice: Callable[[Notice], None], on_expired: Callable[[str], None],
                     on_subscribed: Callable[[], None] | None = None) -> None:
        """Deliver this node's notices and every expired key until cancelled, resubscribing after outages."""
        backoff = Backoff(tally=self.tally)
        channel = self.channel(node_id)
        while True:
            stop_if_cancelled()
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel, self.expired_channel)
                backoff.reset("notices")
                if on_subscribed is not None:
                    on_subscribed()
                while True:
                    stop_if_cancelled()
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    source = text(message["channel"])
                    if source == channel:
                        try:
                            notice = orjson.loads(message["data"])
                        except orjson.JSONDecodeError:
                            log.warning("ignoring a malformed notice on %s", channel)
                            continue
                        if isinstance(notice, dict):
                            on_notice(notice)
                    else:
                        on_expired(text(message["data"]))
            except Exception as error:  # outages, and anything unexpected: subscribe again
                await backoff.wait("notices", error)
            finally:
                try:
                    await asyncio.shield(pubsub.aclose())
                except OUTAGE:
                    pass
