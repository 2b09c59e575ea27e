-- Extend a lease only while it is still ours (compare-and-set on replica|token).
-- KEYS[1] lease; ARGV[1] expected value, ARGV[2] lease time (ms). Returns 1 renewed, 0 lost.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
