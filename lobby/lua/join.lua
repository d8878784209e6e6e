-- A player joins through a lobby connection: back to the seat they hold (rejoin, from any node), or seated in
-- the fullest open room, a new room offered by the caller, or the queue. A player who already has a live
-- connection is refused ('busy'): the caller checks that connection's node and, if it is dead, calls again
-- with `takeover` set to that connection's id. A new player when every node is full: 'full', nothing written,
-- when `refuse_full` says so.
-- ARGV[4..]: player_id, name, conn_id, conn_node, new_room_id, new_room_node, takeover, refuse_full
local player_id, name, conn_id, conn_node = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local new_room_id, new_room_node, takeover, refuse_full = ARGV[8], ARGV[9], ARGV[10], ARGV[11] == '1'
local pkey = player_key(player_id)
-- Results that became durable after the player had left their room: told on this connection (`saved`).
local saved_key = pkey .. ':saved'
local saved = redis.call('SMEMBERS', saved_key)
if #saved > 0 then redis.call('DEL', saved_key) end
local p = redis.call('HMGET', pkey, 'room', 'status', 'conn', 'conn_node', 'conn_kind')
local room_id, status, conn = p[1], p[2], p[3]
if status and conn and conn ~= '' and conn ~= conn_id and conn ~= takeover then
  return reply('busy', {conn = conn, conn_node = p[4], conn_kind = p[5], room = room_id or '', saved = saved})
end
if room_id and room_id ~= '' and redis.call('SISMEMBER', players_key(room_id), player_id) == 0 then
  room_id = ''  -- a placement whose room is gone
end
-- With refuse_full: a player the lobby does not know, no node taking a new room (no new_room_node) and no open
-- room with a free seat: every node is at its capacity. Nothing is written; the caller answers `capacity` and
-- the client tries again later. (An open room whose hash expired is left to `seat` below, which forgets it.)
-- Without it, such a player waits in the queue alone.
if refuse_full and not status and new_room_node == '' then
  local open = redis.call('ZREVRANGEBYSCORE', AVAILABLE, '(' .. rules.max, '-inf', 'LIMIT', 0, 1)[1]
  if not open then
    return reply('full', {saved = saved})
  end
end
local outcome = 'rejoined'
if not status then
  outcome = 'seated'
  redis.call('HSET', pkey, 'joined_ms', now)
end
redis.call('HSET', pkey, 'name', name)
set_conn(player_id, conn_id, conn_node, 'lobby')
touch_player(player_id)
if room_id and room_id ~= '' then
  touch_room(room_id)
  note_room(room_id)
  if status == 'playing' then release_lobby(player_id) end  -- match_found again: this connection is done too
else
  if status then outcome = 'requeued' end
  room_id = seat(player_id, {new_room_id}, new_room_node)
end
local result = view(room_id)
result.joined_ms = tonumber(redis.call('HGET', pkey, 'joined_ms'))
result.saved = saved
return reply(outcome, result)
