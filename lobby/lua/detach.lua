-- A player's connection ended without giving their place up: they keep it (a game seat until the reconnect
-- grace runs out, a lobby seat for a few seconds) but no longer count as connected. With `keep_node` the
-- player stays listed under the node that held the connection, so that if that node dies before the grace
-- is over, its sweep still lets the seat go. A stale connection changes nothing.
-- ARGV[4..]: player_id, conn_id, keep_node ('1' or '0')
local player_id, conn_id, keep_node = ARGV[4], ARGV[5], ARGV[6] == '1'
local p = redis.call('HMGET', player_key(player_id), 'conn', 'conn_node', 'room')
if not p[1] or p[1] ~= conn_id then return reply('stale') end
if keep_node then
  redis.call('HSET', player_key(player_id), 'conn', '', 'conn_kind', '')
else
  if p[2] and p[2] ~= '' then redis.call('SREM', node_conns_key(p[2]), player_id) end
  redis.call('HSET', player_key(player_id), 'conn', '', 'conn_node', '', 'conn_kind', '')
end
return reply('detached', {room = p[3] or ''})
