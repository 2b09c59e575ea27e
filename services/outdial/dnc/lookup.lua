-- DNC index lookup. KEYS[1] = current-version key, KEYS[2..] = index shards.
-- ARGV[1] = the version the caller built the key names for; then pairs (op, member):
--   op "b<k>" = GETBIT KEYS[k] member, op "s<k>" = SISMEMBER KEYS[k] member.
-- Returns a string of "0"/"1" (one per pair), or false when the current version moved (caller retries).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return false
end
local out = {}
local n = 0
for i = 2, #ARGV, 2 do
  local op = ARGV[i]
  local key = KEYS[tonumber(string.sub(op, 2))]
  local hit
  if string.byte(op, 1) == 98 then -- 'b'
    hit = redis.call('GETBIT', key, ARGV[i + 1])
  else
    hit = redis.call('SISMEMBER', key, ARGV[i + 1])
  end
  n = n + 1
  out[n] = hit == 1 and '1' or '0'
end
return table.concat(out)
