-- Pacing settings are versioned (issue 13, point 7), as campaign settings are (0117): every
-- UpdatePacingSettings appends a version (who, when, the whole settings, what changed). The pacing service
-- may INSERT and SELECT (grants.py), never UPDATE or DELETE; the trigger refuses those to everyone.

CREATE TABLE IF NOT EXISTS pacing_settings_versions (
    campaign_id text        NOT NULL,
    version     integer     NOT NULL CHECK (version >= 1),
    actor       text        NOT NULL,
    at          timestamptz NOT NULL,
    action      text        NOT NULL CHECK (action IN ('create', 'update', 'import')),
    settings    jsonb       NOT NULL,
    changes     jsonb       NOT NULL DEFAULT '[]'::jsonb,
    PRIMARY KEY (campaign_id, version)
);

INSERT INTO pacing_settings_versions (campaign_id, version, actor, at, action, settings)
SELECT campaign_id, 1, coalesce(nullif(updated_by, ''), 'unknown'), updated_at, 'import', settings
  FROM pacing_settings
ON CONFLICT DO NOTHING;

DROP TRIGGER IF EXISTS pacing_settings_versions_immutable ON pacing_settings_versions;
CREATE TRIGGER pacing_settings_versions_immutable BEFORE UPDATE OR DELETE ON pacing_settings_versions
    FOR EACH ROW EXECUTE FUNCTION settings_version_immutable();
DROP TRIGGER IF EXISTS pacing_settings_versions_no_truncate ON pacing_settings_versions;
CREATE TRIGGER pacing_settings_versions_no_truncate BEFORE TRUNCATE ON pacing_settings_versions
    FOR EACH STATEMENT EXECUTE FUNCTION settings_version_immutable();
