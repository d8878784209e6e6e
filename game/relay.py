"""The relay room: members pass JSON payloads to each other (to everyone or to one member) and may pin one;
a room with no `send`, `pin` or `unpin` for `idle_ms` expires, after a warning.
"""

from __future__ import annotations

import random
from typing import Annotated, Any

import msgspec

from game.api import (
    EVENT_DRIVEN,
    Event,
    Forming,
    GameContext,
    GameDefinition,
    Json,
    Message,
    Refused,
    Seats,
    Standing,
)

SNAPSHOT_VERSION = 1  # the layout of `RelayGame.snapshot`; a restore refuses any other
# A payload travels inside an event, the state, a snapshot and the host's write-behind records, each adding a few
# levels; orjson (the host's encoder) gives up at 255 levels, so payloads keep well below that.
PAYLOAD_MAX_DEPTH = 128
# What orjson can encode: a payload holding a bigger integer would make the host fail to send it.
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1


class RelayOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The operator's settings of every relay room."""

    # The host caps a client frame at 4096 bytes: 3500 leaves room for the `send` envelope around the payload.
    payload_max_bytes: Annotated[int, msgspec.Meta(ge=16, le=3500)] = 2048
    idle_ms: Annotated[int, msgspec.Meta(ge=10_000, le=86_400_000)] = 300_000
    warn_ms: Annotated[int, msgspec.Meta(ge=1000, le=3_600_000)] = 60_000


class Send(Message, frozen=True, tag="send"):
    """A payload for every other member, or with `to` for that member only."""

    payload: Any
    to: Annotated[int, msgspec.Meta(ge=1)] | None = None


class Pin(Message, frozen=True, tag="pin"):
    """Pin a payload (replacing any pin): every member sees it, and so does everyone joining later."""

    payload: Any


class Unpin(Message, frozen=True, tag="unpin"):
    """Remove the pin."""


RelayMessage = Send | Pin | Unpin


class _Member:
    __slots__ = ("in_match", "member", "name", "pid", "received", "sent")

    def __init__(self, pid: int, name: str) -> None:
        self.pid = pid
        self.name = name
        self.sent = 0
        self.received = 0
        self.member = True  # holds a seat (connected or away); False once released
        self.in_match = False  # a member at or after the start: in the standings


