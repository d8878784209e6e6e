-- What Postgres alone needs to restore a live match when Redis has lost its snapshot (persistence/recovery.py).
-- Each player's row of `player_positions` also keeps their pid in the game, when they took their seat, and the
-- game's own state of them (whatever the game's snapshot holds per player: the columns are for people).
ALTER TABLE player_positions
    ADD COLUMN pid       smallint CHECK (pid >= 1),
    ADD COLUMN joined_at timestamptz,
    ADD COLUMN state     jsonb;

-- And per match, written in the same transaction: the match's own progress at the time of those positions.
CREATE TABLE match_progress (
    match_id        uuid PRIMARY KEY REFERENCES matches (id) ON DELETE CASCADE,
    roster          jsonb,                -- the lobby's player ids (null: a development room, not restored)
    tick            bigint NOT NULL CHECK (tick >= 0),
    match_clock_ms  bigint NOT NULL CHECK (match_clock_ms >= 0),
    game            jsonb NOT NULL,       -- the game's snapshot without its players
    saved_at        timestamptz NOT NULL
);

-- Recovery looks for the live matches of nodes that are gone.
CREATE INDEX matches_live_by_node ON matches (node) WHERE state IN ('waiting', 'running');
