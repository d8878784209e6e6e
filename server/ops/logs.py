"""Log lines: one JSON object per line (the default, for log collectors) or text for people, each carrying the
connection and the player it concerns when there is one, so that one player's way through the lobby, the game
and persistence can be followed (`grep '"player":"ID"'`).

The connection id and player id are context variables: the listener sets them in each connection's task, and
what that task logs carries them (its session, its lobby calls). Tasks that serve everyone start with an empty
context: rooms, the lobby's background work, the drain. Writes to Postgres run in the write queue's worker:
their lines name the match and its `players` instead, so `grep PLAYER_ID` follows a player into Postgres too.
The workers of `tickroom serve --workers N` share one stderr: each of their lines names its `node`.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time

import orjson

CONN: contextvars.ContextVar[str] = contextvars.ContextVar("tickroom_conn", default="")
PLAYER: contextvars.ContextVar[str] = contextvars.ContextVar("tickroom_player", default="")

# Fields of a LogRecord that are not `extra=` fields of the call.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


class ContextFilter(logging.Filter):
    """Puts the current connection and player on every record, and the node's id when one is given (a worker of
    several writing to the same stream)."""

    def __init__(self, node: str = "") -> None:
        super().__init__()
        self.node = node

    def filter(self, record: logging.LogRecord) -> bool:
        if self.node:
            record.node = self.node
        record.conn = CONN.get()
        record.player = PLAYER.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and value not in ("", None):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = " ".join(f"{key}={value}" for key in ("node", "conn", "player")
                           if (value := getattr(record, key, "")))
        return f"{text} [{context}]" if context else text


def configure_logging(level: str, log_format: str = "json", node: str = "") -> None:
    """Log lines to stderr at `level`, as JSON or text; each names `node` when given (a worker process)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter(node))
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    if level.upper() != "DEBUG":
        # The listener logs every plain HTTP request (/stats, /healthz) at INFO.
        logging.getLogger("tickroom.ws").setLevel(logging.WARNING)
