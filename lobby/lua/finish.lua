-- A room is over (its match ended, was cancelled, or the room closed): its players are free to join again.
-- ARGV[4..]: room_id
local room_id = ARGV[4]
if redis.call('EXISTS', room_key(room_id)) == 0 then return reply('missing') end
finish_room(room_id)
return reply('finished')
