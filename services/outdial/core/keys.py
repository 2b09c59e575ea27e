"""Every Redis key name of outdial, and nothing else formats one.

Keys start with ``od:``. Anything per campaign carries the campaign id in a hash tag (``od:{c:ID}:…``) so
that one campaign's keys share a Redis Cluster slot and Lua scripts over them stay cluster-legal.
Each function says who writes the key, who reads it, and its lifetime (TTL).
Everything here can be rebuilt from PostgreSQL or is short-lived (see DESIGN.md).
"""

from __future__ import annotations

PREFIX = "od:"


def _c(campaign_id: str) -> str:
    return f"{PREFIX}{{c:{campaign_id}}}"


# ---------------------------------------------------------------- events


def call_events() -> str:
    """Stream of call lifecycle events (DESIGN.md). Writers: pacing (dialer), agent. Readers: campaign,
    pacing, dnc consumer groups. Trimmed with MAXLEN ~ (approximate), no TTL."""
    return f"{PREFIX}events:calls"


def event_seen(group: str, event_id: str) -> str:
    """Idempotency marker: consumer ``group`` has applied ``event_id``. Writer/reader: that consumer.
    TTL 7 days (longer than any redelivery)."""
    return f"{PREFIX}seen:{group}:{event_id}"


# ---------------------------------------------------------------- campaign


def active_campaigns() -> str:
    """Set of ids of campaigns in state active. Writer: campaign service. Readers: pacing, feeder. No TTL
    (rebuilt from PostgreSQL at campaign-service start, and whenever :func:`campaigns_published` is gone)."""
    return f"{PREFIX}campaigns:active"


def campaigns_published() -> str:
    """String: "every campaign's config and the active set are in Redis" (the time they were written).
    Writer: campaign service, after publishing them all. Reader: the campaign service, every second: when
    it is missing, Redis lost its data, and every config and the active set are written again from
    PostgreSQL. No TTL."""
    return f"{PREFIX}campaigns:published"


def campaign_config(campaign_id: str) -> str:
    """Hash: the campaign's dialing settings as JSON (state, mode, window, caps, caller id …). Writer:
    campaign service on every change. Readers: pacing/dialer, agent. No TTL (rebuilt at start)."""
    return f"{_c(campaign_id)}:config"


def hopper(campaign_id: str) -> str:
    """Sorted set of lead ids callable now (score = priority order: callbacks, new, retries). Writer:
    campaign feeder. Reader: dialer (ZPOPMIN). No TTL; a cache, refilled every feeder pass."""
    return f"{_c(campaign_id)}:hopper"


def hopper_lead(campaign_id: str, lead_id: str) -> str:
    """Hash: what the dialer needs about a hopper lead (numbers, tz, state, name, fields). Writer: feeder.
    Reader: dialer. TTL 1 hour."""
    return f"{_c(campaign_id)}:lead:{lead_id}"


def lead_claim(campaign_id: str, lead_id: str) -> str:
    """String: the call id that holds this lead (SET NX PX). Writer: dialer. Readers: dialer, feeder.
    TTL: ring timeout + max talk bound; released by the outcome consumer."""
    return f"{_c(campaign_id)}:claim:{lead_id}"


def feeder_lease(campaign_id: str) -> str:
    """String: the campaign-service replica that feeds this campaign's hopper (token). TTL: lease time."""
    return f"{_c(campaign_id)}:feeder"


# ---------------------------------------------------------------- numbers (compliance counters)


def number_attempts(number_e164: str) -> str:
    """Sorted set of call ids to one number (score = dial time, ms) for rolling 24 h / 72 h caps. Writer:
    dialer at dial time. Readers: gate and feeder, which join it with PostgreSQL's ``dial_attempts`` (the
    source of truth of the per-person caps: losing this key loosens nothing). TTL 8 days. Rebuildable from
    call records."""
    return f"{PREFIX}num:{{{number_e164}}}:attempts"


def number_abandoned(number_e164: str) -> str:
    """String: last abandonment of this number (ms), for the UK 72-hour rule. Writer: dialer. Reader: gate.
    TTL 72 h."""
    return f"{PREFIX}num:{{{number_e164}}}:abandoned"


