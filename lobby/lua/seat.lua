-- Seat a player: back in their room if they already hold a seat, else in the fullest open room,
-- else in a new room. Starts the countdown at the minimum and the match at the maximum.
-- KEYS[1] rooms:available
-- ARGV: base, player_id, now_ms, min_players, max_players, countdown_ms, new_room_id, node_id, mode,
--       player_ttl_s, room_ttl_s
-- Returns {outcome, room_id, player_count, state, countdown_ends_ms}; outcome is
-- "seated", "rejoined" or "no_room" (no open room and no new room offered).
local available = KEYS[1]
local base, player_id, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local min_players, max_players = tonumber(ARGV[4]), tonumber(ARGV[5])
local countdown_ms, new_room_id, node_id, mode = tonumber(ARGV[6]), ARGV[7], ARGV[8], ARGV[9]
local player_ttl, room_ttl = tonumber(ARGV[10]), tonumber(ARGV[11])

local player_key = base .. ':player:' .. player_id
local held = redis.call('HGET', player_key, 'room')
if held then
  local held_key = base .. ':room:' .. held
  if redis.call('SISMEMBER', held_key .. ':players', player_id) == 1 then
    redis.call('EXPIRE', player_key, player_ttl)
    local room = redis.call('HMGET', held_key, 'state', 'countdown_ends_ms')
    return {'rejoined', held, redis.call('SCARD', held_key .. ':players'), room[1], room[2] or ''}
  end
end

-- The fullest room with a free seat, so that rooms complete fast.
local open = redis.call('ZREVRANGEBYSCORE', available, '(' .. max_players, '-inf', 'LIMIT', 0, 1)
local room_id = open[1]
if not room_id then
  if new_room_id == '' then
    return {'no_room', '', 0, '', ''}
  end
  room_id = new_room_id
  redis.call('HSET', base .. ':room:' .. room_id, 'mode', mode, 'node', node_id, 'state', 'waiting',
             'created_ms', now, 'players', '[]')
end
local room_key = base .. ':room:' .. room_id
local players_key = room_key .. ':players'

redis.call('SADD', players_key, player_id)
local order = cjson.decode(redis.call('HGET', room_key, 'players') or '[]')
table.insert(order, player_id)
redis.call('HSET', room_key, 'players', cjson.encode(order))
local count = redis.call('SCARD', players_key)
local state = redis.call('HGET', room_key, 'state')

if count >= max_players then
  state = 'running'
  redis.call('HSET', room_key, 'state', state, 'started_ms', now)
  redis.call('HDEL', room_key, 'countdown_ends_ms')
  redis.call('ZREM', available, room_id)
else
  if state == 'waiting' and count >= min_players then
    state = 'countdown'
    redis.call('HSET', room_key, 'state', state, 'countdown_ends_ms', now + countdown_ms)
  end
  redis.call('ZADD', available, count, room_id)
end

redis.call('HSET', player_key, 'room', room_id, 'node', redis.call('HGET', room_key, 'node'),
           'status', state == 'running' and 'playing' or 'waiting', 'joined_ms', now)
redis.call('EXPIRE', player_key, player_ttl)
redis.call('EXPIRE', room_key, room_ttl)
redis.call('EXPIRE', players_key, room_ttl)
return {'seated', room_id, count, state, redis.call('HGET', room_key, 'countdown_ends_ms') or ''}
