-- Delete a lead claim only while it still holds the given call id (compare-and-delete).
-- KEYS[1] = lead claim key; ARGV[1] = call id. Returns 1 when deleted, 0 otherwise.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