# ---------------------------------------------------------------- pacing / dialer


def pacing_lease(campaign_id: str) -> str:
    """String: ``replica:token`` of the pacing replica that drives this campaign. Writer: pacing (SET NX PX,
    renewed by a Lua compare-and-set). TTL: the lease time (a few seconds)."""
    return f"{_c(campaign_id)}:pacing:lease"


def pacing_fence(campaign_id: str) -> str:
    """Integer fencing token, INCR on every lease acquisition. Writer: pacing. No TTL."""
    return f"{_c(campaign_id)}:pacing:fence"


def pacing_settings(campaign_id: str) -> str:
    """Hash: pacing settings overrides (UpdatePacingSettings). Writer/reader: pacing. No TTL (also stored in
    PostgreSQL)."""
    return f"{_c(campaign_id)}:pacing:settings"


def pacing_replica(replica: str) -> str:
    """String: "this pacing replica is alive" (its start time). Writer: each pacing replica every lease pass,
    TTL the lease time. Reader: a lease holder reconciling calls PostgreSQL shows as dialled and not ended:
    a call whose replica has been absent for a whole lease time is closed from its recorded state."""
    return f"{PREFIX}pacing:replica:{replica}"


def pacing_state(campaign_id: str) -> str:
    """String (JSON): the last pacing snapshot, for GetPacingState/WatchPacing from any replica. Writer: the
    lease holder each tick. TTL 30 s."""
    return f"{_c(campaign_id)}:pacing:state"


def pacing_estimates(campaign_id: str) -> str:
    """String (JSON): learned estimates (answer rate, delays, talk/wrap). Writer: pacing. TTL 7 days."""
    return f"{_c(campaign_id)}:pacing:estimates"


def pacing_updates(campaign_id: str) -> str:
    """Pub/sub channel: "the pacing state or settings of this campaign changed". Publisher: pacing (lease
    holder when its published state changes; UpdatePacingSettings). Subscribers: WatchPacing streams. No
    storage (pub/sub)."""
    return f"{_c(campaign_id)}:pacing:updates"


def calls_in_flight(campaign_id: str) -> str:
    """Sorted set of call ids in flight (score = dial time, ms). Writer: dialer. Readers: pacing, stats.
    No TTL; entries removed when the call ends."""
    return f"{_c(campaign_id)}:inflight"


def abandon_window(campaign_id: str) -> str:
    """Sorted set of live answers in the abandonment window: member ``call_id:h`` or ``call_id:a`` (human
    connected / abandoned), or ``call_id:m`` (a machine-classified answer of a campaign that states an AMD
    false-positive estimate: the budget counts that share of them as abandoned), score = ms. Writer: dialer. Reader: pacing budget. Trimmed to the window."""
    return f"{_c(campaign_id)}:abandon"


# ---------------------------------------------------------------- agents


def agent_epoch(replica_id: str) -> str:
    """String: "Redis still holds the agent sessions", one per agent-service replica. Writer and reader: that
    replica, SET NX whenever it (re)connects to Redis. TTL 7 days (a false alarm after it lapses costs only
    a re-login, which takes the running session back). Found missing after a reconnection: Redis lost its
    data, every session is gone, and the replica tells its consoles to log in again."""
    return f"{PREFIX}agent:epoch:{replica_id}"


def agent(agent_id: str) -> str:
    """Hash: an agent's live state and session (state, since, campaigns, skills, call id, session id, the
    current offer, the console connection id, and ``held_offer``: the call they were on when logged out,
    until it ends). Sessions outlive consoles and agent-service replicas: a console that reconnects or
    logs in again takes its session back from here. Writer: agent service (Lua). Readers: agent, pacing.
    No TTL (presence is separate)."""
    return f"{PREFIX}agent:{{a:{agent_id}}}"


def agent_presence(agent_id: str) -> str:
    """String: the agent's session id while their console is alive. Writer: agent service on Connect and
    Heartbeat. TTL: heartbeat timeout."""
    return f"{PREFIX}agent:{{a:{agent_id}}}:presence"


