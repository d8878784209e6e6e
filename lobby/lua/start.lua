-- Start a room whose countdown has run out (called by the node hosting it when its timer fires).
-- KEYS[1] rooms:available
-- ARGV: base, room_id, now_ms, min_players
-- Returns {state, player_count}: "running" if it started now or before, else its unchanged state.
local available = KEYS[1]
local base, room_id, now, min_players = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local room_key = base .. ':room:' .. room_id
local room = redis.call('HMGET', room_key, 'state', 'countdown_ends_ms')
local state, ends = room[1], tonumber(room[2])
local count = redis.call('SCARD', room_key .. ':players')
if not state then
  return {'missing', 0}
end
if state == 'countdown' and ends and now >= ends and count >= min_players then
  state = 'running'
  redis.call('HSET', room_key, 'state', state, 'started_ms', now)
  redis.call('HDEL', room_key, 'countdown_ends_ms')
  redis.call('ZREM', available, room_id)
  local players = redis.call('SMEMBERS', room_key .. ':players')
  for _, id in ipairs(players) do
    redis.call('HSET', base .. ':player:' .. id, 'status', 'playing')
  end
end
return {state, count}
