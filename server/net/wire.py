"""The `delta` encoding of states: MessagePack keyframes, then structural deltas against the previous state.

Pure: dicts in, bytes out, and back (`StateDecoder`, used by the bot and the tests). Any game's state works;
`docs/protocol.md` ("State encodings") is the contract, and clients/js/tickroom.js has the same decoder.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson

from server.net.broadcast import binary_frame, text_frame

_MSGPACK = msgspec.msgpack.Encoder()


class Encoding(enum.StrEnum):
    JSON = "json"  # a full JSON text state every time (the default)
    DELTA = "delta"  # binary MessagePack: a keyframe, then deltas against the previous state


# Extension types inside a delta (docs/protocol.md).
EXT_REMOVED = 0  # the key is gone
EXT_TENTHS = 1  # a number moved by a signed byte of tenths: new = (round(old * 10) + step) / 10
EXT_VALUE = 2  # the payload is the new value itself (MessagePack), used where a map would read as a diff
_REMOVED = msgspec.msgpack.Ext(EXT_REMOVED, b"")
_TENTHS = [msgspec.msgpack.Ext(EXT_TENTHS, struct.pack("b", step)) for step in range(128)] + [
    msgspec.msgpack.Ext(EXT_TENTHS, struct.pack("b", step)) for step in range(-128, 0)]
_HEAD = frozenset({"type", "tick", "t"})  # a delta carries tick and t apart, as steps from the previous state

def keyframe(message: dict[str, Any]) -> bytes:
    """The whole state message as a MessagePack map: the same object as its JSON."""
    return _MSGPACK.encode(message)


def delta(previous: dict[str, Any], message: dict[str, Any]) -> bytes:
    """`[tick step, t step, changes]`: what turns `previous` (the last state this client got) into `message`."""
    changes: dict[str, Any] = {}
    for key, new in message.items():
        if key in _HEAD:
            continue
        if key not in previous:
            changes[key] = _value(new)
            continue
        old = previous[key]
        if new is old:
            continue
        change = _change(old, new)
        if change is not _SAME:
            changes[key] = change
    for key in previous:
        if key not in message:
            changes[key] = _REMOVED
    return _MSGPACK.encode([message["tick"] - previous["tick"], message["t"] - previous["t"], changes])


_SAME = object()
_MISSING = object()
# A memo of `_tenths_of`, a pure function: the same answers in every room, bounded (cleared when full).
_TENTHS_MEMO: dict[float, int | None] = {}
_TENTHS_MEMO_MAX = 1 << 16


def _tenths_of(value: float) -> int | None:
    """`value` × 10 as an integer if `value` is an exact tenth (a number with at most 1 decimal), else None."""
    found = _TENTHS_MEMO.get(value, _MISSING)
    if found is not _MISSING:
        return found  # type: ignore[return-value]
    tenths = round(value * 10.0) if -1e12 < value < 1e12 else None
    if tenths is not None and tenths / 10.0 != value:
        tenths = None
    if len(_TENTHS_MEMO) >= _TENTHS_MEMO_MAX:
        _TENTHS_MEMO.clear()
    _TENTHS_MEMO[value] = tenths
    return tenths


def _value(new: Any) -> Any:
    """A value sent whole where the decoder has nothing to apply it to."""
    return new


def _change(old: Any, new: Any) -> Any:
    """What turns `old` into `new` on the wire, or `_SAME`. A map against an old map or list is a diff."""
    kind = type(new)
    if kind is not type(old):
        if kind is dict and type(old) is list:
            return msgspec.msgpack.Ext(EXT_VALUE, _MSGPACK.encode(new))
        return new
    if kind is float:
        if new == old:
            return _SAME
        # Only from an exact tenth (so that any client's rounding of OLD × 10 agrees) to an exact tenth.
        old_tenths = _tenths_of(old)
        new_tenths = _tenths_of(new)
        if old_tenths is not None and new_tenths is not None and -128 <= new_tenths - old_tenths <= 127:
            return _TENTHS[new_tenths - old_tenths]
        return new
    if kind is dict:
        changes = _dict_changes(old, new)
        return changes if changes else _SAME
    if kind is list:
        return _list_change(old, new)
    return _SAME if new == old else new


def _dict_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    # The hot path (every element of every list, every tick): numbers and strings inline, the rest by `_change`.
    changes: dict[str, Any] = {}
    added = 0
    memo: dict[float, Any] = _TENTHS_MEMO
    for key, value in new.items():
        before = old.get(key, _MISSING)
        if value is before:
            continue
        kind = type(value)
        if kind is not type(before):
            if before is _MISSING:
                changes[key] = value
                added += 1
            else:
                changes[key] = _change(before, value)
        elif kind is float:
            if value == before:
                continue
            old_tenths = memo.get(before, _MISSING)
            if old_tenths is _MISSING:
                old_tenths = _tenths_of(before)
            new_tenths = memo.get(value, _MISSING)
            if new_tenths is _MISSING:
                new_tenths = _tenths_of(value)
            if old_tenths is not None and new_tenths is not None and -128 <= new_tenths - old_tenths <= 127:
                changes[key] = _TENTHS[new_tenths - old_tenths]
            else:
                changes[key] = value
        elif kind is int or kind is str or kind is bool:
            if value != before:
                changes[key] = value
        else:
            change = _change(before, value)
            if change is not _SAME:
                changes[key] = change
    if len(old) > len(new) - added:  # a key is gone
        for key in old:
            if key not in new:
                changes[key] = _REMOVED
    return changes


def list_key(items: list[Any]) -> str | None:
    """The field that names each element of a list of objects ("id", else "p"), None if there is none."""
    for name in ("id", "p"):
        if all(type(item) is dict and name in item for item in items):
            return name
    return None


def _list_change(old: list[Any], new: list[Any]) -> Any:
    """A map keyed by each element's id (`list_key`): changed elements as diffs, new ones whole (appended in
    order), gone ones removed; the whole list when the elements have no ids or the order would differ."""
    if not old:
        return new if new else _SAME
    first = old[0]
    name: str | None = "id" if type(first) is dict and "id" in first else "p"
    try:  # as `list_key` says, but in one pass when every element has the field of the first
        before = {item[name]: item for item in old}
    except (KeyError, TypeError):
        name = list_key(old)
        if name is None:
            return _SAME if old == new else new
        if any(type(item[name]) is not int and type(item[name]) is not str for item in old):
            return new
        before = {item[name]: item for item in old}
    ident_type = type(old[0][name])
    if (ident_type is not int and ident_type is not str) or len(before) != len(old):
        return new
    for ident in before:  # one type: a JavaScript client matches them as strings
        if type(ident) is not ident_type:
            return new
    changes: dict[Any, Any] = {}
    order: list[Any] = []  # the ids of the old elements still there, in the new list's order
    appended = False
    for item in new:
        if type(item) is not dict or name not in item:
            return new
        ident = item[name]
        if type(ident) is not ident_type or ident in changes:
            return new
        previous = before.get(ident)
        if previous is None:
            changes[ident] = item
            appended = True
            continue
        if appended:  # an old element after a new one: the decoder appends new ones last
            return new
        order.append(ident)
        if item is not previous:
            diff = _dict_changes(previous, item)
            if diff:
                changes[ident] = diff
    if len(order) != len(old):
        kept = set(order)
        for ident in before:
            if ident not in kept:
                changes[ident] = _REMOVED
        if order != [item[name] for item in old if item[name] in kept]:
            return new
    elif order != list(before):
        return new
    return changes if changes else _SAME


@dataclass(slots=True)
class WireView:
    """How one client gets states: its encoding, and whether it holds the room's previous state (a delta
    applies to it) or needs a keyframe first (it just came, or missed a state while it was slow to read)."""

    encoding: Encoding = Encoding.JSON
    synced: bool = False


class StateFrames:
    """One state, framed for each encoding at most once, then the same bytes for every client of that encoding
    (a delta for the clients that hold `previous`, a keyframe for the others)."""

    __slots__ = ("_delta", "_json", "_key", "message", "previous")

    def __init__(self, message: dict[str, Any], previous: dict[str, Any] | None) -> None:
        self.message = message
        self.previous = previous
        self._json = self._key = self._delta = b""

    def json(self) -> bytes:
        if not self._json:
            self._json = text_frame(orjson.dumps(self.message))
        return self._json

    def keyframe(self) -> bytes:
        if not self._key:
            self._key = binary_frame(keyframe(self.message))
        return self._key

    def for_view(self, view: WireView) -> bytes:
        """The frame for this client; it holds this state once the frame is written (`view.synced`)."""
        if view.encoding is Encoding.JSON:
            return self.json()
        if not view.synced or self.previous is None:
            return self.keyframe()
        if not self._delta:
            self._delta = binary_frame(delta(self.previous, self.message))
        return self._delta


class DeltaError(ValueError):
    """A delta that does not apply to the state the decoder holds (a client bug, or a frame missed)."""


class StateDecoder:
    """One client's side of the `delta` encoding: binary frames in, the full state messages out, equal to what
    the JSON encoding would have sent."""

    def __init__(self) -> None:
        self._decoder = msgspec.msgpack.Decoder(ext_hook=_ext)
        self.state: dict[str, Any] | None = None

    def decode(self, payload: bytes) -> dict[str, Any]:
        value = self._decoder.decode(payload)
        if type(value) is dict:
            self.state = value
            return value
        if self.state is None:
            raise DeltaError("a delta arrived before any keyframe")
        tick_step, t_step, changes = value
        previous = self.state
        state = _apply_dict(previous, changes)
        state["tick"] = previous["tick"] + tick_step
        state["t"] = previous["t"] + t_step
        self.state = state
        return state


class _Removed:
    pass


_GONE = _Removed()


class _Tenths:
    __slots__ = ("step",)

    def __init__(self, step: int) -> None:
        self.step = step


class _Whole:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


_STEPS = [_Tenths(byte if byte < 128 else byte - 256) for byte in range(256)]  # by the byte on the wire


def _ext(code: int, data: memoryview) -> Any:
    if code == EXT_TENTHS and len(data) == 1:
        return _STEPS[data[0]]
    if code == EXT_REMOVED:
        return _GONE
    if code == EXT_VALUE:
        return _Whole(msgspec.msgpack.decode(data))
    raise DeltaError(f"unknown extension type {code} in a delta")


def _apply(old: Any, change: Any) -> Any:
    kind = type(change)
    if kind is _Tenths:
        return (round(old * 10.0) + change.step) / 10.0
    if kind is _Whole:
        return change.value
    if kind is dict:
        if type(old) is dict:
            return _apply_dict(old, change)
        if type(old) is list:
            return _apply_list(old, change)
    return change


def _apply_dict(old: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    state = old.copy()
    for key, change in changes.items():
        kind = type(change)
        if kind is _Tenths:  # the common case, inline
            state[key] = (round(state[key] * 10.0) + change.step) / 10.0
        elif change is _GONE:
            state.pop(key, None)
        elif key in state:
            state[key] = _apply(state[key], change)
        else:
            state[key] = change
    return state


def _apply_list(old: list[Any], changes: dict[Any, Any]) -> list[Any]:
    if not old:
        return [change for change in changes.values() if change is not _GONE]
    first = old[0]
    name: str | None = "id" if type(first) is dict and "id" in first else "p"
    try:  # as `list_key` says, in one pass when every element has the field of the first
        idents = [item[name] for item in old]
    except (KeyError, TypeError):
        name = list_key(old)
        if name is None:
            raise DeltaError("changes to a list whose elements have no ids") from None
        idents = [item[name] for item in old]
    items: list[Any] = []
    found = 0
    for ident, item in zip(idents, old, strict=True):
        change = changes.get(ident, _MISSING)
        if change is _MISSING:
            items.append(item)
            continue
        found += 1
        if change is not _GONE:
            items.append(_apply_dict(item, change))
    if found < len(changes):  # new elements, after the others
        known = set(idents)
        for ident, change in changes.items():
            if change is not _GONE and ident not in known:
                items.append(change)
    return items
