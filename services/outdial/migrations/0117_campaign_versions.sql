-- Campaign settings are versioned (issue 13, point 7): every create and update appends a version with who
-- (the actor of the caller's token), when, the whole settings document and what changed. The campaign service
-- may INSERT and SELECT (grants.py), never UPDATE or DELETE; the trigger refuses those to everyone.
--
-- settings: {"name", "description", "scheduled_start", "scheduled_end", "settings": {…}} (campaign/store.py)
-- changes:  [{"path", "before", "after"}] with JSON text values, "" when absent (core/versions.py)

CREATE TABLE IF NOT EXISTS campaign_versions (
    campaign_id text        NOT NULL REFERENCES campaigns (id),
    version     integer     NOT NULL CHECK (version >= 1),
    actor       text        NOT NULL,
    at          timestamptz NOT NULL,
    action      text        NOT NULL CHECK (action IN ('create', 'update', 'import')),
    settings    jsonb       NOT NULL,
    changes     jsonb       NOT NULL DEFAULT '[]'::jsonb,
    PRIMARY KEY (campaign_id, version)
);

-- Campaigns created before versions were kept: their settings as they are now, version 1.
INSERT INTO campaign_versions (campaign_id, version, actor, at, action, settings)
SELECT id, 1, coalesce(nullif(created_by, ''), 'unknown'), updated_at, 'import',
       jsonb_build_object('name', name, 'description', description, 'scheduled_start', scheduled_start,
                          'scheduled_end', scheduled_end, 'settings', settings)
  FROM campaigns
ON CONFLICT DO NOTHING;

CREATE OR REPLACE FUNCTION settings_version_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused (a change is a new version)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
DROP TRIGGER IF EXISTS campaign_versions_immutable ON campaign_versions;
CREATE TRIGGER campaign_versions_immutable BEFORE UPDATE OR DELETE ON campaign_versions
    FOR EACH ROW EXECUTE FUNCTION settings_version_immutable();
DROP TRIGGER IF EXISTS campaign_versions_no_truncate ON campaign_versions;
CREATE TRIGGER campaign_versions_no_truncate BEFORE TRUNCATE ON campaign_versions
    FOR EACH STATEMENT EXECUTE FUNCTION settings_version_immutable();
