-- Agent service: the state timeline (occupancy and idle-time KPIs) and every disposition.

CREATE TABLE IF NOT EXISTS agent_state_events (
    id          bigserial PRIMARY KEY,
    agent_id    text        NOT NULL,
    -- Per-agent sequence number from Redis (orders events of one agent across replicas).
    seq         bigint      NOT NULL,
    campaigns   text[]      NOT NULL DEFAULT '{}',
    state       text        NOT NULL CHECK (state IN
                    ('logged_out', 'ready', 'reserved', 'on_call', 'wrap_up', 'paused')),
    reason      text        NOT NULL DEFAULT '',
    at          timestamptz NOT NULL,
    call_id     text        NOT NULL DEFAULT '',
    session_id  text        NOT NULL DEFAULT '',
    UNIQUE (agent_id, seq)
);
CREATE INDEX IF NOT EXISTS agent_state_events_agent_at ON agent_state_events (agent_id, at);
CREATE INDEX IF NOT EXISTS agent_state_events_campaigns ON agent_state_events USING gin (campaigns);

CREATE TABLE IF NOT EXISTS agent_dispositions (
    id            bigserial PRIMARY KEY,
    event_id      text        NOT NULL UNIQUE,
    agent_id      text        NOT NULL,
    call_id       text        NOT NULL,
    campaign_id   text        NOT NULL DEFAULT '',
    lead_id       text        NOT NULL DEFAULT '',
    number        text        NOT NULL DEFAULT '',
    disposition   text        NOT NULL,
    callback_at   timestamptz,
    notes         text        NOT NULL DEFAULT '',
    at            timestamptz NOT NULL,
    -- Follow-up calls to other services: 'none' (not needed), 'pending' (retrying), 'done'.
    dnc_status      text NOT NULL DEFAULT 'none' CHECK (dnc_status IN ('none', 'pending', 'done')),
    callback_status text NOT NULL DEFAULT 'none' CHECK (callback_status IN ('none', 'pending', 'done')),
    attempts      integer     NOT NULL DEFAULT 0,
    last_error    text        NOT NULL DEFAULT '',
    UNIQUE (agent_id, call_id)
);
CREATE INDEX IF NOT EXISTS agent_dispositions_pending ON agent_dispositions (id)
    WHERE dnc_status = 'pending' OR callback_status = 'pending';
