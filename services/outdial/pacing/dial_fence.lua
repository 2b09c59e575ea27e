-- The last check before an origination: is this replica still the campaign's lease holder with the
-- current fencing token? If so, register the call as in flight, atomically with the check.
-- KEYS[1] lease, KEYS[2] fence counter, KEYS[3] calls in flight;
-- ARGV[1] expected lease value (replica|token), ARGV[2] token, ARGV[3] call id, ARGV[4] dial time (ms).
-- Returns 1 (go ahead) or 0 (fenced off: do not dial).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return 0
end
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
return 1
