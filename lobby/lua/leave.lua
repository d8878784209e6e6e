-- A player gives up their seat. Before the match: an emptied room is removed, and a countdown that
-- falls below the minimum stops. In a running match the seat frees up for backfill when it is on.
-- KEYS[1] rooms:available
-- ARGV: base, player_id, min_players, backfill ("1" or "0")
-- Returns {outcome, room_id, player_count, state}; outcome is "left" or "not_seated".
local available = KEYS[1]
local base, player_id = ARGV[1], ARGV[2]
local min_players, backfill = tonumber(ARGV[3]), ARGV[4] == '1'

local player_key = base .. ':player:' .. player_id
local room_id = redis.call('HGET', player_key, 'room')
redis.call('DEL', player_key)
if not room_id then
  return {'not_seated', '', 0, ''}
end
local room_key = base .. ':room:' .. room_id
local players_key = room_key .. ':players'
if redis.call('SREM', players_key, player_id) == 0 then
  return {'not_seated', room_id, 0, ''}
end

local order = cjson.decode(redis.call('HGET', room_key, 'players') or '[]')
local kept = {}
for _, id in ipairs(order) do
  if id ~= player_id then table.insert(kept, id) end
end
-- cjson encodes an empty table as an object; keep the field a JSON array.
redis.call('HSET', room_key, 'players', #kept == 0 and '[]' or cjson.encode(kept))
local count = redis.call('SCARD', players_key)
local state = redis.call('HGET', room_key, 'state')

if state == 'running' then
  if backfill then
    redis.call('ZADD', available, count, room_id)
  end
  return {'left', room_id, count, state}
end
if count == 0 then
  redis.call('DEL', room_key, players_key)
  redis.call('ZREM', available, room_id)
  return {'left', room_id, 0, 'closed'}
end
if state == 'countdown' and count < min_players then
  state = 'waiting'
  redis.call('HSET', room_key, 'state', state)
  redis.call('HDEL', room_key, 'countdown_ends_ms')
end
redis.call('ZADD', available, count, room_id)
return {'left', room_id, count, state}
