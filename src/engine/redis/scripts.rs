//! The Lua scripts of the Redis engine. Each runs atomically on the server, so a publish's
//! seq, history entry, id memory and pub/sub message are one step that no other node can
//! observe half done.
//!
//! Key layout for room `R` under prefix `P` (the `{…}` hash tag keeps a room's keys in one
//! Redis Cluster slot):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `P:{R}:meta` | hash | `seq` (the newest seq), `bytes` (bytes of frames in history) |
//! | `P:{R}:history` | stream | entry `0-<seq>` with fields `f` (the frame) and `t` (ms) |
//! | `P:{R}:ids` | sorted set | member = publisher-scoped message id, score = its seq |
//!
//! and the pub/sub channel `P:room:R` carries `<seq>:<frame>`. A dropped connection's
//! resume state is `P:resume:<connection id>`, a JSON `{"user", "rooms"}` expiring after
//! `resume.ttl`. Each node (id `N`, a UUID per process) keeps `P:node:N` alive (a
//! second's refresh, three seconds' expiry), is listed in the set `P:nodes`, lists its
//! sessions in the hash `P:sessions:N` and its rooms with their member counts in
//! `P:rooms:N`, and takes orders (JSON) on the channel `P:node:N`.
//!
//! The order and room-list scripts build node keys from the prefix, so the engine needs one
//! Redis primary (with replicas or Sentinel for failover), not Redis Cluster.

/// Publishes one message.
///
/// KEYS: meta, history, ids. ARGV: channel, the frame before its seq, the frame after its
/// seq, the dedup key (`""` for none), history size, history max bytes, TTL in ms, dedup
/// size. Returns `{seq, 0}` for a new message, `{original seq, 1}` for a repeated id.
pub const PUBLISH: &str = r#"
local dedup = ARGV[4]
if dedup ~= '' then
  local seen = redis.call('ZSCORE', KEYS[3], dedup)
  if seen then
    return {tonumber(seen), 1}
  end
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local seq_text = string.format('%d', seq)
local frame = ARGV[2] .. seq_text .. ARGV[3]
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('XADD', KEYS[2], '0-' .. seq_text, 'f', frame, 't', now_ms)
local len = redis.call('XLEN', KEYS[2])
local bytes
if len == 1 then
  -- History had expired or was empty: the byte count starts again.
  redis.call('HSET', KEYS[1], 'bytes', #frame)
  bytes = #frame
else
  bytes = redis.call('HINCRBY', KEYS[1], 'bytes', #frame)
end
local size = tonumber(ARGV[5])
local max_bytes = tonumber(ARGV[6])
-- Oldest out first, over the count or the byte budget; the newest always stays.
while len > 1 and (len > size or bytes > max_bytes) do
  local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
  redis.call('XDEL', KEYS[2], oldest[1])
  bytes = redis.call('HINCRBY', KEYS[1], 'bytes', -#oldest[2][2])
  len = len - 1
end
if dedup ~= '' then
  redis.call('ZADD', KEYS[3], seq, dedup)
  local extra = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[8])
  if extra > 0 then
    redis.call('ZREMRANGEBYRANK', KEYS[3], 0, extra - 1)
  end
  redis.call('PEXPIRE', KEYS[3], ARGV[7])
end
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('PEXPIRE', KEYS[2], ARGV[7])
redis.call('PUBLISH', ARGV[1], seq_text .. ':' .. frame)
return {seq, 0}
"#;

/// Reads history after a seq, first dropping entries older than the TTL.
///
/// KEYS: meta, history. ARGV: after seq, TTL in ms. Returns `{newest seq, oldest seq kept
/// (0 when none), seq, frame, seq, frame, …}`.
pub const SINCE: &str = r#"
local last = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local now = redis.call('TIME')
local cutoff = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[2])
local counted = redis.call('EXISTS', KEYS[1]) == 1
while true do
  local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
  if not oldest or tonumber(oldest[2][4]) >= cutoff then
    break
  end
  redis.call('XDEL', KEYS[2], oldest[1])
  if counted then
    redis.call('HINCRBY', KEYS[1], 'bytes', -#oldest[2][2])
  end
end
local function seq_of(id)
  return tonumber(string.match(id, '^0%-(%d+)$'))
end
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
local out = {last, 0}
if first then
  out[2] = seq_of(first[1])
end
local from = string.format('0-%d', tonumber(ARGV[1]) + 1)
for _, entry in ipairs(redis.call('XRANGE', KEYS[2], from, '+')) do
  table.insert(out, seq_of(entry[1]))
  table.insert(out, entry[2][2])
end
return out
"#;

/// Takes a dropped connection's resume state if the asking user owns it.
///
/// KEYS: the resume key. ARGV: the user. Returns the JSON list of rooms, or nil.
pub const REATTACH: &str = r#"
local stored = redis.call('GET', KEYS[1])
if not stored then
  return false
end
local state = cjson.decode(stored)
if state.user ~= ARGV[1] then
  return false
end
redis.call('DEL', KEYS[1])
return cjson.encode(state.rooms)
"#;

/// What the presence scripts share: `now_ms()` (Redis's clock, so nodes' clocks do not
/// matter); `present(members, conns, since, now_ms)`, who is present counting only
/// connections whose presence has not expired, as `{user, connections, joined_at, …}` in
/// order of arrival; and `leave(KEYS, conn)`, which forgets a connection already taken out
/// of the members set and answers its user when that was the user's last connection.
const PRESENCE_FNS: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function present(members, conns, since, now)
  local counts, order = {}, {}
  for _, conn in ipairs(redis.call('ZRANGEBYSCORE', members, now, '+inf')) do
    local user = redis.call('HGET', conns, conn)
    if user then
      if not counts[user] then
        counts[user] = 0
        table.insert(order, user)
      end
      counts[user] = counts[user] + 1
    end
  end
  local out = {}
  for _, user in ipairs(order) do
    table.insert(out, user)
    table.insert(out, counts[user])
    table.insert(out, redis.call('HGET', since, user) or '')
  end
  return out
end
local function leave(keys, conn)
  local user = redis.call('HGET', keys[2], conn)
  redis.call('HDEL', keys[2], conn)
  if not user or redis.call('HINCRBY', keys[3], user, -1) > 0 then
    return nil
  end
  redis.call('HDEL', keys[3], user)
  redis.call('HDEL', keys[4], user)
  return user
end
"#;

/// Records a connection as present.
///
/// KEYS: members (sorted set: connection → expiry ms), conns (hash: connection → user),
/// users (hash: user → connections), since (hash: user → first arrival). ARGV: connection,
/// user, presence TTL ms, arrival time (RFC 3339), channel, arrival frame. Publishes
/// `p:<connection>:<frame>` for a user's first connection. Returns `{first (0/1), user,
/// connections, joined_at, …}`.
pub fn presence_add() -> String {
    format!(
        "{PRESENCE_FNS}{}",
        r#"
local now = now_ms()
local ttl = tonumber(ARGV[3])
local first = 0
if redis.call('ZADD', KEYS[1], now + ttl, ARGV[1]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  if redis.call('HINCRBY', KEYS[3], ARGV[2], 1) == 1 then
    redis.call('HSET', KEYS[4], ARGV[2], ARGV[4])
    first = 1
    redis.call('PUBLISH', ARGV[5], 'p:' .. ARGV[1] .. ':' .. ARGV[6])
  end
end
for i = 1, 4 do
  redis.call('PEXPIRE', KEYS[i], ttl * 2)
end
local out = {first}
for _, v in ipairs(present(KEYS[1], KEYS[2], KEYS[4], now)) do
  table.insert(out, v)
end
return out
"#
    )
}

/// Lists who is present. KEYS: members, conns, since. Returns `{user, connections,
/// joined_at, …}`.
pub fn presence_list() -> String {
    format!(
        "{PRESENCE_FNS}{}",
        "return present(KEYS[1], KEYS[2], KEYS[3], now_ms())\n"
    )
}

/// Removes a connection. KEYS: members, conns, users, since. ARGV: connection, channel,
/// departure frame. Publishes `p::<frame>` and returns the user when it was their last
/// connection; nil otherwise.
pub fn presence_remove() -> String {
    format!(
        "{PRESENCE_FNS}{}",
        r#"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  return false
end
local user = leave(KEYS, ARGV[1])
if not user then
  return false
end
redis.call('PUBLISH', ARGV[2], 'p::' .. ARGV[3])
return user
"#
    )
}

/// Refreshes this node's connections and drops every connection nobody refreshed within
/// the TTL (its node died). KEYS: members, conns, users, since. ARGV: presence TTL ms,
/// then the connections. Returns the users whose last connection was dropped.
pub fn presence_refresh() -> String {
    format!(
        "{PRESENCE_FNS}{}",
        r#"
local now = now_ms()
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i])
end
local gone = {}
for _, conn in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)) do
  redis.call('ZREM', KEYS[1], conn)
  local user = leave(KEYS, conn)
  if user then
    table.insert(gone, user)
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  for i = 1, 4 do
    redis.call('PEXPIRE', KEYS[i], ttl * 2)
  end
end
return gone
"#
    )
}

