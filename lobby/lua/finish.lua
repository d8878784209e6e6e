-- A room is over (its match ended, was cancelled, or the room closed): its players are free to join again.
-- ARGV[4..]: room_id, host ('' for any): a node finishes only a room it hosts, never one a sweep moved away
-- from it while it stalled (another node restores that one).
local room_id, host = ARGV[4], ARGV[5] or ''
if redis.call('EXISTS', room_key(room_id)) == 0 then return reply('missing') end
if host ~= '' and redis.call('HGET', room_key(room_id), 'node') ~= host then return reply('elsewhere') end
finish_room(room_id)
-- Seen to end: recovery from Postgres must not bring it back while its result is on its way there.
redis.call('SET', base .. ':room:' .. room_id .. ':over', '1', 'EX', 3600)
return reply('finished')
