-- Take a campaign's pacing lease if nobody holds it, with a fresh fencing token.
-- KEYS[1] lease, KEYS[2] fence counter; ARGV[1] replica id, ARGV[2] lease time (ms).
-- Returns the new token, or 0 when the lease is held by someone (possibly this replica: renew instead).
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return token