/// Sends an order to the node holding a session. KEYS: the node set (`P:nodes`). ARGV: the
/// key prefix, the connection id, the order (JSON). A node is alive while `P:node:<id>`
/// exists (each node refreshes it every second); its sessions are `P:sessions:<id>`.
/// Returns 1 when a live node holds the session, 0 otherwise.
pub const SEND_ORDER: &str = r#"
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. ':node:' .. node) == 0 then
    redis.call('SREM', KEYS[1], node)
  elseif redis.call('HEXISTS', ARGV[1] .. ':sessions:' .. node, ARGV[2]) == 1 then
    redis.call('PUBLISH', ARGV[1] .. ':node:' .. node, ARGV[3])
    return 1
  end
end
return 0
"#;

/// The rooms with members on a live node. KEYS: the node set. ARGV: the key prefix.
/// Returns `{room, members, seq, …}`.
pub const ROOMS: &str = r#"
local members, order = {}, {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. ':node:' .. node) == 0 then
    redis.call('SREM', KEYS[1], node)
  else
    local counts = redis.call('HGETALL', ARGV[1] .. ':rooms:' .. node)
    for i = 1, #counts, 2 do
      local room = counts[i]
      if not members[room] then
        members[room] = 0
        table.insert(order, room)
      end
      members[room] = members[room] + tonumber(counts[i + 1])
    end
  end
end
local out = {}
for _, room in ipairs(order) do
  table.insert(out, room)
  table.insert(out, members[room])
  table.insert(out, tonumber(redis.call('HGET', ARGV[1] .. ':{' .. room .. '}:meta', 'seq') or '0'))
end
return out
"#;
