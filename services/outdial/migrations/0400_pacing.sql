-- Pacing service tables.

-- Pacing settings per campaign (UpdatePacingSettings); the live copy is in Redis (keys.pacing_settings).
CREATE TABLE IF NOT EXISTS pacing_settings (
    campaign_id  text        PRIMARY KEY,
    settings     jsonb       NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    updated_by   text        NOT NULL DEFAULT ''
);

-- Every call the dialer considered, written at dial time with the gate's decision and the fencing token
-- of the lease it dialled under, then completed with the outcome when the call ends.
CREATE TABLE IF NOT EXISTS dial_attempts (
    call_id      text        PRIMARY KEY,
    campaign_id  text        NOT NULL,
    lead_id      text        NOT NULL,
    number       text        NOT NULL,
    attempt      integer     NOT NULL DEFAULT 0,
    replica      text        NOT NULL,
    fence_token  bigint      NOT NULL,
    allowed      boolean     NOT NULL,
    reasons      jsonb       NOT NULL DEFAULT '[]',
    gate_at      timestamptz NOT NULL,
    dial_at      timestamptz,
    answer_at    timestamptz,
    connect_at   timestamptz,
    end_at       timestamptz,
    outcome      text,
    answer       text,
    agent_id     text,
    opt_out      boolean     NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS dial_attempts_campaign_gate ON dial_attempts (campaign_id, gate_at);
CREATE INDEX IF NOT EXISTS dial_attempts_lead ON dial_attempts (campaign_id, lead_id, dial_at);
