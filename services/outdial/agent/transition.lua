-- Every state change of an agent, as ONE atomic script (see keys.py "Atomicity of agent transitions").
--
-- KEYS[1] = agents index (set of logged-in agent ids), KEYS[2] = presence due zset,
-- KEYS[3] = deadlines due zset (the sweeper reads both up to now)
-- ARGV[1..5] = key templates (%s = id): ready set, pacing view, agent hash, presence, offers channel
-- ARGV[6] = op; ARGV[7..] = op arguments (below)
-- Time comes from Redis TIME so that replicas compare like with like.
-- Returns {status, agent_id, prev_state, new_state, now_ms, seq, campaigns_json, call_id, extra}
-- status "ok" (changed), "noop" (nothing to do), or an error id ("bad_state", "not_found", "no_agent",
-- "existing" (the call already has that agent), "offered_held", "resumed" (a login that took back the
-- running session), "attached" / "superseded" (Connect), "same" (already connected to that call),
-- "cleared" (a logged-out agent's held call ended)).
--
-- Sessions outlive consoles and replicas: the session (id, state, current call) lives in the agent hash,
-- so a console that reconnects (Connect with its session id) or logs in again takes it back as it was. An
-- agent logged out while on a call (heartbeat timeout, or Logout) keeps that call in 'held_offer' until
-- the call ends: logging in again puts them back on it, never to ready while the call is up.

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

local function ready_score(priority, since)
  local p = tonumber(priority) or 0
  if p < 0 then p = 0 end
  if p > 99 then p = 99 end
  -- Higher campaign priority first, then longest ready (lowest since).
  return string.format('%.0f', (99 - p) * 1e13 + (since or now))
end

-- Put the agent into the ready sets and pacing views of ``campaigns`` in their current state (no change
-- of state, since or sequence): a resumed session whose campaigns changed.
local function place(aid, state, since, call_id, campaigns)
  local view = cjson.encode({state = state, since_ms = since, call_id = call_id})
  for _, c in ipairs(campaigns) do
    if state == 'ready' then
      redis.call('ZADD', string.format(ready_tpl, c.id), ready_score(c.priority, since), aid)
    end
    redis.call('HSET', string.format(view_tpl, c.id), aid, view)
  end
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

-- end_call by the agent: ARGV[10] template of the campaigns' hang-up streams (keys.agent_hangups; '' when
-- the far end or the dialer ended the call: nobody to tell), [11] the service's clock (ms), [12] MAXLEN.
-- One entry on the call's campaign stream, in the same transition as the state change: exactly one per
-- hang-up, never one without the other.
local function notify_hangup(offer_json, call_id)
  if (ARGV[10] or '') == '' or offer_json == nil or offer_json == '' then return end
  local cid = cjson.decode(offer_json)['campaign_id']
  if cid == nil or cid == '' then return end
  redis.call('XADD', string.format(ARGV[10], cid), 'MAXLEN', '~', ARGV[12], '*',
             'call_id', call_id, 'agent_id', ARGV[7], 'at_ms', ARGV[11])
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
  local f = redis.call('HMGET', akey, 'state', 'call_id', 'offer', 'last_call', 'held_offer')
  if f[2] == call_id then
    if f[1] == 'reserved' then
      if f[3] and f[3] ~= '' then return aid, 'offered' end
      return aid, 'held'
    end
    if f[1] == 'on_call' then return aid, 'on_call' end
  end
  -- Logged out while on this call (console gone): still theirs until it ends.
  if f[5] and f[5] ~= '' and cjson.decode(f[5])['call_id'] == call_id then return aid, 'on_call' end
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
  -- [15] call key (keys.call_agent), [16] agent held for this call by ReserveAgent ('' = look it up),
  -- [17] template of the replicas' ack channels (keys.agent_acks)
  local cid, call_id, skills_json, offer_json = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
  local deadline_ms, replica, limit = tonumber(ARGV[11]), ARGV[12], tonumber(ARGV[13])
  local slack, call_key, preferred = tonumber(ARGV[14]), ARGV[15] or '', ARGV[16] or ''
  local acks_tpl = ARGV[17] or ''
  local had, what = holder(call_key, call_id, preferred)
  if had == nil and preferred ~= '' then had, what = holder(call_key, call_id, '') end
  if had ~= nil and what == 'offered' and acks_tpl ~= '' then
    -- A retry whose first OfferCall died with its replica (nobody listens for the acknowledgement any
    -- more): offer again to the same agent, this time answered to us, if their console is connected.
    local waiting = redis.call('HGET', string.format(agent_tpl, had), 'offer_replica') or ''
    local asked = redis.call('PUBSUB', 'NUMSUB', string.format(acks_tpl, waiting))
    local subs = redis.call('PUBSUB', 'NUMSUB', string.format(offers_tpl, had))
    if tonumber(asked[2]) == 0 and tonumber(subs[2]) > 0 then
      return offer_to(had, 'reserved', cid, call_id, offer_json, deadline_ms, replica, slack, call_key)
    end
  end
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
  -- Presence: ARGV[8] session id, [9] ttl ms. No session any more (logged out, or Redis lost its data):
  -- "not_found", and no presence is written for it.
  if prev == 'logged_out' then return result('not_found', aid, prev, prev, 0, '[]', '') end
  redis.call('SET', string.format(presence_tpl, aid), ARGV[8], 'PX', tonumber(ARGV[9]))
  redis.call('ZADD', presence_due, now + tonumber(ARGV[9]), aid)
  return result('noop', aid, prev, prev, 0, '[]', '')
end

if op == 'login' then
  -- ARGV[8] campaigns JSON [{id, priority}], [9] skills JSON, [10] session id for a new session,
  -- [11] the offer of a connected call PostgreSQL still has open for this agent ('' = none): a new session
  -- after Redis lost the agent's state goes back on that call, as it would from 'held_offer'
  if prev ~= 'logged_out' then
    -- Logged in already (a console that crashed, or a second console): the running session is taken
    -- back as it is (same session id, state, since and call), with the campaigns and skills asked now.
    -- Not a new login: no state change, nothing for the timeline.
    local f = redis.call('HMGET', akey, 'since_ms', 'call_id', 'session_id')
    local session = f[3]
    if not session or session == '' then
      session = ARGV[10]
      redis.call('HSET', akey, 'session_id', session)
    end
    for _, c in ipairs((campaigns_of(akey))) do
      redis.call('ZREM', string.format(ready_tpl, c.id), aid)
      redis.call('HDEL', string.format(view_tpl, c.id), aid)
    end
    redis.call('HSET', akey, 'campaigns', ARGV[8], 'skills', ARGV[9])
    redis.call('SADD', index_key, aid)
    place(aid, prev, tonumber(f[1]) or now, f[2] or '', cjson.decode(ARGV[8]))
    return result('resumed', aid, prev, prev, 0, ARGV[8], f[2] or '', session)
  end
  local held = redis.call('HGET', akey, 'held_offer') or ''
  if held == '' and ARGV[11] then held = ARGV[11] end
  redis.call('HSET', akey, 'campaigns', ARGV[8], 'skills', ARGV[9], 'session_id', ARGV[10],
             'login_ms', now, 'offer', held, 'offer_deadline_ms', '', 'wrap_deadline_ms', '', 'held_offer', '')
  redis.call('SADD', index_key, aid)
  local campaigns = cjson.decode(ARGV[8])
  if held ~= '' then
    -- Logged out while on a call that is still up: back on that call, not ready.
    local held_id = cjson.decode(held)['call_id']
    local seq = apply(aid, akey, 'on_call', 'login', held_id, campaigns, true)
    return result('ok', aid, prev, 'on_call', seq, ARGV[8], held_id, ARGV[10])
  end
  local seq = apply(aid, akey, 'ready', 'login', '', campaigns, true)
  return result('ok', aid, prev, 'ready', seq, ARGV[8], '', ARGV[10])
end

local campaigns, craw = campaigns_of(akey)
local call_id = redis.call('HGET', akey, 'call_id') or ''

-- Log the agent out. A call they are on stays theirs ('held_offer') until it ends: a login puts them
-- back on it. Returns the result; extra = the replica waiting on a reservation this drops.
local function log_out(reason)
  local extra = ''
  if prev == 'reserved' then extra = redis.call('HGET', akey, 'offer_replica') or '' end
  if prev == 'on_call' then redis.call('HSET', akey, 'held_offer', redis.call('HGET', akey, 'offer') or '') end
  local seq = apply(aid, akey, 'logged_out', reason, call_id, campaigns, true)
  redis.call('HSET', akey, 'session_id', '', 'offer', '', 'offer_deadline_ms', '', 'conn_id', '')
  redis.call('SREM', index_key, aid)
  redis.call('ZREM', presence_due, aid)
  redis.call('ZREM', deadlines_due, aid)
  return result('ok', aid, prev, 'logged_out', seq, craw, call_id, extra)
end

if op == 'logout' then
  -- ARGV[8] reason
  if prev == 'logged_out' then return result('noop', aid, prev, prev, 0, craw, '') end
  return log_out(ARGV[8])
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
  if redis.call('EXISTS', string.format(presence_tpl, aid)) == 0 then return log_out('heartbeat_timeout') end
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

if prev == 'logged_out' and (op == 'end_call' or op == 'release') then
  -- The call a logged-out agent still holds ended (far end, dialer, or the agent): it becomes their last
  -- call (a disposition can still be set), and a login no longer puts them back on it.
  -- end_call: ARGV[8] call id ('' = the held one); release: ARGV[8] call id.
  local held = redis.call('HGET', akey, 'held_offer') or ''
  if held ~= '' then
    local held_id = cjson.decode(held)['call_id']
    if (op == 'end_call' and ARGV[8] == '') or ARGV[8] == held_id then
      redis.call('HSET', akey, 'held_offer', '')
      if op == 'end_call' then
        redis.call('HSET', akey, 'last_call', held)
        notify_hangup(held, held_id)
      end
      return result('cleared', aid, prev, prev, 0, craw, held_id, held)
    end
  end
  if op == 'release' then return result('noop', aid, prev, prev, 0, craw, call_id) end
end

if prev == 'logged_out' and op ~= 'disposition' then return result('not_found', aid, prev, prev, 0, craw, call_id) end

if op == 'unassign' then
  -- A manager removed the agent's assignment to campaign ARGV[8]: the campaign leaves the running session
  -- at once (out of its ready set and pacing view: no new offer or preview of it reaches the agent). A call
  -- already offered or up stays theirs to finish: the person is on the line. When it was their last
  -- campaign, an idle agent (ready or paused) is logged out ("unassigned"); a busy one finishes the call
  -- with no campaign left, and no new offer can reach them. Status "updated" when the campaign was
  -- removed with no change of state, "noop" when the session did not have it.
  local cid = ARGV[8]
  local kept, found = {}, false
  for _, c in ipairs(campaigns) do
    if c.id == cid then found = true else kept[#kept + 1] = c end
  end
  if not found then return result('noop', aid, prev, prev, 0, craw, call_id) end
  redis.call('ZREM', string.format(ready_tpl, cid), aid)
  redis.call('HDEL', string.format(view_tpl, cid), aid)
  local kraw = '[]'
  if #kept > 0 then kraw = cjson.encode(kept) end
  redis.call('HSET', akey, 'campaigns', kraw)
  campaigns, craw = kept, kraw
  if #kept == 0 and (prev == 'ready' or prev == 'paused') then return log_out('unassigned') end
  return result('updated', aid, prev, prev, 0, craw, call_id)
end

if op == 'attach' then
  -- Connect: ARGV[8] id of this console connection, [9] session id the console holds ('' = the current
  -- one). The newest connection of an agent wins: the notice ends the older streams. Returns in extra
  -- the offer the console must be shown again: the call they are on, or an offer still awaiting its
  -- acknowledgement (its OfferCall may still be waiting, within the deadline).
  local f = redis.call('HMGET', akey, 'session_id', 'offer', 'offer_deadline_ms')
  if ARGV[9] ~= '' and ARGV[9] ~= f[1] then return result('superseded', aid, prev, prev, 0, craw, call_id) end
  redis.call('HSET', akey, 'conn_id', ARGV[8])
  redis.call('PUBLISH', string.format(offers_tpl, aid), cjson.encode({type = 'attach', conn = ARGV[8]}))
  local resend = ''
  if prev == 'on_call' then
    resend = f[2] or ''
  elseif prev == 'reserved' and f[2] and f[2] ~= '' and (tonumber(f[3]) or 0) > now then
    resend = f[2]
  end
  return result('attached', aid, prev, prev, 0, craw, call_id, resend)
end

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
  if prev == 'on_call' and call_id == ARGV[8] then
    -- Acknowledged twice (a retried OfferCall re-offered it, or a reconnected console was shown it again).
    return result('same', aid, prev, prev, 0, craw, call_id, '')
  end
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
  -- ARGV[8] call id ('' = the current one), [9] wrap-up timeout ms, [10..12] see notify_hangup
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
  local last = redis.call('HGET', akey, 'last_call')
  notify_hangup(last, call_id)
  return result('ok', aid, prev, 'wrap_up', seq, craw, call_id, last)
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