def agent_offers(agent_id: str) -> str:
    """Pub/sub channel of offers for one agent's open console stream. Publisher: the agent service replica
    that assigned the call. Subscriber: the replica holding the agent's Connect stream (its offer hub), which
    acknowledges delivery; assignment only picks an agent whose channel has a subscriber. No TTL (a channel)."""
    return f"{PREFIX}agent:{{a:{agent_id}}}:offers"


def agent_changes() -> str:
    """Pub/sub channel: "agent X changed state" (message: the agent id). Publisher: the agent service after
    every transition that changed a state. Subscriber: the agent service's WatchAgents streams (wallboards),
    which then re-read the agents they show. No TTL (a channel); a lost message is caught by the streams'
    periodic re-read."""
    return f"{PREFIX}agents:changes"


def agents_index() -> str:
    """Set of logged-in agent ids. Writer: agent service. Readers: agent (presence sweeper). No TTL."""
    return f"{PREFIX}agents:online"


def campaign_agents(campaign_id: str) -> str:
    """Hash agent id -> state (JSON: state, since_ms, call_id) for agents logged in to the campaign; an agent
    logged out (by Logout or after the heartbeat grace) is removed at once. Writer: agent service. Reader:
    pacing (one round trip for counts). No TTL."""
    return f"{_c(campaign_id)}:agents"


def campaign_ready(campaign_id: str) -> str:
    """Sorted set of ready agents of a campaign; the score orders the agent's priority for this campaign
    first, then ready-since (longest ready first): see ``ready_score`` in agent/transition.lua.
    Writer/reader: the agent transition script. No TTL."""
    return f"{_c(campaign_id)}:ready"


def call_agent(call_id: str) -> str:
    """String: the agent who holds (or held) a call: set by the assignment script when it reserves or
    offers, so a retried OfferCall/ReserveAgent for the same call gets the same agent, never a second one.
    Writer: agent transition script (the key name reaches it as an argument). TTL 1 hour."""
    return f"{PREFIX}call:{{k:{call_id}}}:agent"


def agent_hangups(campaign_id: str) -> str:
    """Stream: "the agent ended call X" (fields call_id, agent_id, at_ms). Producer: agent service (EndCall
    by the agent), XADD with an approximate MAXLEN of :data:`AGENT_HANGUPS_MAXLEN`. Consumer: the pacing
    replica holding the campaign's lease, through the consumer group :data:`AGENT_HANGUPS_GROUP` (a notice
    sent while the lease changes hands stays pending and is read by the next holder), which hangs up the
    carrier leg at once. Entries are acknowledged once handled; the stream is trimmed by MAXLEN.
    Preview decisions travel the same way (fields kind="preview", call_id, agent_id, decision dial|skip,
    by agent|timeout; producer: DecidePreview), so that a dial or skip is not lost in a lease change."""
    return f"{_c(campaign_id)}:agent-hangups"


AGENT_HANGUPS_GROUP = "dialer"
AGENT_HANGUPS_MAXLEN = 10_000


# Atomicity of agent transitions (agent service). Every state change of an agent is ONE Lua script that
# touches the agent hash, the ready sets of all the agent's campaigns and the pacing view
# (campaign_agents) of each of them, and publishes on agent_offers. The agent's campaigns are only known
# inside the script, so their key names come from templates (``campaign_ready("%s")``) built here and
# passed as ARGV. This is atomic on one Redis primary (standalone or Sentinel, the deployment DESIGN.md
# names). On Redis Cluster these keys span slots ({a:ID}, {c:ID}) and the scripts would be refused: the
# cluster path is to put every assignment key under one hash tag per tenant ({t:TENANT}), trading spread
# over shards for atomicity (assignment traffic, hundreds of answers per second, fits one shard).


def agent_key_template(kind: str) -> str:
    """Template (``%s`` = id) of a per-agent or per-campaign key, for Lua scripts that derive key names
    of an agent's campaigns: kind is "ready" (campaign_ready), "view" (campaign_agents), "agent",
    "presence", "offers", "acks" (agent_acks, by replica id) or "hangups" (agent_hangups). Writer/reader:
    agent service scripts."""
    builders = {
        "ready": campaign_ready,
        "view": campaign_agents,
        "agent": agent,
        "presence": agent_presence,
        "offers": agent_offers,
        "acks": agent_acks,
        "hangups": agent_hangups,
    }
    return builders[kind]("%s")


