-- Give a lease back only if it is still ours. KEYS[1] lease; ARGV[1] expected value. Returns 1 released.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
