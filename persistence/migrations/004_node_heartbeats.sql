-- Each node's heartbeat in Postgres too (server/recovery.py): when Redis has lost everything, a node missing from
-- the lobby's directory whose heartbeat here is also old is gone, and its live matches are restored at once,
-- instead of after waiting out the time a live node may take to come back into an emptied Redis. `seen_at` is
-- Postgres's own clock, so no two machines' clocks are ever compared.
CREATE TABLE node_heartbeats (
    node     text PRIMARY KEY,
    seen_at  timestamptz NOT NULL
);
