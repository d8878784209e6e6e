-- A room's shadow key expired: nobody refreshed the room for its whole TTL. Decide what becomes of it:
-- an empty room is removed; a room that never started is dissolved (its connected players re-queued ahead of
-- newcomers); a running room whose host is dead goes to recovery (its players keep their place in line);
-- a running room on a live host that stopped refreshing it is abandoned and removed.
-- ARGV[4..]: room_id, host_alive ('1' or '0'), new_room_ids (JSON list), new_room_node
local room_id, host_alive, new_node = ARGV[4], ARGV[5] == '1', ARGV[7]
local fresh = cjson.decode(ARGV[6])
if redis.call('EXISTS', shadow_key(room_id)) == 1 then return reply('alive') end
if redis.call('EXISTS', room_key(room_id)) == 0 then return reply('gone') end
local state = redis.call('HGET', room_key(room_id), 'state')
if redis.call('SCARD', players_key(room_id)) == 0 then
  note_room(room_id)
  delete_room(room_id)
  return reply('removed', {state = state})
end
if state ~= 'running' then
  dissolve(room_id, fresh, new_node)
  return reply('requeued', {state = state})
end
if not host_alive then
  requeue_running(room_id)
  return reply('recovery', {state = state})
end
finish_room(room_id)
return reply('removed', {state = state})
