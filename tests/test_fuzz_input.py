"""Seeded random input, well-formed and not, never crashes a handler or holds up another room."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from server.net.protocol import ErrorCode
from tests.serverkit import join_game, start_app

TYPES = ["input", "fire", "chat", "leave", "ping", "hello", "", "INPUT", "x" * 50]
FIELDS = ["seq", "dx", "dy", "angle", "text", "t", "v", "type"]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 2 else 6)
    if kind == 0:
        return rng.randint(-2**63, 2**63 - 1)
    if kind == 1:
        return rng.choice([0, 1, -1, 2**53, 2**53 - 1, -0.0, 1e308, -1e308, 0.5, 6.3, 1.0000001])
    if kind == 2:
        return rng.uniform(-10, 10)
    if kind == 3:
        return "".join(chr(rng.randrange(0x20, 0x2FF)) for _ in range(rng.randrange(0, 260)))
    if kind == 4:
        return rng.choice([True, False, None])
    if kind == 5:
        return rng.choice(TYPES)
    if kind == 6:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(FIELDS): random_value(rng, depth + 1) for _ in range(rng.randrange(5))}


def random_message(rng: random.Random) -> str | bytes:
    roll = rng.random()
    if roll < 0.1:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80)))  # binary garbage
    if roll < 0.2:
        return orjson.dumps(random_value(rng)).decode()[: rng.randrange(1, 200)]  # truncated JSON
    message = {field: random_value(rng) for field in rng.sample(FIELDS, rng.randrange(len(FIELDS)))}
    message["type"] = rng.choice(TYPES[:6]) if rng.random() < 0.8 else random_value(rng)
    return orjson.dumps(message).decode()


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_messages_get_documented_errors_and_never_break_the_node(
        seed: int, caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(seed)
    app = await start_app(rate_per_s=10000.0, rate_burst=10000)
    codes = {code.value for code in ErrorCode}
    try:
        bystander, _ = await join_game(app, f"calm-{seed}", max_queue=None)
        fuzzer, _ = await join_game(app, f"fuzz-{seed}", max_queue=None)
        seen: set[str] = set()
        for _ in range(400):
            message = random_message(rng)
            if '"leave"' in str(message):
                continue  # a valid leave ends the session; that is not what this test is about
            try:
                await fuzzer.send(message)
            except ConnectionClosed:
                break
        await fuzzer.send('{"type":"ping","t":7}')
        while True:
            reply = orjson.loads(await asyncio.wait_for(fuzzer.recv(), 5))
            if reply["type"] == "error":
                assert reply["code"] in codes
                seen.add(reply["code"])
            if reply["type"] == "pong" and reply["t"] == 7:
                break
        assert seen, "random input produced no errors at all"
        assert "internal_error" not in seen
        # The other room kept ticking.
        first = orjson.loads(await bystander.recv())
        while first["type"] != "state":
            first = orjson.loads(await bystander.recv())
        await asyncio.sleep(0.5)
        assert app.node is not None and app.node.rooms[f"calm-{seed}"].tick_no >= first["tick"] + 25
        failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert failures == []
        await fuzzer.close()
        await bystander.close()
    finally:
        await app.__aexit__(None, None, None)
