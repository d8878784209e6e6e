-- Matches: one row per room's match, from its opening to its result. Every change of a row goes through
-- `UPDATE ... WHERE id = $1 AND version = $2` and bumps `version` (optimistic locking, persistence/matches.py).
CREATE TABLE matches (
    id          uuid PRIMARY KEY,
    room_id     text NOT NULL CHECK (room_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    mode        text NOT NULL,
    node        text NOT NULL,
    state       text NOT NULL CHECK (state IN ('waiting', 'running', 'finished', 'cancelled')),
    version     integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at  timestamptz NOT NULL DEFAULT now(),
    started_at  timestamptz,
    ended_at    timestamptz,
    end_reason  text,
    CHECK (state <> 'finished' OR ended_at IS NOT NULL)
);
-- A room id names one live match at a time (a development room may be reused once its match ended).
CREATE UNIQUE INDEX matches_live_room ON matches (room_id) WHERE state IN ('waiting', 'running');
CREATE INDEX matches_ended ON matches (ended_at DESC) WHERE state = 'finished';

-- Who played a match, in join order, and how it went for them (the result, once the match is finished).
CREATE TABLE match_players (
    match_id    uuid NOT NULL REFERENCES matches (id) ON DELETE CASCADE,
    player_id   uuid NOT NULL REFERENCES players (id),
    join_order  smallint NOT NULL CHECK (join_order >= 1),
    joined_at   timestamptz NOT NULL,
    left_at     timestamptz,
    rank        smallint CHECK (rank >= 1),
    kills       integer NOT NULL DEFAULT 0 CHECK (kills >= 0),
    deaths      integer NOT NULL DEFAULT 0 CHECK (deaths >= 0),
    score       integer NOT NULL DEFAULT 0,
    PRIMARY KEY (match_id, player_id),
    UNIQUE (match_id, join_order)
);
-- A player's history, newest first.
CREATE INDEX match_players_by_player ON match_players (player_id, match_id);

-- The last persisted state of each player of a live match (the latest per player per match), so that
-- Postgres alone can restore a room when Redis has lost its snapshot.
CREATE TABLE player_positions (
    match_id        uuid NOT NULL REFERENCES matches (id) ON DELETE CASCADE,
    player_id       uuid NOT NULL REFERENCES players (id),
    x               real NOT NULL,
    y               real NOT NULL,
    hp              integer NOT NULL,
    kills           integer NOT NULL DEFAULT 0,
    deaths          integer NOT NULL DEFAULT 0,
    score           integer NOT NULL DEFAULT 0,
    match_clock_ms  bigint NOT NULL CHECK (match_clock_ms >= 0),
    saved_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (match_id, player_id)
);
