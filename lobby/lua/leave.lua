-- A player gives up their place. `conn_id` is the connection asking ('*': whichever; '': only when no
-- connection holds the player); a stale connection changes nothing. `scope` 'queue' (a lobby connection
-- ends) keeps the seat of a player already matched, and only lets go of the connection; 'seat' gives the
-- seat up in any state (a player leaving a match), freeing it for backfill when that is on.
-- ARGV[4..]: player_id, conn_id, scope
local player_id, conn_id, scope = ARGV[4], ARGV[5], ARGV[6]
local pkey = player_key(player_id)
local p = redis.call('HMGET', pkey, 'room', 'status', 'conn', 'conn_node')
if not p[2] then return reply('not_seated') end
if conn_id ~= '*' and (p[3] or '') ~= conn_id then return reply('stale', {room = p[1] or ''}) end
if scope == 'queue' and p[2] == 'playing' then
  if p[4] and p[4] ~= '' then redis.call('SREM', node_conns_key(p[4]), player_id) end
  redis.call('HSET', pkey, 'conn', '', 'conn_node', '', 'conn_kind', '')
  return reply('kept', {room = p[1] or ''})
end
local state = drop_player(player_id)
return reply('left', {room = p[1] or '', state = state or ''})
