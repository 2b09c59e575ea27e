-- Campaign service: campaigns, lead lists, leads and their numbers, rejects, callbacks, call detail records.

CREATE TABLE IF NOT EXISTS campaigns (
    id          text        PRIMARY KEY,
    name        text        NOT NULL,
    description text        NOT NULL DEFAULT '',
    state       text        NOT NULL DEFAULT 'draft',
    -- Every dialing setting, in the shape of the campaign-config contract (see campaign/model.py).
    settings    jsonb       NOT NULL,
    scheduled_start timestamptz,
    scheduled_end   timestamptz,
    created_by  text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS campaigns_state ON campaigns (state);

CREATE TABLE IF NOT EXISTS lead_lists (
    id           text        PRIMARY KEY,
    campaign_id  text        NOT NULL REFERENCES campaigns (id),
    file_name    text        NOT NULL DEFAULT '',
    sha256       text        NOT NULL DEFAULT '',
    request_id   text        NOT NULL DEFAULT '',
    uploaded_by  text        NOT NULL DEFAULT '',
    uploaded_at  timestamptz NOT NULL DEFAULT now(),
    rows         bigint      NOT NULL DEFAULT 0,
    accepted     bigint      NOT NULL DEFAULT 0,
    duplicates   bigint      NOT NULL DEFAULT 0,
    rejected     bigint      NOT NULL DEFAULT 0,
    numbers_accepted bigint  NOT NULL DEFAULT 0,
    rejected_by_reason jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS lead_lists_campaign ON lead_lists (campaign_id, uploaded_at);
CREATE UNIQUE INDEX IF NOT EXISTS lead_lists_request ON lead_lists (campaign_id, request_id) WHERE request_id <> '';

-- status: new | retry | callback | final (final_reason says why: connected, completed, exhausted, dnc, …)
CREATE TABLE IF NOT EXISTS leads (
    id              bigint      PRIMARY KEY,
    campaign_id     text        NOT NULL REFERENCES campaigns (id),
    list_id         text        NOT NULL REFERENCES lead_lists (id),
    row_number      bigint      NOT NULL,
    first_name      text        NOT NULL DEFAULT '',
    last_name       text        NOT NULL DEFAULT '',
    zip             text        NOT NULL DEFAULT '',
    state           text        NOT NULL DEFAULT '',
    fields          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    status          text        NOT NULL DEFAULT 'new',
    final_reason    text        NOT NULL DEFAULT '',
    attempts        integer     NOT NULL DEFAULT 0,
    last_outcome    text        NOT NULL DEFAULT '',
    last_attempt_at timestamptz,
    next_attempt_at timestamptz,
    -- Feeder hint: not worth looking at before this instant (calling window closed, caps, DNC).
    -- Cleared when the campaign's settings change.
    recheck_at      timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE SEQUENCE IF NOT EXISTS leads_id_seq OWNED BY leads.id;
ALTER TABLE leads ALTER COLUMN id SET DEFAULT nextval('leads_id_seq');
CREATE INDEX IF NOT EXISTS leads_callable ON leads (campaign_id, status, next_attempt_at) WHERE status <> 'final';
CREATE INDEX IF NOT EXISTS leads_list ON leads (list_id);

-- One row per (campaign, number): the unique key that makes concurrent uploads store a number once.
CREATE TABLE IF NOT EXISTS lead_numbers (
    campaign_id  text     NOT NULL,
    e164         text     NOT NULL,
    lead_id      bigint   NOT NULL REFERENCES leads (id) DEFERRABLE INITIALLY DEFERRED,
    position     smallint NOT NULL,
    number_type  text     NOT NULL DEFAULT '',
    timezones    text[]   NOT NULL DEFAULT '{}',
    PRIMARY KEY (campaign_id, e164)
);
CREATE INDEX IF NOT EXISTS lead_numbers_lead ON lead_numbers (lead_id, position);

CREATE TABLE IF NOT EXISTS lead_rejects (
    list_id     text   NOT NULL REFERENCES lead_lists (id),
    row_number  bigint NOT NULL,
    field       text   NOT NULL DEFAULT '',
    raw_value   text   NOT NULL DEFAULT '',
    reason      text   NOT NULL,
    detail      text   NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS lead_rejects_list ON lead_rejects (list_id, row_number);

CREATE TABLE IF NOT EXISTS callbacks (
    id          text        PRIMARY KEY,
    campaign_id text        NOT NULL REFERENCES campaigns (id),
    lead_id     bigint      NOT NULL REFERENCES leads (id),
    at          timestamptz NOT NULL,
    agent_id    text        NOT NULL DEFAULT '',
    note        text        NOT NULL DEFAULT '',
    created_by  text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS callbacks_lead ON callbacks (lead_id);

-- Call detail records (kept 5 years: 47 CFR 64.1200 / TSR record keeping).
CREATE TABLE IF NOT EXISTS call_records (
    call_id         text        PRIMARY KEY,
    campaign_id     text        NOT NULL,
    lead_id         bigint,
    calling_number  text        NOT NULL DEFAULT '',
    called_number   text        NOT NULL DEFAULT '',
    attempt         integer     NOT NULL DEFAULT 0,
    dial_at         timestamptz,
    answer_at       timestamptz,
    connect_at      timestamptz,
    end_at          timestamptz,
    outcome         text        NOT NULL DEFAULT '',
    answer          text        NOT NULL DEFAULT '',
    agent_id        text        NOT NULL DEFAULT '',
    duration_s      double precision,
    disposition     text        NOT NULL DEFAULT '',
    notes           text        NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS call_records_campaign ON call_records (campaign_id, dial_at);
CREATE INDEX IF NOT EXISTS call_records_number ON call_records (called_number, dial_at);
CREATE INDEX IF NOT EXISTS call_records_lead ON call_records (lead_id);

-- Call events the campaign consumer has applied (idempotency by event_id).
CREATE TABLE IF NOT EXISTS campaign_events_applied (
    event_id   text        PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
