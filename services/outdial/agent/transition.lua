-- Every state change of an agent, as ONE atomic script (see keys.py "Atomicity of agent transitions").
--
-- KEYS[1] = agents index (set of logged-in agent ids), KEYS[2] = presence due zset,
-- KEYS[3] = deadlines due zset (the sweeper reads both up to now)
-- ARGV[1..5] = key templates (%s = id): ready set, pacing view, agent hash, presence, offers channel
-- ARGV[6] = op; ARGV[7..] = op arguments (below)
-- Time comes from Redis TIME so that replicas compare like with like.
-- Returns {status, agent_id, prev_state, new_state, now_ms, seq, campaigns_json, call_id, extra}
-- status "ok" (changed), "noop" (nothing to do), or an error id ("bad_state", "busy", "not_found",
-- "no_agent", "existing" (the call already has that agent), "offered_held").

local ready_tpl, view_tpl, agent_tpl, presence_tpl, offers_tpl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local index_key, presence_due, deadlines_due = KEYS[1], KEYS[2], KEYS[3]
local op = ARGV[6]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function campaigns_of(akey)
  local raw = redis.call('HGET', akey, 'campaigns')
  if not raw or raw == '' then return {}, '[]' end
  return cjson.decode(raw), raw
end

local function ready_score(priority)
  local p = tonumber(priority) or 0
  if p < 0 then p = 0 end
  if p > 99 then p = 99 end
  -- Higher campaign priority first, then longest ready (lowest since).
  return string.format('%.0f', (99 - p) * 1e13 + now)
end

-- Apply new_state to the agent: hash, every campaign's ready set and pacing view, status notice.
local function apply(aid, akey, new_state, reason, call_id, campaigns, publish)
  local seq = redis.call('HINCRBY', akey, 'seq', 1)
  redis.call('HSET', akey, 'state', new_state, 'since_ms', now, 'reason', reason, 'call_id', call_id)
  local view = cjson.encode({state = new_state, since_ms = now, call_id = call_id})
  for _, c in ipairs(campaigns) do
    local rk = string.format(ready_tpl, c.id)
    local vk = string.format(view_tpl, c.id)
    if new_state == 'ready' then
      redis.call('ZADD', rk, ready_score(c.priority), aid)
    else
      redis.call('ZREM', rk, aid)
    end
    if new_state == 'logged_out' then
      redis.call('HDEL', vk, aid)
    else
      redis.call('HSET', vk, aid, view)
    end
  end
  if publish then
    redis.call('PUBLISH', string.format(offers_tpl, aid), cjson.encode({
      type = 'status', state = new_state, since_ms = now, reason = reason, call_id = call_id, seq = seq}))
  end
  return seq
end

local function result(status, aid, prev, new, seq, craw, call_id, extra)
  return {status, aid, prev or '', new or '', tostring(now), tostring(seq or 0), craw or '[]',
          call_id or '', extra or ''}
end

local function state_of(akey)
  local s = redis.call('HGET', akey, 'state')
  if not s then return 'logged_out' end
  return s
end

