-- Start a room whose countdown has run out, if it still has the minimum. Any node may call it (the host's
-- timer, or a node whose lobby players wait in the room): the first call after the deadline starts it.
-- ARGV[4..]: room_id
local room_id = ARGV[4]
local r = redis.call('HMGET', room_key(room_id), 'state', 'countdown_ends_ms')
if not r[1] then return reply('missing', view(room_id)) end
local ends = tonumber(r[2])
if r[1] == 'countdown' and ends and now >= ends and redis.call('SCARD', players_key(room_id)) >= rules.min then
  start_room(room_id)
  note_room(room_id)
  return reply('started', view(room_id))
end
return reply('unchanged', view(room_id))
