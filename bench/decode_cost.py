"""What decoding and validating one client message costs: the host's msgspec decoders against orjson alone.

    .venv/bin/python -m bench.decode_cost [--number 200000]

Prints microseconds per message (median of 5 runs) for the arena's `input` and `fire`, a dice `roll`, a relay
`send` and a refused message; the figure for the previous decoder (orjson plus checks written by hand, before
issue 13) is in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import timeit
from collections.abc import Callable

import orjson

from bench.tick_capacity import machine
from server.net.protocol import ProtocolError
from server.ops.settings import Settings
from server.rooms.catalog import host_games

MESSAGES = {
    "arena input": ("arena", b'{"type":"input","seq":123,"dx":0.6,"dy":-0.8}'),
    "arena fire": ("arena", b'{"type":"fire","seq":124,"angle":1.5708}'),
    "dice roll": ("dice", b'{"type":"roll"}'),
    "relay send": ("relay", b'{"type":"send","payload":{"n":12,"text":"hello there"},"to":3}'),
    "refused (out_of_range)": ("arena", b'{"type":"input","seq":1,"dx":3,"dy":0}'),
}


def per_message_us(call: object, number: int) -> float:
    assert callable(call)
    return statistics.median(timeit.repeat(call, number=number, repeat=5)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--number", type=int, default=200_000)
    args = parser.parse_args()
    games = host_games(Settings())
    print(f"machine: {machine()}")
    print("| message | msgspec decode and validate, µs | orjson.loads alone, µs |")
    print("|---|---|---|")
    for name, (mode, raw) in MESSAGES.items():
        decode = games[mode].decoder.decode

        def decoded(decode: Callable[[bytes], object] = decode, raw: bytes = raw) -> None:
            try:
                decode(raw)
            except ProtocolError:
                pass

        print(f"| {name} | {per_message_us(decoded, args.number):.3f} | "
              f"{per_message_us(lambda raw=raw: orjson.loads(raw), args.number):.3f} |")


if __name__ == "__main__":
    main()
