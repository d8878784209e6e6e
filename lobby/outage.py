"""Living with a Redis that comes and goes: which errors mean "unreachable", a client that retries briefly,
and the back-off that background loops wait on, logging an outage once rather than on every retry."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MasterDownError, OutOfMemoryError, ReadOnlyError, TryAgainError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("tickroom.lobby")

# Redis cannot serve us now (down, restarting, loading, failing over to a replica, out of memory, or the network
# is down): try again later. Anything else that Redis answers (a script error, a wrong type) is a bug and is
# raised as it is; background loops log it and carry on rather than take the node down.
OUTAGE: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OutOfMemoryError,
                                           MasterDownError, TryAgainError, OSError)

BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0


class LobbyUnavailable(Exception):
    """Redis cannot be reached: the lobby call did nothing and may be tried again."""


def lobby_client(url: str, *, max_connections: int = 64) -> aioredis.Redis:
    """A client for the lobby: short timeouts, a few quick retries on a dropped connection, and a bounded
    pool that makes bursts of calls wait for a connection instead of opening hundreds."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=5, socket_timeout=3, socket_connect_timeout=2,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError])
    return aioredis.Redis(connection_pool=pool)


def stop_if_cancelled() -> None:
    """Raise CancelledError if the current task is being cancelled. redis-py may swallow a cancellation
    that hits it mid-call, or turn it into a connection error; every background loop calls this on each
    round so that shutdown always ends it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Backoff:
    """Exponential back-off with jitter for one background loop; says when an outage starts and ends."""

    def __init__(self, low: float = BACKOFF_MIN_S, high: float = BACKOFF_MAX_S,
                 rng: random.Random | None = None, tally: Counter[str] | None = None) -> None:
        self.low = low
        self._tally = tally  # counts each failure under "redis" (the node's metrics)
        self.high = high
        self.delay = low
        self.failing = False
        self._rng = rng or random.Random()

    async def wait(self, what: str, error: BaseException) -> None:
        """Sleep before the next try; a task being cancelled stops here instead."""
        stop_if_cancelled()
        if self._tally is not None:
            self._tally["redis"] += 1
        if not isinstance(error, OUTAGE):
            log.error("%s failed: %r; retrying with back-off", what, error, exc_info=error)
        elif not self.failing:
            log.warning("Redis unreachable (%s: %s); %s retries with back-off", type(error).__name__, error, what)
            self.failing = True
        await asyncio.sleep(self.delay * self._rng.uniform(0.5, 1.0))
        self.delay = min(self.high, self.delay * 2)

    def reset(self, what: str) -> None:
        if self.failing:
            log.info("Redis reachable again; %s resumed", what)
        self.failing = False
        self.delay = self.low
