"""Smoke test of the embedded default: `tickroom serve` with nothing configured, three bots matched by its lobby."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import psutil

from server.ops.embedded import free_port

TICKROOM = str(Path(sys.executable).with_name("tickroom"))


def wait_healthy(port: int, server: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, "tickroom serve exited early"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError("tickroom serve did not become healthy")


def test_serve_with_nothing_configured_runs_embedded_servers_plays_a_bot_and_stops_them(tmp_path: Path) -> None:
    port = free_port()
    env = {key: value for key, value in os.environ.items()
           if key not in ("REDIS_URL", "DATABASE_URL", "TICKROOM_JWT_SECRET")}
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen([TICKROOM, "serve", "--workers", "1", "--port", str(port),
                                   "--data-dir", str(tmp_path / "data"), "--countdown-s", "0.5"],
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(port, server, timeout=60)
        children = psutil.Process(server.pid).children(recursive=True)
        names = " ".join(" ".join(child.cmdline()) for child in children)
        assert "redis-server" in names and "postgres" in names

        bot = subprocess.run([TICKROOM, "bot", "--url", f"ws://127.0.0.1:{port}", "--bots", "3", "--duration", "4",
                              "--lobby", "--json", "--quiet"], env=env, capture_output=True, timeout=60)
        assert bot.returncode == 0, bot.stderr.decode()
        summary = orjson.loads(bot.stdout.decode().strip().splitlines()[-1])
        assert summary["connected"] == 3 and summary["matched"] == 3 and summary["rooms"] == 1
        assert summary["states_per_s_min"] >= 60
        assert summary["errors"] == 0

        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
        _, alive = psutil.wait_procs(children, timeout=10)
        assert alive == [], f"embedded servers left running: {alive}"
        log_text = log_path.read_text()
        assert "EMBEDDED Redis" in log_text and "EMBEDDED Postgres" in log_text
        # The ready line sends a newcomer to the lobby; /game?room=ID only works with direct joins on.
        ready = next(line for line in log_text.splitlines() if " ready: " in line)
        assert f"ws://127.0.0.1:{port}/lobby" in ready and "/game?room=" not in ready
        assert (tmp_path / "data" / "postgres").is_dir() and (tmp_path / "data" / "redis").is_dir()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