def _payload_fault(payload: Json) -> str | None:
    """Why the host could not put `payload` on the wire, or None. Iterative: the payload may nest deeply."""
    pending: list[tuple[Json, int]] = [(payload, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            if type(value) is int and not _INT_MIN <= value <= _INT_MAX:
                return f"the payload holds an integer outside {_INT_MIN}..{_INT_MAX}"
            continue
        if depth > PAYLOAD_MAX_DEPTH:
            return f"the payload nests arrays and objects deeper than {PAYLOAD_MAX_DEPTH} levels"
        pending.extend((child, depth + 1) for child in children)
    return None


def payload_size(payload: Json) -> int:
    """The payload's size as the limit counts it: bytes of compact UTF-8 JSON."""
    return len(msgspec.json.encode(payload))


class RelayGame:
    """One relay room behind the `Game` protocol of `game.api`."""

    def __init__(self, ctx: GameContext) -> None:
        options: RelayOptions = ctx.options or RelayOptions()
        self._payload_max_bytes = options.payload_max_bytes
        self._idle_ms = options.idle_ms
        # A warning as long as the idle time (or longer) would come with every message: half of it at most.
        self._warn_ms = min(options.warn_ms, options.idle_ms // 2)
        self._members: dict[int, _Member] = {}  # in join order
        self._events: list[Event] = []
        self._dirty = True
        self._started = False
        self._start_ms = 0
        self._now_ms = 0
        self._end_ms: int | None = None
        self._end_reason: str | None = None
        self._expires_ms = 0
        self._warned = False
        self._messages = 0
        self._pin: dict[str, Json] | None = None  # {"by", "payload", "at_ms"}

    # -- seats -------------------------------------------------------------------------------------

    def join(self, pid: int, name: str, now_ms: int) -> None:
        self._catch_up(now_ms)
        member = self._members.get(pid)
        if self._pin is not None:
            # Before anything else about this join: a client shows the pin before the talk it frames.
            self._events.append(Event({"kind": "pinned", **self._pin}, to=pid))
        if member is not None and member.member:
            member.name = name
            self._dirty = True  # the returning member needs a state; nothing else changed
            return
        if member is None:
            member = _Member(pid, name)
            self._members[pid] = member
        else:  # a released pid back after all: a member again, with what it had
            member.name = name
            member.member = True
        member.in_match = member.in_match or self._started
        for other in self._current():
            if other is not member:
                self._events.append(Event({"kind": "member_joined", "p": pid, "name": name}, to=other.pid))
        self._dirty = True

    def away(self, pid: int, now_ms: int) -> None:
        # An away member stays a member: messages to them count, the host just cannot deliver them.
        self._catch_up(now_ms)

    def release(self, pid: int, now_ms: int) -> None:
        self._catch_up(now_ms)
        member = self._members.get(pid)
        if member is None or not member.member:
            return
        if not member.in_match:  # gone before the start: never in the match
            del self._members[pid]
        else:
            member.member = False
        self._events.append(Event({"kind": "member_left", "p": pid}))
        self._dirty = True
        if self._started and self._end_reason is None and not any(self._current()):
            self._end("empty")

    def start(self, now_ms: int) -> None:
        self._now_ms = max(self._now_ms, now_ms)
        if self._started:
            return
        self._started = True
        self._start_ms = now_ms
        for member in self._current():
            member.in_match = True
        self._touch(now_ms)

    # -- messages ----------------------------------------------------------------------------------

    def handle(self, pid: int, message: Message, now_ms: int) -> None:
        self._catch_up(now_ms)
        if not self._started:
            raise Refused("not_started", "the room has not started yet")
        if self._end_reason is not None:
            raise Refused("game_over", f"the room has closed ({self._end_reason})")
        sender = self._members.get(pid)
        if sender is None or not sender.member:
            raise Refused("no_such_member", "you are not a member of this room")
        if isinstance(message, Send):
            self._send(sender, message, now_ms)
        elif isinstance(message, Pin):
            self._check_payload(message.payload)
            self._pin = {"by": pid, "payload": message.payload, "at_ms": now_ms}
            self._events.append(Event({"kind": "pinned", **self._pin}))
            self._touch(now_ms)
        elif isinstance(message, Unpin):
            if self._pin is None:
                raise Refused("nothing_pinned", "there is no pin to remove")
            self._pin = None
            self._events.append(Event({"kind": "unpinned", "by": pid}))
            self._touch(now_ms)
        else:
            raise Refused("unknown_message", f"a relay room does not handle {type(message).__name__}")

    def _send(self, sender: _Member, message: Send, now_ms: int) -> None:
        self._check_payload(message.payload)
        if message.to is None:
            recipients = [member for member in self._current() if member is not sender]
        else:
            target = self._members.get(message.to)
            if target is None or not target.member or target is sender:
                raise Refused("no_such_member", f"player {message.to} is not another member of this room")
            recipients = [target]
        self._messages += 1
        sender.sent += 1
        body = {"kind": "message", "id": self._messages, "from": sender.pid, "direct": message.to is not None,
                "payload": message.payload}
        for recipient in recipients:
            recipient.received += 1
            self._events.append(Event(dict(body), to=recipient.pid))
        self._events.append(Event({"kind": "sent", "id": self._messages}, to=sender.pid))
        self._touch(now_ms)

    def _check_payload(self, payload: Json) -> None:
        fault = _payload_fault(payload)
        if fault is not None:
            raise Refused("bad_payload", fault)
        size = payload_size(payload)
        if size > self._payload_max_bytes:
            raise Refused("payload_too_large", f"the payload is {size} bytes; at most {self._payload_max_bytes}")

    # -- time --------------------------------------------------------------------------------------

    def advance(self, now_ms: int) -> None:
        self._catch_up(now_ms)

    def next_wake_ms(self) -> int | None:
        if not self._started or self._end_reason is not None:
            return None
        return self._expires_ms if self._warned else self._expires_ms - self._warn_ms

    def _catch_up(self, now_ms: int) -> None:
        """Warn or expire as the room clock says, whoever calls first: the result never depends on whether the
        host's timer or a message came first."""
        self._now_ms = now_ms = max(self._now_ms, now_ms)
        if not self._started or self._end_reason is not None:
            return
        if now_ms >= self._expires_ms:
            self._end("idle")  # a warning now would say "in 0 ms": none
        elif not self._warned and now_ms >= self._expires_ms - self._warn_ms:
            self._warned = True
            self._events.append(Event({"kind": "expiring", "in_ms": self._expires_ms - now_ms,
                                       "at_ms": self._expires_ms}))

    def _touch(self, now_ms: int) -> None:
        self._expires_ms = now_ms + self._idle_ms
        self._warned = False
        self._dirty = True

    def _end(self, reason: str) -> None:
        self._end_reason = reason
        self._end_ms = self._now_ms

    @property
    def clock_ms(self) -> int:
        if not self._started:
            return 0
        return (self._now_ms if self._end_ms is None else self._end_ms) - self._start_ms

    @property
    def end_reason(self) -> str | None:
        return self._end_reason

    # -- output ------------------------------------------------------------------------------------

    def welcome(self, pid: int) -> dict[str, Json]:
        return {"payload_max_bytes": self._payload_max_bytes, "idle_ms": self._idle_ms, "warn_ms": self._warn_ms}

    def state(self) -> dict[str, Json] | None:
        if not self._dirty:
            return None
        self._dirty = False
        return {"members": [{"p": m.pid, "name": m.name, "sent": m.sent, "received": m.received}
                            for m in self._current()],
                "pinned": None if self._pin is None else dict(self._pin),
                "expires_ms": self._expires_ms if self._started else None,
                "messages": self._messages}

    def drain_events(self) -> list[Event]:
        events = self._events
        self._events = []
        return events

    def standings(self) -> list[Standing]:
        # Not a contest: everyone shares first place.
        return [Standing(m.pid, 1, 0, {"sent": m.sent, "received": m.received})
                for m in self._members.values() if m.in_match]

    def _current(self) -> list[_Member]:
        return [member for member in self._members.values() if member.member]

    # -- snapshots ---------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Json]:
        return {"v": SNAPSHOT_VERSION, "started": self._started, "start_ms": self._start_ms, "now_ms": self._now_ms,
                "end_ms": self._end_ms, "end_reason": self._end_reason, "expires_ms": self._expires_ms,
                "warned": self._warned, "messages": self._messages, "pin": self._pin,
                "players": [{"pid": m.pid, "name": m.name, "sent": m.sent, "received": m.received,
                             "member": m.member, "in_match": m.in_match} for m in self._members.values()]}

    def restore(self, snapshot: dict[str, Json]) -> None:
        if snapshot.get("v") != SNAPSHOT_VERSION:
            raise ValueError(f"relay snapshot version {snapshot.get('v')!r} is not {SNAPSHOT_VERSION}")
        if self._members:
            raise ValueError("restore needs a game without players")
        for entry in snapshot["players"]:  # in join order
            member = _Member(int(entry["pid"]), str(entry["name"]))
            member.sent = int(entry["sent"])
            member.received = int(entry["received"])
            member.member = bool(entry["member"])
            member.in_match = bool(entry["in_match"])
            self._members[member.pid] = member
        self._started = bool(snapshot["started"])
        self._start_ms = int(snapshot["start_ms"])
        self._now_ms = int(snapshot["now_ms"])
        self._end_ms = None if snapshot["end_ms"] is None else int(snapshot["end_ms"])
        self._end_reason = None if snapshot["end_reason"] is None else str(snapshot["end_reason"])
        self._expires_ms = int(snapshot["expires_ms"])
        self._warned = bool(snapshot["warned"])
        self._messages = int(snapshot["messages"])
        pin = snapshot["pin"]
        self._pin = None if pin is None else {"by": int(pin["by"]), "payload": pin["payload"],
                                              "at_ms": int(pin["at_ms"])}
        self._events = []
        self._dirty = True


class RelayBot:
    """Plays a relay room: every 2–6 s a small payload to everyone; one time in ten to one other member instead,
    one time in twenty a pin. It talks only once it has seen a started room that lists it as a member."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._you: int | None = None
        self._payload_max_bytes = 16  # the smallest limit there is, until the welcome says
        self._members: list[int] = []
        self._running = False
        self._over = False
        self._next_ms: int | None = None
        self._count = 0

    def on_message(self, message: dict[str, Json], now_ms: int) -> list[dict[str, Json]]:
        kind = message.get("type")
        if kind == "welcome":
            self._you = message.get("you")
            self._payload_max_bytes = int(message.get("payload_max_bytes", self._payload_max_bytes))
        elif kind == "state":
            self._members = [entry["p"] for entry in message.get("members", [])]
            self._running = message.get("expires_ms") is not None
        elif kind == "event" and message.get("kind") == "member_left":
            # At once, not at the next state: a message to them now would be refused.
            self._members = [pid for pid in self._members if pid != message.get("p")]
        elif kind == "match_end":
            self._over = True
        return []

    def on_tick(self, now_ms: int) -> list[dict[str, Json]]:
        if self._over or not self._running or self._you not in self._members:
            return []
        if self._next_ms is None:
            self._next_ms = now_ms + self._rng.randint(2000, 6000)
        if now_ms < self._next_ms:
            return []
        self._next_ms = now_ms + self._rng.randint(2000, 6000)
        self._count += 1
        roll = self._rng.randrange(20)
        if roll == 0:
            return [{"type": "pin", "payload": self._fit({"note": f"bot {self._you} was here ({self._count})"})}]
        message: dict[str, Json] = {"type": "send", "payload": self._fit({"n": self._count, "from_bot": True})}
        others = [pid for pid in self._members if pid != self._you]
        if roll <= 2 and others:
            message["to"] = self._rng.choice(others)
        return [message]

    def _fit(self, payload: dict[str, Json]) -> Json:
        """The payload, or just the counter when the room's limit is smaller than the payload."""
        return payload if payload_size(payload) <= self._payload_max_bytes else self._count


def make(ctx: GameContext) -> RelayGame:
    return RelayGame(ctx)


DEFINITION = GameDefinition(
    mode="relay",
    title="Relay room",
    seats=Seats(min=1, max=16, backfill=True),
    forming=Forming.AT_ONCE,
    clock=EVENT_DRIVEN,
    messages=(Send, Pin, Unpin),
    make=make,
    description="Members pass JSON payloads to each other through the server and may pin one for everyone.",
    figures=("sent", "received"),
    options=RelayOptions,
    bot=RelayBot,
)
