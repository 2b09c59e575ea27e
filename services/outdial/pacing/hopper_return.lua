-- Hand a claimed lead back: delete its claim only while it still holds the given call id, and (when asked)
-- put the lead back at the front of the hopper, atomically. A lead whose claim was taken over is left alone.
-- KEYS[1] lead claim, KEYS[2] hopper; ARGV[1] call id, ARGV[2] lead id, ARGV[3] "1" to requeue.
-- Returns 1 when the claim was ours (and released), else 0.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[2], 0, ARGV[2])
end
return 1
