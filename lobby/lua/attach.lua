-- A player's game connection reached the node hosting their room, which allows one game connection per
-- player itself: this connection supersedes whatever connection the player had (their lobby connection).
-- ARGV[4..]: player_id, room_id, conn_id, conn_node
local player_id, room_id, conn_id, conn_node = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local pkey = player_key(player_id)
if redis.call('HGET', pkey, 'room') ~= room_id or redis.call('SISMEMBER', players_key(room_id), player_id) == 0 then
  return reply('not_in_room', view(room_id))
end
set_conn(player_id, conn_id, conn_node, 'game')
touch_player(player_id)
touch_room(room_id)
return reply('attached', view(room_id))