def agent_acks(replica_id: str) -> str:
    """Pub/sub channel of one agent-service replica: "offer delivered on the agent's stream" / "stream
    dropped with the offer pending" notices for the OfferCall calls that replica is waiting on. Writer:
    the replica holding the agent's Connect stream, the presence sweeper. Reader: that replica. No data."""
    return f"{PREFIX}agentsvc:acks:{replica_id}"


def agents_presence_due() -> str:
    """Sorted set: agent id -> when (Redis TIME ms) their presence key expires unless refreshed. Writer:
    agent service (presence touch, logout). Reader: the presence sweeper (ZRANGEBYSCORE up to now), so a
    sweep costs O(agents due), not O(agents online). No TTL; members removed at logout."""
    return f"{PREFIX}agents:due:presence"


def agents_deadlines_due() -> str:
    """Sorted set: agent id -> next state deadline (ms): wrap-up timeout, or a reservation's offer deadline
    plus slack. Writer: agent transition script. Reader: the presence sweeper. No TTL; members removed or
    rescheduled by the sweep."""
    return f"{PREFIX}agents:due:deadlines"


# ---------------------------------------------------------------- DNC


def dnc_index_current() -> str:
    """String: version number of the live DNC lookup index. Writer: dnc (atomic switch after a rebuild).
    Reader: dnc gate. No TTL."""
    return f"{PREFIX}dnc:idx:current"


def dnc_index(version: int, shard: str) -> str:
    """The DNC lookup index, one key per shard (layout chosen by measurement in the dnc package). Writer:
    dnc rebuild/import/add/remove. Reader: dnc gate. Old versions deleted after a switch."""
    return f"{PREFIX}dnc:idx:{version}:{shard}"


def dnc_index_meta(version: int) -> str:
    """Hash: which lists and counts a DNC index version holds. Writer/reader: dnc. Deleted with the version."""
    return f"{PREFIX}dnc:idx:{version}:meta"


def dnc_changes() -> str:
    """Integer: a counter of DNC listings and consent revocations (INCR). Writer: dnc, before it records
    one. Reader: pacing, before its dial-time check and again at the dial (core/dnc_changes.py). No TTL."""
    return f"{PREFIX}dnc:changes"


def dnc_changed(number: str) -> str:
    """String: the :func:`dnc_changes` value at which ``number`` was last listed or had a consent revoked.
    Writer: dnc. Reader: pacing, at the dial. TTL: core/dnc_changes.MARK_TTL_S."""
    return f"{PREFIX}dnc:changed:{number}"


def dnc_lock(name: str) -> str:
    """String: a short lock for DNC maintenance (rebuild, import). TTL: a few minutes, renewed."""
    return f"{PREFIX}dnc:lock:{name}"


# ---------------------------------------------------------------- auth


def revoked_tokens() -> str:
    """Hash of the token revocation list, mirrored from PostgreSQL (token_revocations, the record): field
    ``jti:<jti>`` or ``sub:<subject>``, value ``<before>|<expires_at>`` (epoch seconds; ``before`` is 0 for a
    jti). Writers: ``outdial token revoke``, and any service that finds :func:`revoked_tokens_version` gone
    (Redis lost its data) rebuilds it from PostgreSQL. Readers: every service (an in-process copy refreshed
    every second). No TTL (entries past expires_at are ignored, and skipped at the next rebuild)."""
    return f"{PREFIX}auth:revoked"


def revoked_tokens_version() -> str:
    """Counter bumped at every change of :func:`revoked_tokens`; services reload the hash when it changes,
    and rebuild it from PostgreSQL when the counter is missing. Same writers and readers, no TTL."""
    return f"{PREFIX}auth:revoked:version"


def revocations_channel() -> str:
    """Pub/sub channel: ``outdial token revoke`` publishes after each change, so services refresh at once
    instead of within the second."""
    return f"{PREFIX}auth:revoked:changed"


# ---------------------------------------------------------------- infrastructure


def health_probe() -> str:
    """String written by nobody: the health checker only PINGs. Kept here so no one formats it elsewhere."""
    return f"{PREFIX}health"
