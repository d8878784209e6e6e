"""Match rows in Postgres under optimistic locking: every change is `UPDATE ... WHERE id = $1 AND version = $2`
and bumps the version; a writer that loses the race re-reads, re-applies its change and tries again, or gives
up with a logged reason when its change no longer makes sense (the match ended meanwhile, say)."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

log = logging.getLogger("tickroom.persistence.matches")

# A match's states and the moves between them; anything else is a `MatchTransitionError`.
MATCH_TRANSITIONS: dict[str, frozenset[str]] = {
    "waiting": frozenset({"running", "cancelled"}),
    "running": frozenset({"finished", "cancelled"}),
    "finished": frozenset(),
    "cancelled": frozenset(),
}
CHANGE_ATTEMPTS = 5

_COLUMNS = "id, room_id, mode, node, state, version, created_at, started_at, ended_at, end_reason"
_INSERT = (f"INSERT INTO matches (id, room_id, mode, node, state, created_at) VALUES ($1, $2, $3, $4, 'waiting', $5) "
           f"RETURNING {_COLUMNS}")
_SELECT = f"SELECT {_COLUMNS} FROM matches WHERE id = $1"
_UPDATE = (f"UPDATE matches SET node = $3, state = $4, started_at = $5, ended_at = $6, end_reason = $7, "
           f"version = version + 1 WHERE id = $1 AND version = $2 RETURNING {_COLUMNS}")


class MatchTransitionError(ValueError):
    """A change that the match's state does not allow (finishing a cancelled match, say)."""


class VersionConflict(Exception):
    """The row changed between our read and our write more often than we were willing to retry."""


class MatchNotFound(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class MatchRow:
    id: uuid.UUID
    room_id: str
    mode: str
    node: str
    state: str
    version: int
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    end_reason: str | None

    def moved_to(self, state: str, **changes: Any) -> MatchRow:
        """This row in `state` (checked against `MATCH_TRANSITIONS`), with `changes` applied."""
        if state != self.state and state not in MATCH_TRANSITIONS[self.state]:
            raise MatchTransitionError(f"match {self.id} cannot go from {self.state} to {state}")
        return dataclasses.replace(self, state=state, **changes)


def _row(record: asyncpg.Record) -> MatchRow:
    return MatchRow(**dict(record))


async def create_match(conn: asyncpg.Connection, *, match_id: uuid.UUID, room_id: str, mode: str, node: str,
                       created_at: datetime) -> MatchRow:
    record = await conn.fetchrow(_INSERT, match_id, room_id, mode, node, created_at)
    assert record is not None
    return _row(record)


async def get_match(conn: asyncpg.Connection, match_id: uuid.UUID) -> MatchRow | None:
    record = await conn.fetchrow(_SELECT, match_id)
    return None if record is None else _row(record)


async def write_match(conn: asyncpg.Connection, read: MatchRow, new: MatchRow) -> MatchRow | None:
    """Write `new` if the row is still at `read.version`; the stored row (version bumped), or None if another
    writer got there first."""
    record = await conn.fetchrow(_UPDATE, read.id, read.version, new.node, new.state, new.started_at,
                                 new.ended_at, new.end_reason)
    return None if record is None else _row(record)


async def change_match(conn: asyncpg.Connection, match_id: uuid.UUID, change: Callable[[MatchRow], MatchRow | None],
                       *, attempts: int = CHANGE_ATTEMPTS) -> MatchRow | None:
    """Read the match, apply `change` (a pure function of the row read: the new row, or None when there is
    nothing to do) and write it under the version read. When another writer wins the race, read again and
    apply `change` to what it wrote, up to `attempts` times. `MatchTransitionError` from `change` means the
    change no longer applies: it is logged and None returned. `VersionConflict` if every attempt lost."""
    for _ in range(attempts):
        read = await get_match(conn, match_id)
        if read is None:
            raise MatchNotFound(f"no match {match_id}")
        try:
            new = change(read)
        except MatchTransitionError as error:
            log.info("match %s: change given up: %s (version %d)", match_id, error, read.version)
            return None
        if new is None or new == read:
            return read
        written = await write_match(conn, read, new)
        if written is not None:
            return written
        log.debug("match %s: version %d was overtaken; reading again", match_id, read.version)
    raise VersionConflict(f"match {match_id}: {attempts} writes in a row lost to other writers")
