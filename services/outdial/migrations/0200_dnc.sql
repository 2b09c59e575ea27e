-- DNC compliance: lists, entries (history kept), consent, registry imports and the tamper-evident audit log.
-- PostgreSQL is the truth; the Redis lookup index is rebuilt from these tables.

-- The service's own role. Deployments connect as (a member of) outdial_app; it can read and append the
-- audit log but never change or erase it. Created idempotently: roles are cluster-wide and several
-- databases (tests, replicas) may run this migration at the same time.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'outdial_app') THEN
        CREATE ROLE outdial_app NOLOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
    WHEN insufficient_privilege THEN RAISE NOTICE 'cannot create role outdial_app; create it by hand';
END
$$;

CREATE TABLE IF NOT EXISTS dnc_lists (
    id            text        PRIMARY KEY,  -- "internal", "campaign:<id>", "national:US", "state:US-FL", "wireless:US"
    kind          text        NOT NULL CHECK (kind IN ('internal', 'campaign', 'national', 'state', 'wireless')),
    name          text        NOT NULL,
    jurisdiction  text        NOT NULL DEFAULT '',
    state         text        NOT NULL DEFAULT '',
    campaign_id   text        NOT NULL DEFAULT '',
    registry_date timestamptz,              -- download date of the registry copy (national lists)
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

INSERT INTO dnc_lists (id, kind, name) VALUES ('internal', 'internal', 'Company do-not-call list')
ON CONFLICT (id) DO NOTHING;

-- One row per time a number was put on a list. Removal stamps removed_at (never DELETE), so the list
-- state at any past instant is: added_at <= T AND (removed_at IS NULL OR removed_at > T).
CREATE TABLE IF NOT EXISTS dnc_entries (
    id             bigserial   PRIMARY KEY,
    list_id        text        NOT NULL REFERENCES dnc_lists (id),
    number         text        NOT NULL,   -- E.164
    source         text        NOT NULL DEFAULT '',
    actor          text        NOT NULL DEFAULT '',
    reason         text        NOT NULL DEFAULT '',
    added_at       timestamptz NOT NULL,
    expires_at     timestamptz,
    removed_at     timestamptz,
    removed_by     text,
    removed_reason text,
    -- database time of the last change of this row: the index rebuild replays changes after its snapshot
    changed_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE UNIQUE INDEX IF NOT EXISTS dnc_entries_current ON dnc_entries (list_id, number) WHERE removed_at IS NULL;
CREATE INDEX IF NOT EXISTS dnc_entries_number ON dnc_entries (number);
CREATE INDEX IF NOT EXISTS dnc_entries_changed ON dnc_entries (changed_at);

-- Every registry file imported (the download date at each instant answers "was the copy fresh at T?").
CREATE TABLE IF NOT EXISTS dnc_registry_imports (
    id            bigserial   PRIMARY KEY,
    list_id       text        NOT NULL REFERENCES dnc_lists (id),
    mode          text        NOT NULL,
    downloaded_at timestamptz NOT NULL,
    imported_at   timestamptz NOT NULL,
    actor         text        NOT NULL,
    lines         bigint      NOT NULL,
    added         bigint      NOT NULL,
    removed       bigint      NOT NULL,
    invalid       bigint      NOT NULL
);

-- Consent (grant / revoke). A revocation stamps revoked_at; rows are never deleted.
CREATE TABLE IF NOT EXISTS dnc_consent (
    id          bigserial   PRIMARY KEY,
    number      text        NOT NULL,
    kind        text        NOT NULL,
    campaign_id text        NOT NULL DEFAULT '',
    evidence    text        NOT NULL DEFAULT '',
    actor       text        NOT NULL,
    granted_at  timestamptz NOT NULL,
    expires_at  timestamptz,
    revoked_at  timestamptz,
    revoked_by  text
);
CREATE INDEX IF NOT EXISTS dnc_consent_number ON dnc_consent (number);

-- Set when a list change reached PostgreSQL but not the Redis index: the gate fails closed until a rebuild.
CREATE TABLE IF NOT EXISTS dnc_index_state (
    id          integer     PRIMARY KEY CHECK (id = 1),
    dirty_since timestamptz
);
INSERT INTO dnc_index_state (id) VALUES (1) ON CONFLICT (id) DO NOTHING;

-- The append-only audit log. hash = sha256(canonical(record) || prev_hash) (outdial.dnc.audit).
CREATE TABLE IF NOT EXISTS dnc_audit (
    seq         bigint      PRIMARY KEY,
    at          timestamptz NOT NULL,
    actor       text        NOT NULL,
    action      text        NOT NULL,
    number      text        NOT NULL DEFAULT '',
    campaign_id text        NOT NULL DEFAULT '',
    call_id     text        NOT NULL DEFAULT '',
    result      text        NOT NULL DEFAULT '',
    reason      text        NOT NULL DEFAULT '',
    details     text        NOT NULL DEFAULT '{}',  -- canonical JSON, kept as text so it hashes as written
    prev_hash   text        NOT NULL,
    hash        text        NOT NULL
);
CREATE INDEX IF NOT EXISTS dnc_audit_number ON dnc_audit (number, seq);
CREATE INDEX IF NOT EXISTS dnc_audit_campaign ON dnc_audit (campaign_id, seq);
CREATE INDEX IF NOT EXISTS dnc_audit_at ON dnc_audit (at);

-- The chain head: appends lock this row (SELECT ... FOR UPDATE), which serialises them.
CREATE TABLE IF NOT EXISTS dnc_audit_head (
    id   integer PRIMARY KEY CHECK (id = 1),
    seq  bigint  NOT NULL,
    hash text    NOT NULL
);
INSERT INTO dnc_audit_head (id, seq, hash) VALUES (1, 0, repeat('0', 64)) ON CONFLICT (id) DO NOTHING;

CREATE OR REPLACE FUNCTION dnc_audit_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'dnc_audit is append-only (% refused)', TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;
DROP TRIGGER IF EXISTS dnc_audit_no_change ON dnc_audit;
CREATE TRIGGER dnc_audit_no_change BEFORE UPDATE OR DELETE ON dnc_audit
    FOR EACH ROW EXECUTE FUNCTION dnc_audit_immutable();
DROP TRIGGER IF EXISTS dnc_audit_no_truncate ON dnc_audit;
CREATE TRIGGER dnc_audit_no_truncate BEFORE TRUNCATE ON dnc_audit
    FOR EACH STATEMENT EXECUTE FUNCTION dnc_audit_immutable();

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'outdial_app') THEN
        GRANT USAGE ON SCHEMA public TO outdial_app;
        GRANT SELECT, INSERT, UPDATE ON dnc_lists, dnc_entries, dnc_registry_imports, dnc_consent,
            dnc_index_state, dnc_audit_head TO outdial_app;
        GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO outdial_app;
        GRANT SELECT, INSERT ON dnc_audit TO outdial_app;
        REVOKE UPDATE, DELETE, TRUNCATE ON dnc_audit FROM outdial_app;
    END IF;
END
$$;
REVOKE UPDATE, DELETE, TRUNCATE ON dnc_audit FROM PUBLIC;
