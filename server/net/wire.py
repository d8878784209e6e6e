"""The `delta` encoding of states: MessagePack keyframes, then structural deltas against the previous state.

Pure: dicts in, bytes out, and back (`StateDecoder`, used by the bot and the tests). Any game's state works;
`docs/protocol.md` ("State encodings") is the contract, and clients/js/tickroom.js has the same decoder.
"""

from __future__ import annotations

import enum
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
EXT_REMOVED = 0  # the field (or list element) is gone
EXT_VALUE = 1  # the payload is the new value itself (MessagePack), where it would read as a change
_REMOVED = msgspec.msgpack.Ext(EXT_REMOVED, b"")
_HEAD = frozenset({"type", "tick", "t"})  # a delta carries tick and t apart, as steps from the previous state
# Integers that are exact in tenths on both sides (an IEEE double holds every integer up to 2**53).
_INT_LIMIT = 1 << 49


def keyframe(message: dict[str, Any]) -> bytes:
    """The whole state message as a MessagePack map: the same object as its JSON."""
    return _MSGPACK.encode(message)


def delta(previous: dict[str, Any], message: dict[str, Any]) -> bytes:
    """`[tick step, t step, changes]`: what turns `previous` (the last state this client got) into `message`; a
    keyframe when no delta can say it (the state's fields came in another order)."""
    changes = _object_changes(previous, message)
    if changes is None:
        return keyframe(message)
    # The envelope's tick and t go apart, as steps; its type never changes.
    for index, name in enumerate(previous):
        if name in _HEAD:
            changes.pop(index, None)
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


def _whole(value: Any) -> msgspec.msgpack.Ext:
    return msgspec.msgpack.Ext(EXT_VALUE, _MSGPACK.encode(value))


def _change(old: Any, new: Any) -> Any:
    """What turns `old` into `new` on the wire, or `_SAME`: an integer is a step in tenths of a number, a map the
    changes of an object or of a list of objects with ids, anything else the new value (wrapped in ext type 1
    where it would read as one of those)."""
    kind = type(new)
    before = type(old)
    if kind is float:
        if before is float:
            if new == old:
                return _SAME
            # Only from an exact tenth (so that any client's rounding of OLD × 10 agrees) to an exact tenth.
            old_tenths = _tenths_of(old)
            new_tenths = _tenths_of(new)
            if old_tenths is not None and new_tenths is not None:
                return new_tenths - old_tenths
        return new  # a float on the wire is always the value itself
    if kind is int:
        if before is int:
            if new == old:
                return _SAME
            if -_INT_LIMIT < old < _INT_LIMIT and -_INT_LIMIT < new < _INT_LIMIT:
                return (new - old) * 10
            return _whole(new)
        return _whole(new) if before is float else new
    if kind is dict:
        if before is dict:
            changes = _object_changes(old, new)
            if changes is None:
                return _whole(new)
            return changes if changes else _SAME
        return _whole(new) if before is list else new
    if kind is list and before is list:
        return _list_change(old, new)
    return _SAME if kind is before and new == old else new


def _object_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[Any, Any] | None:
    """A field that stays is named by its index in `old`, a new one by its name (appended after the others in
    this order); None when `new`'s fields are not in that order (the object then goes whole)."""
    # The hot path (every element of every list, every tick): the same fields in the same order, numbers inline.
    changes: dict[Any, Any] = {}
    if len(old) == len(new) and list(old) == list(new):
        memo: dict[float, Any] = _TENTHS_MEMO
        index = -1
        # Lengths are equal: zip's own check (strict=True) would cost a third of this loop.
        for before, value in zip(old.values(), new.values()):  # noqa: B905
            index += 1
            if value is before:
                continue
            kind = type(value)
            if kind is not type(before):
                changes[index] = _change(before, value)
            elif kind is float:
                if value == before:
                    continue
                old_tenths = memo.get(before, _MISSING)
                if old_tenths is _MISSING:
                    old_tenths = _tenths_of(before)
                new_tenths = memo.get(value, _MISSING)
                if new_tenths is _MISSING:
                    new_tenths = _tenths_of(value)
                if old_tenths is not None and new_tenths is not None:
                    changes[index] = new_tenths - old_tenths
                else:
                    changes[index] = value
            elif kind is int:
                if value != before:
                    changes[index] = ((value - before) * 10 if -_INT_LIMIT < before < _INT_LIMIT
                                      and -_INT_LIMIT < value < _INT_LIMIT else _whole(value))
            elif kind is str or kind is bool:
                if value != before:
                    changes[index] = value
            else:
                change = _change(before, value)
                if change is not _SAME:
                    changes[index] = change
        return changes
    kept = [name for name in old if name in new]
    added = [name for name in new if name not in old]
    if list(new) != kept + added:
        return None
    for index, (name, before) in enumerate(old.items()):
        value = new.get(name, _MISSING)
        if value is _MISSING:
            changes[index] = _REMOVED
        elif value is not before:
            change = _change(before, value)
            if change is not _SAME:
                changes[index] = change
    for name in added:
        changes[name] = new[name]
    return changes


def list_key(items: list[Any]) -> str | None:
    """The field that names each element of a list of objects ("id", else "p"), None if there is none."""
    for name in ("id", "p"):
        if all(type(item) is dict and name in item for item in items):
            return name
    return None


