"""The Lua scripts of the Redis backend: each runs atomically in Redis, so that a check and the
write it guards cannot be split by another node (docs/cluster.md, "Fencing").

An ownership token is `"<epoch> <node> <run> <conn>"`: `epoch` from `INCR <prefix>:epoch` inside the
script (it only grows), the node's name, a random id of the node's process (a node restarted under the same name
is another run), and the connection's number in that process.
"""

from __future__ import annotations

__all__ = ["BUMP_EPOCH", "CLAIM", "GONE", "RECLAIM", "REMOVE", "UPDATE"]

#: KEYS: owner, epoch.  ARGV: node, run, conn.  A HELLO's claim: a new epoch (`INCR`), and the
#: id taken unless a newer claim (higher epoch) holds it.  Returns {1, token, previous token or
#: nil} or {0, token, the newer token}.
CLAIM = """
local e = redis.call('INCR', KEYS[2])
local token = e .. ' ' .. ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. ARGV[3]
local cur = redis.call('GET', KEYS[1])
if cur then
  local ce = tonumber(string.match(cur, '^(%d+) '))
  if ce and ce > e then return {0, token, cur} end
end
redis.call('SET', KEYS[1], token)
return {1, token, cur}
"""

#: KEYS: clients hash, owner.  ARGV: field, row, token ('' for a client without HELLO), event,
#: channel.  A state change, fenced: written and published only while `token` owns the id (a
#: missing owner key, after Redis lost its data, is taken back).  Returns 1, or 0 when fenced out.
UPDATE = """
if ARGV[3] ~= '' then
  local cur = redis.call('GET', KEYS[2])
  if not cur then
    redis.call('SET', KEYS[2], ARGV[3])
  elseif cur ~= ARGV[3] then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[5], ARGV[4])
return 1
"""

#: KEYS: clients hash, owner.  ARGV: field, token ('' without HELLO), event, channel.  A client of
#: this node is gone: its row goes, and its ownership if it still holds it.
REMOVE = """
redis.call('HDEL', KEYS[1], ARGV[1])
if ARGV[2] ~= '' and redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('DEL', KEYS[2])
end
redis.call('PUBLISH', ARGV[4], ARGV[3])
return 1
"""

#: KEYS: owner, clients hash, epoch.  ARGV: token ('' for a new one), node, run, conn, field, row,
#: lease key prefix, event, channel.  After a reconnect, a client of this node takes its id back
#: unless another node that is alive (its lease exists) took it meanwhile.  Returns {1, token} or
#: {0, token} when it lost it.
RECLAIM = """
local token = ARGV[1]
if token == '' then
  token = redis.call('INCR', KEYS[3]) .. ' ' .. ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. ARGV[4]
end
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= token then
  local node = string.match(cur, '^%d+ (%S+) ')
  if node and node ~= ARGV[2] and redis.call('EXISTS', ARGV[7] .. node) == 1 then return {0, token} end
end
redis.call('SET', KEYS[1], token)
redis.call('HSET', KEYS[2], ARGV[5], ARGV[6])
redis.call('PUBLISH', ARGV[9], ARGV[8])
return {1, token}
"""

#: KEYS: lease, clients hash, nodes set.  ARGV: node, owner key prefix, event, channel.  Declare
#: a node gone once its lease has run out (any node may, once: a live lease refuses): its rows
#: and the ids it owned are freed, and every node is told.  Returns 0 if the lease is alive.
GONE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local rows = redis.call('HVALS', KEYS[2])
for _, r in ipairs(rows) do
  local ok, row = pcall(cjson.decode, r)
  if ok and type(row) == 'table' and type(row['id']) == 'string' then
    local key = ARGV[2] .. row['id']
    local cur = redis.call('GET', key)
    if cur and string.match(cur, '^%d+ (%S+) ') == ARGV[1] then redis.call('DEL', key) end
  end
end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('PUBLISH', ARGV[4], ARGV[3])
return #rows + 1
"""

#: KEYS: epoch.  ARGV: the highest epoch this node holds.  After Redis lost its data, the counter
#: starts above every token still held, so that new claims stay newer than old ones.
BUMP_EPOCH = """
local c = tonumber(redis.call('GET', KEYS[1]) or '0')
if c < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""
