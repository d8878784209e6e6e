-- A player who comes back to the lobby with the ticket of a match the lobby no longer knows may be back for a match
-- that Redis lost (recovery from Postgres brings it back: wait for it), or for one that ended and whose guards in
-- Redis went once its result was durable (nothing to wait for). Telling the two apart looks the room up here.
CREATE INDEX matches_by_room ON matches (room_id);
