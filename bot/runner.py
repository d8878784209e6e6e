"""Runs a whole bot run: in this process, or split over several OS processes (each its own event loop)
whose progress and raw samples come back over a queue and are merged into one summary."""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import signal
import time
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from bot.plan import BotSettings, ProcessPlan, plan_processes
from bot.stats import ProcessResult, Progress, ProgressBoard, summarize
from bot.swarm import CLOSE_GRACE_S, cpu_seconds, run_process

PROGRESS_EVERY_S = 1.0
STARTUP_SLACK_S = 30.0  # how long past the deadline a child may take to start, close and report
_QUEUE_POLL_S = 0.2


def run_load(settings: BotSettings, show: Callable[[str], None] | None) -> dict[str, Any]:
    """Play the run described by `settings`; `show` gets a progress line about once a second."""
    started_at = time.monotonic()
    cpu_start = cpu_seconds()
    plans = plan_processes(settings, started_at)
    board = ProgressBoard(settings.bots, started_at, lobby=settings.lobby)
    if len(plans) == 1:
        def report(progress: Progress) -> None:
            board.update(progress)
            if show is not None:
                show(board.line(progress.at))

        results = [run_process(plans[0], report)]
        extra_cpu = 0.0
    else:
        results = _run_children(plans, board, show)
        extra_cpu = cpu_seconds() - cpu_start
    wall_s = time.monotonic() - started_at
    return summarize(results, bots=settings.bots, duration_s=settings.duration_s, wall_s=wall_s,
                     extra_cpu_s=extra_cpu)


def _child_main(plan: ProcessPlan, channel: multiprocessing.Queue[tuple[str, Any]]) -> None:
    def report(progress: Progress) -> None:
        channel.put(("progress", progress))

    try:
        result = run_process(plan, report)
    except BaseException as exc:
        channel.put(("failed", (plan.process, repr(exc))))
        raise
    channel.put(("result", result))


@contextlib.contextmanager
def _signals_to_children(children: list[BaseProcess]) -> Iterator[None]:
    """While the children run, SIGINT or SIGTERM to this process ends their runs early (they still
    report); Ctrl-C on a terminal reaches them directly as well."""

    def forward(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.is_alive():
                child.terminate()  # SIGTERM: the child ends its run early and still reports

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_children(plans: list[ProcessPlan], board: ProgressBoard,
                  show: Callable[[str], None] | None) -> list[ProcessResult]:
    context = multiprocessing.get_context("spawn")
    channel: multiprocessing.Queue[tuple[str, Any]] = context.Queue()
    children: list[BaseProcess] = [context.Process(target=_child_main, args=(plan, channel), daemon=True,
                                                   name=f"tickroom-bot-{plan.process}") for plan in plans]
    results: dict[int, ProcessResult] = {}
    failed: dict[int, str] = {}
    hard_end = plans[0].ends_at + CLOSE_GRACE_S + STARTUP_SLACK_S
    with _signals_to_children(children):
        for child in children:
            child.start()
        next_line = time.monotonic() + PROGRESS_EVERY_S
        while len(results) + len(failed) < len(children):
            now = time.monotonic()
            if show is not None and now >= next_line:
                show(board.line(now))
                next_line += PROGRESS_EVERY_S * max(1, int((now - next_line) // PROGRESS_EVERY_S) + 1)
            try:
                kind, payload = channel.get(timeout=_QUEUE_POLL_S)
            except queue.Empty:
                if now > hard_end or all(not child.is_alive() for child in children):
                    # A child died without reporting, or hangs: stop waiting (one last look first).
                    with contextlib.suppress(queue.Empty):
                        while True:
                            kind, payload = channel.get(timeout=_QUEUE_POLL_S)
                            _take(kind, payload, board, results, failed)
                    break
                continue
            _take(kind, payload, board, results, failed)
    for child in children:
        child.join(timeout=5.0)
        if child.is_alive():
            child.kill()
            child.join(timeout=5.0)
    for process, reason in sorted(failed.items()):
        raise RuntimeError(f"bot process {process} failed: {reason}")
    missing = [plan.process for plan in plans if plan.process not in results]
    if missing:
        raise RuntimeError(f"bot process(es) {missing} exited without a result")
    return [results[k] for k in sorted(results)]


def _take(kind: str, payload: Any, board: ProgressBoard, results: dict[int, ProcessResult],
          failed: dict[int, str]) -> None:
    if kind == "progress":
        board.update(payload)
    elif kind == "result":
        results[payload.process] = payload
    elif kind == "failed":
        process, reason = payload
        failed[process] = reason