def _one_id_type(idents: list[Any]) -> bool:
    """All integers or all strings: a JavaScript client matches ids as strings, so 1 and "1" must not meet."""
    kind = type(idents[0])
    if kind is not int and kind is not str:
        return False
    for ident in idents:
        if type(ident) is not kind:
            return False
    return True


def _list_change(old: list[Any], new: list[Any]) -> Any:
    """A map keyed by each element's id (`list_key`): changed elements as their changes, new ones whole (appended
    in order), gone ones removed; the whole list when the elements have no ids or the order would differ."""
    if not old:
        return new if new else _SAME
    first = old[0]
    name: str | None = "id" if type(first) is dict and "id" in first else "p"
    if len(old) == len(new):  # the hot path: the same elements in the same order, some of them changed
        try:
            idents = [item[name] for item in old]
            same = idents == [item[name] for item in new]
        except (KeyError, TypeError):
            same = False
        if same and len(set(idents)) == len(idents) and _one_id_type(idents):
            changes: dict[Any, Any] = {}
            for ident, previous, item in zip(idents, old, new):  # noqa: B905 (the same length)
                if item is not previous:
                    diff = _object_changes(previous, item)
                    if diff is None:
                        changes[ident] = _whole(item)
                    elif diff:
                        changes[ident] = diff
            return changes if changes else _SAME
    try:  # as `list_key` says, but in one pass when every element has the field of the first
        before = {item[name]: item for item in old}
    except (KeyError, TypeError):
        name = list_key(old)
        if name is None:
            return _SAME if old == new else new
        if any(type(item[name]) is not int and type(item[name]) is not str for item in old):
            return new
        before = {item[name]: item for item in old}
    if len(before) != len(old) or not _one_id_type(list(before)):
        return new
    ident_type = type(old[0][name])
    changes = {}
    order: list[Any] = []  # the ids of the old elements still there, in the new list's order
    appended = False
    last: dict[str, Any] | None = None  # the element before this one in the new list
    for item in new:
        if type(item) is not dict or name not in item:
            return new
        ident = item[name]
        if type(ident) is not ident_type or ident in changes:
            return new
        previous = before.get(ident)
        if previous is None:
            # A new element: its changes against the one before it (most fields alike, numbers near), or whole.
            if last is None:
                changes[ident] = item
            else:
                diff = _object_changes(last, item)
                changes[ident] = _whole(item) if diff is None else diff
            appended = True
            last = item
            continue
        last = item
        if appended:  # an old element after a new one: the decoder appends new ones last
            return new
        order.append(ident)
        if item is not previous:
            diff = _object_changes(previous, item)
            if diff is None:
                changes[ident] = _whole(item)
            elif diff:
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
        if type(value) is not list or len(value) != 3 or type(value[2]) is not dict:
            raise DeltaError("a state frame is a keyframe (map) or a delta ([tick step, t step, changes])")
        if self.state is None:
            raise DeltaError("a delta arrived before any keyframe")
        tick_step, t_step, changes = value
        previous = self.state
        state = _apply_object(previous, changes)
        state["tick"] = previous["tick"] + tick_step
        state["t"] = previous["t"] + t_step
        self.state = state
        return state


class _Removed:
    pass


_GONE = _Removed()


class _Whole:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _ext(code: int, data: memoryview) -> Any:
    if code == EXT_REMOVED:
        return _GONE
    if code == EXT_VALUE:
        return _Whole(msgspec.msgpack.decode(data))
    raise DeltaError(f"unknown extension type {code} in a delta")


def _apply(old: Any, change: Any) -> Any:
    kind = type(change)
    if kind is int:
        before = type(old)
        if before is float:
            return (round(old * 10.0) + change) / 10.0
        if before is int:
            return old + change // 10 if change % 10 == 0 else (old * 10 + change) / 10.0
        return change
    if kind is _Whole:
        return change.value
    if kind is dict:
        if type(old) is dict:
            return _apply_object(old, change)
        if type(old) is list:
            return _apply_list(old, change)
    return change


def _apply_object(old: dict[str, Any], changes: dict[Any, Any]) -> dict[str, Any]:
    state = old.copy()
    names: list[str] | None = None
    for key, change in changes.items():
        if type(key) is int:
            if names is None:
                names = list(old)
            if not 0 <= key < len(names):
                raise DeltaError(f"a change to field {key} of an object with {len(names)} fields")
            key = names[key]
        if type(change) is int and type(state.get(key)) is float:  # the common case, inline
            state[key] = (round(state[key] * 10.0) + change) / 10.0
        elif change is _GONE:
            state.pop(key, None)
        elif key in state:
            state[key] = _apply(state[key], change)
        else:
            state[key] = change.value if type(change) is _Whole else change
    return state


def _apply_list(old: list[Any], changes: dict[Any, Any]) -> list[Any]:
    if not old:
        fresh: list[Any] = []
        for change in changes.values():
            if change is not _GONE:
                fresh.append(_new_element(fresh, change))
        return fresh
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
            items.append(_apply(item, change))
    if found < len(changes):  # new elements, after the others
        known = set(idents)
        for ident, change in changes.items():
            if change is not _GONE and ident not in known:
                items.append(_new_element(items, change))
    return items


def _new_element(items: list[Any], change: Any) -> Any:
    """A new element of a list: a map is its changes against the element before it, if there is one."""
    if type(change) is _Whole:
        return change.value
    if type(change) is dict and items:
        return _apply_object(items[-1], change)
    return change
