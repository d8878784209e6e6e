-- Shared by every lobby script: lobby/seating.py puts this in front of each script's body before loading it.
-- ARGV[1] is the key base `PREFIX:{MODE}` (every key below shares the mode's hash tag), ARGV[2] the time in
-- ms, ARGV[3] the rules as JSON: min, max, countdown_ms, backfill, join_running, player_ttl, room_ttl, mode.
local base = ARGV[1]
local now = tonumber(ARGV[2])
local rules = cjson.decode(ARGV[3])
local AVAILABLE = base .. ':rooms:available'
local QUEUE = base .. ':queue'
local ROOMS = base .. ':rooms'
-- A room's data outlives its shadow key by this long, so the expiry handler can still read it.
local SHADOW_MARGIN = 120

local function room_key(id) return base .. ':room:' .. id end
local function players_key(id) return base .. ':room:' .. id .. ':players' end
local function shadow_key(id) return base .. ':room:' .. id .. ':ttl' end
local function player_key(id) return base .. ':player:' .. id end
local function node_rooms_key(node) return base .. ':node:' .. node .. ':rooms' end
local function node_conns_key(node) return base .. ':node:' .. node .. ':conns' end
local function node_swept_key(node) return base .. ':node:' .. node .. ':swept' end
local function node_adopt_key(node) return base .. ':node:' .. node .. ':adopt' end

-- cjson encodes an empty table as an object: keep JSON arrays arrays.
local function decode_list(raw)
  if not raw or raw == '' then return {} end
  return cjson.decode(raw)
end
local function encode_list(list)
  if #list == 0 then return '[]' end
  return cjson.encode(list)
end

-- The room's players in join order, as {id = ..., name = ...} entries.
local function roster(room_id) return decode_list(redis.call('HGET', room_key(room_id), 'players')) end

local function touch_room(room_id)
  local ttl = rules.room_ttl
  redis.call('EXPIRE', room_key(room_id), ttl + SHADOW_MARGIN)
  redis.call('EXPIRE', players_key(room_id), ttl + SHADOW_MARGIN)
  redis.call('SET', shadow_key(room_id), '1', 'EX', ttl)
end

-- Every change of a room bumps its version, so that a node can tell a stale read from a fresh one.
local function bump(room_id) redis.call('HINCRBY', room_key(room_id), 'version', 1) end

local function touch_player(player_id) redis.call('EXPIRE', player_key(player_id), rules.player_ttl) end

-- Nodes to tell about what a script changed: each touched room's host and its players' connection nodes.
local notify = {}
local function note_node(node)
  if node and node ~= '' then notify[node] = true end
end
local function note_room(room_id)
  note_node(redis.call('HGET', room_key(room_id), 'node'))
  for _, id in ipairs(redis.call('SMEMBERS', players_key(room_id))) do
    note_node(redis.call('HGET', player_key(id), 'conn_node'))
  end
end
local function notified()
  local list = {}
  for node in pairs(notify) do table.insert(list, node) end
  return list
end

local function set_conn(player_id, conn_id, conn_node, kind)
  local old = redis.call('HGET', player_key(player_id), 'conn_node')
  if old and old ~= '' and old ~= conn_node then redis.call('SREM', node_conns_key(old), player_id) end
  redis.call('HSET', player_key(player_id), 'conn', conn_id, 'conn_node', conn_node, 'conn_kind', kind)
  if conn_node ~= '' then redis.call('SADD', node_conns_key(conn_node), player_id) end
end

-- A matched player's lobby connection is done (match_found ends it): let go of it now, so that closing it
-- costs no write, and a game connection or another lobby connection may take the player at once.
local function release_lobby(player_id)
  local p = redis.call('HMGET', player_key(player_id), 'conn_kind', 'conn_node')
  if p[1] == 'lobby' then
    note_node(p[2])  -- that node still has to send match_found
    if p[2] and p[2] ~= '' then redis.call('SREM', node_conns_key(p[2]), player_id) end
    redis.call('HSET', player_key(player_id), 'conn', '', 'conn_node', '', 'conn_kind', '')
  end
end

local function start_room(room_id)
  local key = room_key(room_id)
  redis.call('HSET', key, 'state', 'running', 'started_ms', now)
  redis.call('HDEL', key, 'countdown_ends_ms')
  -- A game that takes newcomers while it runs (a line, a relay room) keeps offering its free places.
  local count = redis.call('SCARD', players_key(room_id))
  if rules.join_running and count < rules.max then
    redis.call('ZADD', AVAILABLE, count, room_id)
  else
    redis.call('ZREM', AVAILABLE, room_id)
  end
  bump(room_id)
  for _, id in ipairs(redis.call('SMEMBERS', players_key(room_id))) do
    -- A player whose hash expired is not brought back as a key without a TTL.
    if redis.call('EXISTS', player_key(id)) == 1 then
      redis.call('HSET', player_key(id), 'status', 'playing')
      release_lobby(id)
    end
    redis.call('ZREM', QUEUE, id)
  end
end

-- After a room's player count changed: the countdown starts at the minimum and stops below it, the match
-- starts at the maximum, and rooms:available holds exactly the rooms with a seat to give.
local function settle(room_id)
  local key = room_key(room_id)
  local count = redis.call('SCARD', players_key(room_id))
  local state = redis.call('HGET', key, 'state')
  if state == 'running' then
    -- An emptied running room is not reopened: its host closes it.
    if rules.backfill and count > 0 and count < rules.max then
      redis.call('ZADD', AVAILABLE, count, room_id)
    else
      redis.call('ZREM', AVAILABLE, room_id)
    end
    return state
  end
  if count >= rules.max then
    start_room(room_id)
    return 'running'
  end
  if state == 'waiting' and count >= rules.min then
    state = 'countdown'
    redis.call('HSET', key, 'state', state, 'countdown_ends_ms', now + rules.countdown_ms)
  elseif state == 'countdown' and count < rules.min then
    state = 'waiting'
    redis.call('HSET', key, 'state', state)
    redis.call('HDEL', key, 'countdown_ends_ms')
  end
  redis.call('ZADD', AVAILABLE, count, room_id)
  return state
end

local function delete_room(room_id)
  local node = redis.call('HGET', room_key(room_id), 'node')
  redis.call('DEL', room_key(room_id), players_key(room_id), shadow_key(room_id))
  redis.call('ZREM', AVAILABLE, room_id)
  redis.call('SREM', ROOMS, room_id)
  if node then redis.call('SREM', node_rooms_key(node), room_id) end
end

local function open_room(room_id, node)
  redis.call('HSET', room_key(room_id), 'mode', rules.mode, 'node', node, 'state', 'waiting', 'created_ms', now,
             'players', '[]')
  redis.call('SADD', ROOMS, room_id)
  redis.call('SADD', node_rooms_key(node), room_id)
  touch_room(room_id)
end

local function add_to_room(room_id, player_id)
  local pkey = player_key(player_id)
  redis.call('SADD', players_key(room_id), player_id)
  local order = roster(room_id)
  table.insert(order, {id = player_id, name = redis.call('HGET', pkey, 'name') or ''})
  redis.call('HSET', room_key(room_id), 'players', encode_list(order))
  bump(room_id)
  redis.call('HSET', pkey, 'room', room_id, 'node', redis.call('HGET', room_key(room_id), 'node'))
  touch_room(room_id)
  if settle(room_id) == 'running' then
    redis.call('HSET', pkey, 'status', 'playing')
    redis.call('ZREM', QUEUE, player_id)
    release_lobby(player_id)
  else
    redis.call('HSET', pkey, 'status', 'waiting')
  end
  note_room(room_id)
end

-- Take a player out of a room's set and join-order list; a room emptied before its match is deleted.
-- Returns the room's state afterwards ('closed' when deleted), or nil when the player was not in it.
local function remove_from_room(room_id, player_id)
  if redis.call('SREM', players_key(room_id), player_id) == 0 then return nil end
  note_room(room_id)
  local kept = {}
  for _, entry in ipairs(roster(room_id)) do
    if entry.id ~= player_id then table.insert(kept, entry) end
  end
  redis.call('HSET', room_key(room_id), 'players', encode_list(kept))
  bump(room_id)
  local state = redis.call('HGET', room_key(room_id), 'state')
  if state ~= 'running' and #kept == 0 then
    delete_room(room_id)
    return 'closed'
  end
  return settle(room_id)
end

-- Seat a player who holds no seat (their hash has name and joined_ms): the fullest room with a free seat,
-- else a new room from `fresh` (a list of unused room ids, consumed) on `node`, else the queue alone.
-- Waiting players sit in the queue scored by when they began to wait, so re-queued players come first.
local function seat(player_id, fresh, node)
  local pkey = player_key(player_id)
  redis.call('ZADD', QUEUE, redis.call('HGET', pkey, 'joined_ms'), player_id)
  local room_id = redis.call('ZREVRANGEBYSCORE', AVAILABLE, '(' .. rules.max, '-inf', 'LIMIT', 0, 1)[1]
  -- An open room whose hash expired without its expiry being handled (an event lost, expiry events off):
  -- forget it here rather than seat anyone in a room that is not there.
  while room_id and redis.call('EXISTS', room_key(room_id)) == 0 do
    redis.call('ZREM', AVAILABLE, room_id)
    redis.call('SREM', ROOMS, room_id)
    redis.call('DEL', players_key(room_id), shadow_key(room_id))
    room_id = redis.call('ZREVRANGEBYSCORE', AVAILABLE, '(' .. rules.max, '-inf', 'LIMIT', 0, 1)[1]
  end
  if not room_id then
    room_id = table.remove(fresh, 1)
    if not room_id or room_id == '' or node == '' then
      redis.call('HSET', pkey, 'status', 'queued', 'room', '', 'node', '')
      return ''
    end
    open_room(room_id, node)
  end
  add_to_room(room_id, player_id)
  return room_id
end

-- A running room with a free seat (backfill on) takes the longest-waiting players, out of their rooms.
local function backfill(room_id)
  while redis.call('HGET', room_key(room_id), 'state') == 'running'
      and redis.call('SCARD', players_key(room_id)) < rules.max do
    local head = redis.call('ZRANGE', QUEUE, 0, 0)[1]
    if not head then return end
    local held = redis.call('HGET', player_key(head), 'room')
    if not held then
      redis.call('ZREM', QUEUE, head)  -- its player is gone
    else
      if held ~= '' then remove_from_room(held, head) end
      add_to_room(room_id, head)
    end
  end
end

-- Forget a player entirely: their seat (with backfill of a running room), their queue place, their hash.
local function drop_player(player_id)
  local p = redis.call('HMGET', player_key(player_id), 'room', 'conn_node')
  redis.call('DEL', player_key(player_id))
  redis.call('ZREM', QUEUE, player_id)
  if p[2] and p[2] ~= '' then redis.call('SREM', node_conns_key(p[2]), player_id) end
  local room_id = p[1]
  if room_id and room_id ~= '' then
    local state = remove_from_room(room_id, player_id)
    if state == 'running' and rules.backfill then backfill(room_id) end
    return state
  end
  return nil
end

-- A room that never started is dissolved: its players who are still connected are seated again, in join
-- order and ahead of newcomers (they keep their place in the queue); the others are forgotten.
local function dissolve(room_id, fresh, node)
  note_room(room_id)
  local members = roster(room_id)
  delete_room(room_id)
  for _, entry in ipairs(members) do
    local p = redis.call('HMGET', player_key(entry.id), 'room', 'conn')
    if p[1] == room_id then
      if p[2] and p[2] ~= '' then
        redis.call('HSET', player_key(entry.id), 'room', '')
        seat(entry.id, fresh, node)
      else
        drop_player(entry.id)
      end
    end
  end
end

-- A running room whose host is gone: its players lose their seat but keep their place in line for when they
-- come back to the lobby (the room itself is restored by recovery when there is a snapshot to restore).
local function requeue_running(room_id)
  note_room(room_id)
  for _, id in ipairs(redis.call('SMEMBERS', players_key(room_id))) do
    local pkey = player_key(id)
    if redis.call('HGET', pkey, 'room') == room_id then
      -- Their game connection was on the dead host: it is gone too.
      local conn_node = redis.call('HGET', pkey, 'conn_node')
      if conn_node and conn_node ~= '' then redis.call('SREM', node_conns_key(conn_node), id) end
      redis.call('HSET', pkey, 'room', '', 'node', '', 'status', 'queued', 'conn', '', 'conn_node', '',
                 'conn_kind', '')
    end
  end
  delete_room(room_id)
end

-- A room is over: its players are free to join again, and its keys are gone.
local function finish_room(room_id)
  note_room(room_id)
  for _, id in ipairs(redis.call('SMEMBERS', players_key(room_id))) do
    local p = redis.call('HMGET', player_key(id), 'room', 'conn_node')
    if p[1] == room_id then
      redis.call('DEL', player_key(id))
      redis.call('ZREM', QUEUE, id)
      if p[2] and p[2] ~= '' then redis.call('SREM', node_conns_key(p[2]), id) end
    end
  end
  delete_room(room_id)
end

-- What a client needs to know of a room (players stay a JSON string: decoded by the caller).
local function view(room_id)
  if not room_id or room_id == '' then return {room = '', state = 'queued', players = '[]'} end
  local r = redis.call('HMGET', room_key(room_id), 'state', 'node', 'countdown_ends_ms', 'players', 'started_ms',
                      'version')
  if not r[1] then return {room = room_id, state = 'closed', players = '[]'} end
  return {room = room_id, state = r[1], node = r[2], countdown_ends_ms = tonumber(r[3]), players = r[4] or '[]',
          started_ms = tonumber(r[5]), version = tonumber(r[6])}
end

local function reply(outcome, fields)
  fields = fields or {}
  fields.outcome = outcome
  fields.notify = notified()
  return cjson.encode(fields)
end
