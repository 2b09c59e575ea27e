-- Pop up to N leads from a campaign's hopper and claim each one for a call, atomically: a popped lead is
-- either claimed (and returned) or, when another call holds it, dropped from the hopper (that call owns it).
-- KEYS[1] hopper (sorted set of lead ids).
-- ARGV[1] claim TTL (s), ARGV[2] lead hash key template, ARGV[3] claim key template (both with one %s for
-- the lead id: the campaign's own hash-tagged keys), ARGV[4..] one new call id per lead wanted.
-- Returns a flat list: lead id, call id, number of hash fields * 2, then the lead hash's fields and values.
local out = {}
for i = 4, #ARGV do
  local popped = redis.call('ZPOPMIN', KEYS[1])
  if #popped == 0 then break end
  local lead_id = popped[1]
  local fields = redis.call('HGETALL', string.format(ARGV[2], lead_id))
  if #fields > 0 then
    if redis.call('SET', string.format(ARGV[3], lead_id), ARGV[i], 'NX', 'EX', tonumber(ARGV[1])) then
      out[#out + 1] = lead_id
      out[#out + 1] = ARGV[i]
      out[#out + 1] = #fields
      for _, v in ipairs(fields) do out[#out + 1] = v end
    end
  end
end
return out
