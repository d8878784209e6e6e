-- A node died. Its connections are gone: players waiting through it lose their seat at once, matched players
-- count as disconnected (they may come back through the lobby). Rooms it hosted that had not started move to
-- `new_host` (or, when no node takes rooms, are dissolved into the queue); running ones go to `new_host` for
-- recovery, listed in its `adopt` set (or, with no new host, back to the queue). Idempotent: a second
-- sweep of the same node finds nothing left to do.
-- Refused ('alive') while the node's heartbeat key exists: a node that restarts (or a stalled one that heart-beats
-- again) between a sweeper's "is it dead?" read and this script keeps its rooms, and restores them itself.
-- A draining node hands its rooms off the same way (`hand_off` = '1'), alive: its connections are its own to
-- close, and the players waiting through it keep their seats (they come back through another node's lobby).
-- ARGV[4..]: dead_node, new_host, alive_key (the node's heartbeat hash; '' to skip the check), hand_off
local dead, new_host, alive_key, hand_off = ARGV[4], ARGV[5], ARGV[6], ARGV[7] == '1'
if alive_key and alive_key ~= '' and redis.call('EXISTS', alive_key) == 1 then return reply('alive') end
local conns = node_conns_key(dead)
for _, id in ipairs(redis.call('SMEMBERS', conns)) do
  local p = redis.call('HMGET', player_key(id), 'conn_node', 'status')
  if p[1] == dead then
    if p[2] == 'playing' then
      redis.call('HSET', player_key(id), 'conn', '', 'conn_node', '', 'conn_kind', '')
      redis.call('SREM', conns, id)
    elseif not hand_off then
      drop_player(id)
    end
  end
end
if not hand_off then redis.call('DEL', conns) end
local function move(room_id)
  redis.call('HSET', room_key(room_id), 'node', new_host)
  bump(room_id)
  for _, id in ipairs(redis.call('SMEMBERS', players_key(room_id))) do
    if redis.call('HGET', player_key(id), 'room') == room_id then redis.call('HSET', player_key(id), 'node', new_host) end
  end
  redis.call('SADD', node_rooms_key(new_host), room_id)
  note_room(room_id)
end
local moved, recovered = 0, 0
for _, room_id in ipairs(redis.call('SMEMBERS', node_rooms_key(dead))) do
  local state = redis.call('HGET', room_key(room_id), 'state')
  if state == 'running' then
    -- Written down for the node, should it only have stalled: it closes exactly these rooms when it is back.
    if not hand_off then
      redis.call('SADD', node_swept_key(dead), room_id)
      redis.call('EXPIRE', node_swept_key(dead), 3600)
    end
    if new_host == '' then
      requeue_running(room_id)  -- no live node takes rooms: the players keep their place in line
    else
      -- Recovery: the new host restores the match from its snapshot (its players come back through the
      -- lobby, which sends them there), or gives its players back when there is none.
      move(room_id)
      redis.call('SADD', node_adopt_key(new_host), room_id)
    end
    recovered = recovered + 1
  elseif state and new_host == '' then
    dissolve(room_id, {}, '')  -- no live node takes rooms: its players wait in the queue instead
  elseif state then
    move(room_id)
    moved = moved + 1
  end
end
redis.call('DEL', node_rooms_key(dead))
return reply('swept', {moved = moved, recovered = recovered})
