-- Any game, not only the arena (docs/games.md). A player's line of a result keeps the game's own figures (kills and
-- deaths; WPM and accuracy; rounds lost); the kills and deaths columns stay for the arena's history.
ALTER TABLE match_players ADD COLUMN figures jsonb NOT NULL DEFAULT '{}';
-- A live player's row keeps the game's own state of them (`state`); position and health are the arena's only.
ALTER TABLE player_positions
    ALTER COLUMN x DROP NOT NULL,
    ALTER COLUMN y DROP NOT NULL,
    ALTER COLUMN hp DROP NOT NULL;
-- The match's progress keeps its room clock (games keep deadlines on it), how many events it recorded, and its
-- epoch (how many times it was restored).
ALTER TABLE match_progress
    ADD COLUMN room_ms bigint NOT NULL DEFAULT 0 CHECK (room_ms >= 0),
    ADD COLUMN events  integer NOT NULL DEFAULT 0 CHECK (events >= 0),
    ADD COLUMN epoch   integer NOT NULL DEFAULT 0 CHECK (epoch >= 0);

-- The events a game asks to keep (a dice game's rolls), numbered 1, 2, 3... by the match. Each restore of the match
-- starts a new epoch, going on from the number its snapshot had recorded: the events of older epochs past that
-- number are deleted (they belong to a timeline that did not go on), and from then on a write of an older epoch
-- (a stalled host's late write, a replay) changes nothing, so the log holds each event of the match that went on
-- exactly once. `matches.event_epoch` is the newest epoch that rewound the log.
CREATE TABLE match_events (
    match_id     uuid NOT NULL REFERENCES matches (id) ON DELETE CASCADE,
    seq          integer NOT NULL CHECK (seq >= 1),
    epoch        integer NOT NULL DEFAULT 0 CHECK (epoch >= 0),
    body         jsonb NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (match_id, seq)
);
ALTER TABLE matches ADD COLUMN event_epoch integer NOT NULL DEFAULT 0 CHECK (event_epoch >= 0);