-- The longest-ready agent of the campaign with the skills and an open console, or nil; stale ready-set
-- entries met on the way are removed. Returns chosen, examined.
local function pick(cid, need, limit)
  local rk = string.format(ready_tpl, cid)
  local stale = {}
  local examined, pos, batch = 0, 0, 64
  local chosen = nil
  while chosen == nil and examined < limit do
    local ids = redis.call('ZRANGE', rk, pos, pos + batch - 1)
    if #ids == 0 then break end
    pos = pos + #ids
    for _, aid in ipairs(ids) do
      examined = examined + 1
      local akey = string.format(agent_tpl, aid)
      local f = redis.call('HMGET', akey, 'state', 'skills')
      if f[1] ~= 'ready' then
        stale[#stale + 1] = aid
      else
        local ok = true
        if #need > 0 then
          local have = {}
          for _, s in ipairs(cjson.decode(f[2] or '[]')) do have[s] = true end
          for _, s in ipairs(need) do
            if not have[s] then ok = false; break end
          end
        end
        if ok then
          -- Only an agent whose console stream is open somewhere can take a call.
          local subs = redis.call('PUBSUB', 'NUMSUB', string.format(offers_tpl, aid))
          if tonumber(subs[2]) > 0 then chosen = aid; break end
        end
      end
      if examined >= limit then break end
    end
  end
  for _, aid in ipairs(stale) do redis.call('ZREM', rk, aid) end
  return chosen, examined
end

-- Who already has this call (idempotency, keys.call_agent): returns agent id and what they do with it:
-- 'held' (reserved, not offered yet), 'offered' (reserved, offer out), 'on_call', 'ended' (connected and
-- already ended), or nil when nobody holds it any more.
local function holder(call_key, call_id, preferred)
  local aid = preferred
  if (aid == nil or aid == '') and call_key ~= '' then aid = redis.call('GET', call_key) end
  if not aid or aid == '' then return nil, nil end
  local akey = string.format(agent_tpl, aid)
  local f = redis.call('HMGET', akey, 'state', 'call_id', 'offer', 'last_call')
  if f[2] == call_id then
    if f[1] == 'reserved' then
      if f[3] and f[3] ~= '' then return aid, 'offered' end
      return aid, 'held'
    end
    if f[1] == 'on_call' then return aid, 'on_call' end
  end
  if f[4] and f[4] ~= '' and cjson.decode(f[4])['call_id'] == call_id then return aid, 'ended' end
  return nil, nil
end

-- Put an offer out to an agent (reserved now) and publish it on their console's channel.
local function offer_to(chosen, prev, cid, call_id, offer_json, deadline_ms, replica, slack, call_key)
  local akey = string.format(agent_tpl, chosen)
  local campaigns, craw = campaigns_of(akey)
  local offer = cjson.decode(offer_json)
  offer['type'] = 'offer'
  offer['agent_id'] = chosen
  offer['offered_at_ms'] = now
  offer['reply_to'] = replica
  local payload = cjson.encode(offer)
  redis.call('HSET', akey, 'offer', payload, 'offer_deadline_ms', now + deadline_ms, 'offer_replica', replica,
             'offer_campaign', cid)
  local seq = 0
  if prev ~= 'reserved' then seq = apply(chosen, akey, 'reserved', '', call_id, campaigns, false) end
  redis.call('ZADD', deadlines_due, now + deadline_ms + slack, chosen)
  if call_key ~= '' then redis.call('SET', call_key, chosen, 'PX', 3600000) end
  redis.call('PUBLISH', string.format(offers_tpl, chosen), payload)
  local status = 'ok'
  if prev == 'reserved' then status = 'offered_held' end
  return result(status, chosen, prev, 'reserved', seq, craw, call_id, payload)
end

if op == 'reserve' then
  -- ARGV[7] campaign id, [8] call id, [9] required skills JSON list, [10] offer JSON, [11] deadline ms,
  -- [12] replica id waiting for the ack, [13] max agents to examine, [14] sweeper slack ms,
  -- [15] call key (keys.call_agent), [16] agent held for this call by ReserveAgent ('' = look it up)
  local cid, call_id, skills_json, offer_json = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
  local deadline_ms, replica, limit = tonumber(ARGV[11]), ARGV[12], tonumber(ARGV[13])
  local slack, call_key, preferred = tonumber(ARGV[14]), ARGV[15] or '', ARGV[16] or ''
  local had, what = holder(call_key, call_id, preferred)
  if had == nil and preferred ~= '' then had, what = holder(call_key, call_id, '') end
  if had ~= nil then
    if what == 'held' then
      local subs = redis.call('PUBSUB', 'NUMSUB', string.format(offers_tpl, had))
      if tonumber(subs[2]) > 0 then
        return offer_to(had, 'reserved', cid, call_id, offer_json, deadline_ms, replica, slack, call_key)
      end
      -- The held agent's console is gone: give them back and pick another one below.
      local hkey = string.format(agent_tpl, had)
      local hc = campaigns_of(hkey)
      apply(had, hkey, 'ready', 'console_gone', '', hc, true)
      redis.call('HSET', hkey, 'offer', '', 'offer_deadline_ms', '')
    else
      -- A retry of a call that already has an agent: that agent, never a second one.
      return result('existing', had, what, what, 0, '[]', call_id, what)
    end
  end
  local chosen, examined = pick(cid, cjson.decode(skills_json), limit)
  if chosen == nil then return result('no_agent', '', '', '', 0, '[]', call_id, tostring(examined)) end
  return offer_to(chosen, 'ready', cid, call_id, offer_json, deadline_ms, replica, slack, call_key)
end

if op == 'hold' then
  -- ReserveAgent: hold a ready agent for a call not answered yet (reserved, no offer).
  -- ARGV[7] campaign id, [8] call id, [9] required skills JSON, [10] ttl ms, [11] max agents to examine,
  -- [12] sweeper slack ms, [13] call key
  local cid, call_id, ttl, limit, slack, call_key = ARGV[7], ARGV[8], tonumber(ARGV[10]), tonumber(ARGV[11]),
                                                     tonumber(ARGV[12]), ARGV[13]
  local had, what = holder(call_key, call_id, '')
  if had ~= nil then return result('existing', had, what, what, 0, '[]', call_id, what) end
  local chosen, examined = pick(cid, cjson.decode(ARGV[9]), limit)
  if chosen == nil then return result('no_agent', '', '', '', 0, '[]', call_id, tostring(examined)) end
  local akey = string.format(agent_tpl, chosen)
  local campaigns, craw = campaigns_of(akey)
  redis.call('HSET', akey, 'offer', '', 'offer_deadline_ms', now + ttl, 'offer_replica', '', 'offer_campaign', cid)
  local seq = apply(chosen, akey, 'reserved', 'hold', call_id, campaigns, true)
  redis.call('ZADD', deadlines_due, now + ttl + slack, chosen)
  redis.call('SET', call_key, chosen, 'PX', 3600000)
  return result('ok', chosen, 'ready', 'reserved', seq, craw, call_id, '')
end

if op == 'preview' then
  -- PreviewLead: hold a ready agent and show them a lead before any dial (reserved, offer = the preview).
  -- ARGV[7] campaign id, [8] call id, [9] required skills JSON, [10] preview JSON, [11] ttl ms,
  -- [12] replica id waiting for the ack, [13] max agents to examine, [14] sweeper slack ms, [15] call key
  local cid, call_id, ttl, replica = ARGV[7], ARGV[8], tonumber(ARGV[11]), ARGV[12]
  local limit, slack, call_key = tonumber(ARGV[13]), tonumber(ARGV[14]), ARGV[15]
  local had, what = holder(call_key, call_id, '')
  if had ~= nil then return result('existing', had, what, what, 0, '[]', call_id, what) end
  local chosen, examined = pick(cid, cjson.decode(ARGV[9]), limit)
  if chosen == nil then return result('no_agent', '', '', '', 0, '[]', call_id, tostring(examined)) end
  local akey = string.format(agent_tpl, chosen)
  local campaigns, craw = campaigns_of(akey)
  local preview = cjson.decode(ARGV[10])
  preview['type'] = 'preview'
  preview['agent_id'] = chosen
  preview['offered_at_ms'] = now
  preview['reply_to'] = replica
  local decide_in = tonumber(preview['timeout_ms']) or 0
  if decide_in > 0 then preview['decide_by_ms'] = now + decide_in end
  local payload = cjson.encode(preview)
  redis.call('HSET', akey, 'offer', payload, 'offer_deadline_ms', now + ttl, 'offer_replica', replica,
             'offer_campaign', cid, 'preview_call', call_id, 'preview_decision', '')
  local seq = apply(chosen, akey, 'reserved', 'preview', call_id, campaigns, true)
  redis.call('ZADD', deadlines_due, now + ttl + slack, chosen)
  redis.call('SET', call_key, chosen, 'PX', 3600000)
  redis.call('PUBLISH', string.format(offers_tpl, chosen), payload)
  return result('ok', chosen, 'ready', 'reserved', seq, craw, call_id, payload)
end

local aid = ARGV[7]
local akey = string.format(agent_tpl, aid)
local prev = state_of(akey)

if op == 'touch' then
  -- Presence: ARGV[8] session id, [9] ttl ms
  redis.call('SET', string.format(presence_tpl, aid), ARGV[8], 'PX', tonumber(ARGV[9]))
  redis.call('ZADD', presence_due, now + tonumber(ARGV[9]), aid)
  return result('noop', aid, prev, prev, 0, '[]', '')
end

if op == 'login' then
  -- ARGV[8] campaigns JSON [{id, priority}], [9] skills JSON, [10] session id
  if prev == 'reserved' or prev == 'on_call' then
    return result('busy', aid, prev, prev, 0, '[]', redis.call('HGET', akey, 'call_id'))
  end
  if prev ~= 'logged_out' then
    for _, c in ipairs((campaigns_of(akey))) do
      redis.call('ZREM', string.format(ready_tpl, c.id), aid)
      redis.call('HDEL', string.format(view_tpl, c.id), aid)
    end
  end
  redis.call('HSET', akey, 'campaigns', ARGV[8], 'skills', ARGV[9], 'session_id', ARGV[10],
             'login_ms', now, 'offer', '', 'offer_deadline_ms', '', 'wrap_deadline_ms', '')
  redis.call('SADD', index_key, aid)
  local campaigns = cjson.decode(ARGV[8])
  local seq = apply(aid, akey, 'ready', 'login', '', campaigns, true)
  return result('ok', aid, prev, 'ready', seq, ARGV[8], '', '')
end

local campaigns, craw = campaigns_of(akey)
local call_id = redis.call('HGET', akey, 'call_id') or ''

if op == 'logout' then
  -- ARGV[8] reason
  if prev == 'logged_out' then return result('noop', aid, prev, prev, 0, craw, '') end
  local extra = ''
  if prev == 'reserved' then extra = redis.call('HGET', akey, 'offer_replica') or '' end
  local seq = apply(aid, akey, 'logged_out', ARGV[8], call_id, campaigns, true)
  redis.call('HSET', akey, 'session_id', '', 'offer', '', 'offer_deadline_ms', '')
  redis.call('SREM', index_key, aid)
  redis.call('ZREM', presence_due, aid)
  redis.call('ZREM', deadlines_due, aid)
  return result('ok', aid, prev, 'logged_out', seq, craw, call_id, extra)
end

if op == 'sweep' then
  -- Presence gone: log out. Offer stuck past its deadline (its OfferCall replica died): back to ready.
  -- Wrap-up past its timeout: back to ready. ARGV[8] slack ms for stuck offers.
  if prev == 'logged_out' then
    redis.call('SREM', index_key, aid)
    redis.call('ZREM', presence_due, aid)
    redis.call('ZREM', deadlines_due, aid)
    return result('noop', aid, prev, prev, 0, craw, '')
  end
  if redis.call('EXISTS', string.format(presence_tpl, aid)) == 0 then
    local extra = ''
    if prev == 'reserved' then extra = redis.call('HGET', akey, 'offer_replica') or '' end
    local seq = apply(aid, akey, 'logged_out', 'heartbeat_timeout', call_id, campaigns, true)
    redis.call('HSET', akey, 'session_id', '', 'offer', '', 'offer_deadline_ms', '')
    redis.call('SREM', index_key, aid)
    redis.call('ZREM', presence_due, aid)
    redis.call('ZREM', deadlines_due, aid)
    return result('ok', aid, prev, 'logged_out', seq, craw, call_id, extra)
  end
  if prev == 'reserved' then
    local dl = tonumber(redis.call('HGET', akey, 'offer_deadline_ms') or '') or 0
    if now > dl + tonumber(ARGV[8]) then
      local seq = apply(aid, akey, 'ready', 'offer_expired', '', campaigns, true)
      redis.call('HSET', akey, 'offer', '', 'offer_deadline_ms', '')
      return result('ok', aid, prev, 'ready', seq, craw, call_id, '')
    end
  end
  if prev == 'wrap_up' then
    local dl = tonumber(redis.call('HGET', akey, 'wrap_deadline_ms') or '') or 0
    if dl > 0 and now >= dl then
      local seq = apply(aid, akey, 'ready', 'wrap_timeout', '', campaigns, true)
      redis.call('HSET', akey, 'wrap_deadline_ms', '')
      return result('ok', aid, prev, 'ready', seq, craw, call_id, '')
    end
  end
  -- Nothing due: reschedule this agent in the due sets from its current state.
  local pttl = redis.call('PTTL', string.format(presence_tpl, aid))
  if pttl > 0 then redis.call('ZADD', presence_due, now + pttl, aid) end
  if prev == 'wrap_up' then
    redis.call('ZADD', deadlines_due, tonumber(redis.call('HGET', akey, 'wrap_deadline_ms') or '') or now, aid)
  elseif prev == 'reserved' then
    local dl = tonumber(redis.call('HGET', akey, 'offer_deadline_ms') or '') or now
    redis.call('ZADD', deadlines_due, dl + tonumber(ARGV[8]), aid)
  else
    redis.call('ZREM', deadlines_due, aid)
  end
  return result('noop', aid, prev, prev, 0, craw, call_id)
end

if prev == 'logged_out' and op ~= 'disposition' then return result('not_found', aid, prev, prev, 0, craw, call_id) end

if op == 'set_state' then
  -- ARGV[8] 'ready' | 'paused', [9] reason
  local want = ARGV[8]
  if prev ~= 'ready' and prev ~= 'paused' then return result('bad_state', aid, prev, prev, 0, craw, call_id) end
  if prev == want and (redis.call('HGET', akey, 'reason') or '') == ARGV[9] then
    return result('noop', aid, prev, prev, 0, craw, '')
  end
  local seq = apply(aid, akey, want, ARGV[9], '', campaigns, true)
  return result('ok', aid, prev, want, seq, craw, '', '')
end

if op == 'connected' then
  -- ARGV[8] call id
  if prev ~= 'reserved' or call_id ~= ARGV[8] then
    -- A quick console may have ended the call before the connection was recorded: it was connected.
    local last = redis.call('HGET', akey, 'last_call') or ''
    if last ~= '' and cjson.decode(last)['call_id'] == ARGV[8] then
      return result('already', aid, prev, prev, 0, craw, ARGV[8], last)
    end
    return result('bad_state', aid, prev, prev, 0, craw, call_id)
  end
  local seq = apply(aid, akey, 'on_call', '', call_id, campaigns, true)
  redis.call('HSET', akey, 'offer_deadline_ms', '')
  return result('ok', aid, prev, 'on_call', seq, craw, call_id, redis.call('HGET', akey, 'offer') or '')
end

if op == 'release' then
  -- Undo a reservation: ARGV[8] call id, [9] reason
  -- ARGV[10] '1': also withdraw the call from an agent already on it (the dialer abandoned it after all).
  local withdraw = ARGV[10] == '1' and prev == 'on_call'
  if (prev ~= 'reserved' and not withdraw) or call_id ~= ARGV[8] then
    return result('noop', aid, prev, prev, 0, craw, call_id)
  end
  local seq = apply(aid, akey, 'ready', ARGV[9], '', campaigns, true)
  redis.call('HSET', akey, 'offer', '', 'offer_deadline_ms', '')
  return result('ok', aid, prev, 'ready', seq, craw, call_id, '')
end

if op == 'preview_decide' then
  -- DecidePreview: ARGV[8] call id, [9] 'dial' | 'skip', [10] who ('agent' | 'timeout'), [11] sweeper slack ms.
  -- The first decision stands: a later one gets it back ('already', extra = that decision).
  local want_call = ARGV[8]
  local decided = redis.call('HMGET', akey, 'preview_call', 'preview_decision', 'offer_campaign')
  if decided[1] ~= want_call then return result('not_held', aid, prev, prev, 0, craw, call_id, '') end
  if decided[2] and decided[2] ~= '' then
    return result('already', aid, prev, prev, 0, craw, want_call, decided[2] .. ':' .. (decided[3] or ''))
  end
  local raw = redis.call('HGET', akey, 'offer') or ''
  if prev ~= 'reserved' or call_id ~= want_call or raw == '' then
    return result('not_held', aid, prev, prev, 0, craw, call_id, '')
  end
  local preview = cjson.decode(raw)
  if preview['type'] ~= 'preview' then return result('not_held', aid, prev, prev, 0, craw, call_id, '') end
  local decision, cid = ARGV[9], decided[3] or ''
  redis.call('HSET', akey, 'preview_decision', decision)
  local seq = 0
  if decision == 'dial' then
    -- Held for the call now (no offer out): the live answer is offered to this agent first.
    local hold = tonumber(preview['dial_hold_ms']) or 60000
    redis.call('HSET', akey, 'offer', '', 'offer_deadline_ms', now + hold)
    redis.call('ZADD', deadlines_due, now + hold + tonumber(ARGV[11]), aid)
  else
    seq = apply(aid, akey, 'ready', 'preview_skipped', '', campaigns, true)
    redis.call('HSET', akey, 'offer', '', 'offer_deadline_ms', '')
  end
  redis.call('PUBLISH', string.format(offers_tpl, aid), cjson.encode({
    type = 'preview_decided', call_id = want_call, decision = decision, by = ARGV[10]}))
  return result('ok', aid, prev, decision == 'dial' and 'reserved' or 'ready', seq, craw, want_call,
                decision .. ':' .. cid)
end

if op == 'end_call' then
  -- ARGV[8] call id ('' = the current one), [9] wrap-up timeout ms
  -- From reserved too: the offer reached the console (it shows the call) before OfferCall recorded the
  -- connection; 'connected' then sees last_call and reports the call as connected. Not a preview: a lead
  -- that was only shown is skipped or dialled (DecidePreview), never ended.
  local offer_raw = redis.call('HGET', akey, 'offer') or ''
  local offered = offer_raw ~= '' and cjson.decode(offer_raw)['type'] ~= 'preview'
  if (prev ~= 'on_call' and not (prev == 'reserved' and offered)) or (ARGV[8] ~= '' and call_id ~= ARGV[8]) then
    return result('bad_state', aid, prev, prev, 0, craw, call_id)
  end
  redis.call('HSET', akey, 'last_call', redis.call('HGET', akey, 'offer') or '', 'offer', '',
             'offer_deadline_ms', '', 'wrap_deadline_ms', now + tonumber(ARGV[9]))
  local seq = apply(aid, akey, 'wrap_up', '', call_id, campaigns, true)
  redis.call('ZADD', deadlines_due, now + tonumber(ARGV[9]), aid)
  return result('ok', aid, prev, 'wrap_up', seq, craw, call_id, redis.call('HGET', akey, 'last_call'))
end

if op == 'disposition' then
  -- ARGV[8] call id ('' = the last one). From wrap-up: back to ready. After a wrap-up timeout the
  -- disposition is still recorded (once), without a state change.
  local last = redis.call('HGET', akey, 'last_call') or ''
  if last == '' then return result('bad_state', aid, prev, prev, 0, craw, call_id) end
  local last_id = cjson.decode(last)['call_id']
  if ARGV[8] ~= '' and ARGV[8] ~= last_id then return result('bad_state', aid, prev, prev, 0, craw, call_id) end
  if redis.call('HGET', akey, 'dispositioned') == last_id then
    return result('already', aid, prev, prev, 0, craw, last_id, last)
  end
  redis.call('HSET', akey, 'dispositioned', last_id)
  if prev == 'wrap_up' then
    local seq = apply(aid, akey, 'ready', 'disposition', '', campaigns, true)
    redis.call('HSET', akey, 'wrap_deadline_ms', '')
    return result('ok', aid, prev, 'ready', seq, craw, last_id, last)
  end
  return result('noop', aid, prev, prev, 0, craw, last_id, last)
end

return redis.error_reply('unknown op ' .. tostring(op))
