-- Recovery from Postgres: a live match whose host is gone and that the lobby has lost (Redis lost its data, or
-- the room's keys expired) is claimed by one node, exactly once. Refused while the lobby still knows the room
-- ('exists': the sweep and the snapshot path handle it), still has its snapshot ('snapshot': restored from
-- Redis), or saw it end ('over': finish.lua marks it for an hour, while its result may still be on its way to
-- Postgres); and for a match another node claimed ('taken'). The claim is kept an hour. A node that claims a
-- match again (its answer was lost) gets 'claimed' again. The room goes on the old node's `swept` list, so
-- that the old node, if it only stalled, closes its copy when it is back (as after a sweep).
-- With `members` (JSON, join order: {id, name}), the room is registered again as running on `node`, and its
-- players placed in it, so that the lobby sends them there when they come back: those without a placement,
-- those waiting in the queue and those seated in a room not started yet; a player playing another match
-- stays there (and is left out of the answer's players). Without it (a match that is only to be cancelled)
-- nothing else changes.
-- ARGV[4..]: room_id, match_id, node, created_ms, started_ms, members ('' for none), old_node
local room_id, match_id, node = ARGV[4], ARGV[5], ARGV[6]
local created_ms, started_ms, members, old_node = ARGV[7], ARGV[8], ARGV[9], ARGV[10] or ''
local key = room_key(room_id)
local claim = base .. ':match:' .. match_id .. ':claim'
local holder = redis.call('GET', claim)
if holder and holder ~= node then return reply('taken', {room = room_id, node = holder}) end
if holder and members == '' then return reply('claimed', {room = room_id}) end
if holder and redis.call('HGET', key, 'node') == node then return reply('claimed', view(room_id)) end
if redis.call('EXISTS', key) == 1 then return reply('exists', {room = room_id}) end
-- (A node putting back its own running match, `old_node` = `node`, may have snapshotted it since Redis lost it.)
if old_node ~= node and redis.call('EXISTS', base .. ':room:' .. room_id .. ':snapshot') == 1 then
  return reply('snapshot', {room = room_id})
end
if redis.call('EXISTS', base .. ':room:' .. room_id .. ':over') == 1 then return reply('over', {room = room_id}) end
redis.call('SET', claim, node, 'EX', 3600)
if old_node ~= '' and old_node ~= node then
  redis.call('SADD', node_swept_key(old_node), room_id)
  redis.call('EXPIRE', node_swept_key(old_node), 3600)
end
if members == '' then return reply('claimed', {room = room_id}) end
-- Its version starts past any the room had before Redis lost it: nodes that remember an older view of the room
-- (hosted by the dead node) take this one as the newer.
redis.call('HSET', key, 'mode', rules.mode, 'node', node, 'state', 'running', 'created_ms', created_ms,
           'started_ms', started_ms, 'players', '[]', 'version', now)
redis.call('SADD', ROOMS, room_id)
redis.call('SADD', node_rooms_key(node), room_id)
local order = {}
for _, entry in ipairs(cjson.decode(members)) do
  local pkey = player_key(entry.id)
  local p = redis.call('HMGET', pkey, 'room', 'status')
  local held, status = p[1], p[2]
  local free = true
  if status and held and held ~= '' and held ~= room_id then
    if redis.call('HGET', room_key(held), 'state') == 'running' then
      free = false  -- playing another match since: they stay there
    else
      remove_from_room(held, entry.id)
    end
  end
  if free then
    redis.call('SADD', players_key(room_id), entry.id)
    table.insert(order, {id = entry.id, name = entry.name})
    if not status then redis.call('HSET', pkey, 'joined_ms', now, 'conn', '', 'conn_node', '', 'conn_kind', '') end
    redis.call('HSET', pkey, 'name', entry.name, 'room', room_id, 'node', node, 'status', 'playing')
    redis.call('ZREM', QUEUE, entry.id)
    release_lobby(entry.id)  -- a lobby connection waiting in the queue gets match_found for this room
    touch_player(entry.id)
  end
end
redis.call('HSET', key, 'players', encode_list(order))
-- A game that takes newcomers while it runs (a line, a relay room) offers its free places again, as when it
-- started: Redis lost the list of rooms with a free place with everything else.
if rules.join_running and #order < rules.max then
  redis.call('ZADD', AVAILABLE, #order, room_id)
end
bump(room_id)
touch_room(room_id)
note_room(room_id)
return reply('claimed', view(room_id))
