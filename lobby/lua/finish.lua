-- A room is over (its match ended, was cancelled, or the room closed): its players are free to join again.
-- ARGV[4..]: room_id, host ('' for any), match_id ('' when not known): a node finishes only a room it hosts,
-- never one a sweep moved away from it while it stalled (another node restores that one).
local room_id, host, match_id = ARGV[4], ARGV[5] or '', ARGV[6] or ''
if redis.call('EXISTS', room_key(room_id)) == 0 then return reply('missing') end
if host ~= '' and redis.call('HGET', room_key(room_id), 'node') ~= host then return reply('elsewhere') end
finish_room(room_id)
-- Seen to end: recovery from Postgres must not bring it back while its result is on its way there. The match's
-- result reaching Postgres deletes the mark (settle.lua); the hour only bounds a mark whose result never came.
if match_id == '' then match_id = '1' end
redis.call('SET', base .. ':room:' .. room_id .. ':over', match_id, 'EX', 3600)
return reply('finished')
