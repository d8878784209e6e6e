"""Server CPU per client message: what handling one `input` costs a node, kernel included.

Starts a node pinned to core 0, opens CONNECTIONS players (one room each) from this process on core 1,
measures the node's idle CPU (rooms ticking, nobody sending), then sends MESSAGES inputs and reports the
extra CPU per message. `--repo` runs the node from another checkout (for before/after comparisons).

    .venv/bin/python -m bench.receive_cost [--connections 20] [--messages 200000] [--repo PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
from websockets.asyncio.client import ClientConnection, connect

from bench.tick_capacity import data_services, free_port, machine, wait_ready
from server.net.auth import mint_token
from server.ops.settings import DEV_SECRET

ROOT = Path(__file__).resolve().parent.parent


async def drive(port: int, server_pid: int, connections: int, messages: int) -> None:
    clients: list[ClientConnection] = []
    for i in range(connections):
        token = mint_token(DEV_SECRET, f"cost{i}", player_id=str(uuid.uuid4()))
        ws = await connect(f"ws://127.0.0.1:{port}/game?room=cost-{i}", compression=None,
                           additional_headers={"Authorization": f"Bearer {token}"})
        await ws.send('{"type":"hello","v":1}')
        clients.append(ws)
    readers = [asyncio.create_task(drain(ws)) for ws in clients]
    server = psutil.Process(server_pid)

    def cpu() -> float:
        times = server.cpu_times()
        return float(times.user + times.system)

    await asyncio.sleep(2.0)
    c0, t0 = cpu(), time.monotonic()
    await asyncio.sleep(3.0)
    idle = (cpu() - c0) / (time.monotonic() - t0)
    c0, t0 = cpu(), time.monotonic()
    seq = 0
    while seq < messages:
        for ws in clients:
            seq += 1
            await ws.send(f'{{"type":"input","seq":{seq},"dx":0.5,"dy":-0.5}}')
        if seq % (connections * 20) == 0:
            await asyncio.sleep(0.004)  # stay under the flood limit
    await asyncio.sleep(1.0)
    elapsed = time.monotonic() - t0
    extra = (cpu() - c0) - idle * elapsed
    print(f"{connections} rooms of one: idle node CPU {idle * 100:.1f}%; {seq} inputs in {elapsed:.1f} s: "
          f"{extra / seq * 1e6:.1f} us of node CPU per input")
    for reader in readers:
        reader.cancel()
    for ws in clients:
        await ws.close()


async def drain(ws: ClientConnection) -> None:
    async for _ in ws:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--repo", type=Path, default=ROOT, help="checkout whose server to run")
    args = parser.parse_args()
    print(f"machine: {machine()}; node from {args.repo}")
    os.sched_setaffinity(0, {1})
    with data_services() as urls:
        port = free_port()
        env = {**os.environ, **urls, "TICKROOM_WORKERS": "1", "TICKROOM_LOG_LEVEL": "WARNING",
               "TICKROOM_RATE_PER_S": "100000",
               "TICKROOM_RATE_BURST": "100000", "PYTHONPATH": str(args.repo)}
        server = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-m", "server", "serve", "--port",
                                   str(port)], env=env, cwd=args.repo)
        try:
            wait_ready(port, server)
            asyncio.run(drive(port, server.pid, args.connections, args.messages))
        finally:
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
