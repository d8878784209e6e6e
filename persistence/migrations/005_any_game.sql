-- Any game, not only the arena (docs/games.md). A player's line of a result keeps the game's own figures (kills and
-- deaths; WPM and accuracy; rounds lost); the kills and deaths columns stay for the arena's history.
ALTER TABLE match_players ADD COLUMN figures jsonb NOT NULL DEFAULT '{}';
-- A live player's row keeps the game's own state of them (`state`); position and health are the arena's only.
ALTER TABLE player_positions
    ALTER COLUMN x DROP NOT NULL,
    ALTER COLUMN y DROP NOT NULL,
    ALTER COLUMN hp DROP NOT NULL;
-- The match's progress keeps its room clock (games keep deadlines on it) and how many events it recorded.
ALTER TABLE match_progress
    ADD COLUMN room_ms bigint NOT NULL DEFAULT 0 CHECK (room_ms >= 0),
    ADD COLUMN events  integer NOT NULL DEFAULT 0 CHECK (events >= 0);

-- The events a game asks to keep (a dice game's rolls), numbered 1, 2, 3... by the match. A match restored from an
-- older point goes on from that number: the events a crashed host recorded past it are deleted first (they belong to
-- a timeline that did not go on), and a number written twice keeps the newer body, so each event is here once.
CREATE TABLE match_events (
    match_id     uuid NOT NULL REFERENCES matches (id) ON DELETE CASCADE,
    seq          integer NOT NULL CHECK (seq >= 1),
    body         jsonb NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (match_id, seq)
);
