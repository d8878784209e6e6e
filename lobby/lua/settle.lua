-- A match's result (or its cancellation) is in Postgres: from now on Postgres itself says the match is over, so
-- the lobby's guards of it go. The room's `over` mark (finish.lua), unless a later match of the same room set
-- it since, and the match's `claim` (reclaim.lua). Idempotent.
-- ARGV[4..]: room_id, match_id
local room_id, match_id = ARGV[4], ARGV[5]
local over = base .. ':room:' .. room_id .. ':over'
local mark = redis.call('GET', over)
if mark == match_id or mark == '1' then redis.call('DEL', over) end
redis.call('DEL', base .. ':match:' .. match_id .. ':claim')
return reply('settled')
