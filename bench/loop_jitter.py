"""The floor under tick lateness: how late do plain asyncio timers fire on this machine?

N tasks each wake every 15 ms against absolute deadlines and burn WORK µs, exactly like room runners
but with no network and no game. Whatever lateness this shows (virtual CPUs that were descheduled or
slow to wake from idle), the server cannot do better than.

    .venv/bin/python -m bench.loop_jitter [--tasks 1,50] [--work-us 0,100] [--seconds 15] [--core 0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

from bench.tick_capacity import machine


async def measure(tasks: int, work_s: float, seconds: float) -> list[float]:
    lateness: list[float] = []
    recording = False

    async def room(offset: float) -> None:
        deadline = time.monotonic() + offset
        await asyncio.sleep(offset)
        while True:
            started = time.monotonic()
            if recording:
                lateness.append(started - deadline)
            while time.monotonic() - started < work_s:
                pass
            deadline += 0.015
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))

    async with asyncio.TaskGroup() as group:
        runners = [group.create_task(room(i * 0.015 / tasks)) for i in range(tasks)]
        await asyncio.sleep(2.0)
        recording = True
        await asyncio.sleep(seconds)
        for runner in runners:
            runner.cancel()
    return sorted(lateness)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="1,50")
    parser.add_argument("--work-us", default="0,100")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--core", type=int, default=0)
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.core})
    try:
        import uvloop
        run = uvloop.run
        loop_name = "uvloop"
    except ImportError:
        run = asyncio.run
        loop_name = "asyncio"
    print(f"machine: {machine()}; loop: {loop_name}; core {args.core}")
    for tasks in (int(t) for t in args.tasks.split(",")):
        for work_us in (float(w) for w in args.work_us.split(",")):
            samples = run(measure(tasks, work_us / 1e6, args.seconds))
            n = len(samples)
            print(f"tasks {tasks:4d}  work {work_us:5.0f} us  lateness ms: p50 {samples[n // 2] * 1000:6.2f}  "
                  f"p99 {samples[int(n * 0.99)] * 1000:6.2f}  max {samples[-1] * 1000:6.2f}  ({n} wakeups)",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
