-- Apply list changes to the live DNC index version. KEYS[1] = current-version key, KEYS[2] = that
-- version's meta hash, KEYS[3..] = index shards. ARGV[1] = version; then triples (op, shard name, member):
--   "b<k>" SETBIT KEYS[k] member 1, "c<k>" SETBIT KEYS[k] member 0, "a<k>" SADD, "r<k>" SREM.
-- Each shard touched is recorded in the meta hash (so the version can be deleted without SCAN).
-- Returns false when the current version moved (the caller retries against the new one).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return false
end
for i = 2, #ARGV, 3 do
  local op = ARGV[i]
  local code = string.sub(op, 1, 1)
  local key = KEYS[tonumber(string.sub(op, 2))]
  if code == 'b' then
    redis.call('SETBIT', key, ARGV[i + 2], 1)
  elseif code == 'c' then
    redis.call('SETBIT', key, ARGV[i + 2], 0)
  elseif code == 'a' then
    redis.call('SADD', key, ARGV[i + 2])
  else
    redis.call('SREM', key, ARGV[i + 2])
  end
  redis.call('HSET', KEYS[2], 'k:' .. ARGV[i + 1], 1)
end
return 1
