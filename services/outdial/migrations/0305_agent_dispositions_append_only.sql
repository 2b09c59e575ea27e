-- Agent dispositions are call records (issue 13, point 7): what the agent recorded about a call is never
-- changed or removed. The agent service keeps UPDATE on the follow-up columns only (dnc_status,
-- callback_status, attempts, last_error: grants.py gives column privileges); the trigger refuses any change
-- to the record's own columns and any DELETE, for everyone but the retention function (0118).
--
-- A retry of SetDisposition whose content differs from the row written first (the agent changed their mind
-- before the first attempt completed) appends a revision instead of overwriting: agent_disposition_revisions,
-- append-only as well. agent_dispositions_current shows each disposition with its latest revision.

CREATE TABLE IF NOT EXISTS agent_disposition_revisions (
    id             bigserial   PRIMARY KEY,
    disposition_id bigint      NOT NULL REFERENCES agent_dispositions (id),
    disposition    text        NOT NULL,
    callback_at    timestamptz,
    notes          text        NOT NULL DEFAULT '',
    at             timestamptz NOT NULL,
    written_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS agent_disposition_revisions_of ON agent_disposition_revisions (disposition_id, id);

CREATE OR REPLACE FUNCTION agent_disposition_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF current_setting('outdial.retention', true) = 'on' THEN
            RETURN OLD;
        END IF;
    ELSIF (NEW.id, NEW.event_id, NEW.agent_id, NEW.call_id, NEW.campaign_id, NEW.lead_id, NEW.number,
           NEW.disposition, NEW.callback_at, NEW.notes, NEW.at)
          IS NOT DISTINCT FROM
          (OLD.id, OLD.event_id, OLD.agent_id, OLD.call_id, OLD.campaign_id, OLD.lead_id, OLD.number,
           OLD.disposition, OLD.callback_at, OLD.notes, OLD.at) THEN
        RETURN NEW;  -- the follow-up columns only
    END IF;
    RAISE EXCEPTION 'agent_dispositions is append-only: % of the record refused (a change is a revision)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
DROP TRIGGER IF EXISTS agent_dispositions_immutable ON agent_dispositions;
CREATE TRIGGER agent_dispositions_immutable BEFORE UPDATE OR DELETE ON agent_dispositions
    FOR EACH ROW EXECUTE FUNCTION agent_disposition_immutable();
DROP TRIGGER IF EXISTS agent_dispositions_no_truncate ON agent_dispositions;
CREATE TRIGGER agent_dispositions_no_truncate BEFORE TRUNCATE ON agent_dispositions
    FOR EACH STATEMENT EXECUTE FUNCTION agent_disposition_immutable();

CREATE OR REPLACE FUNCTION agent_disposition_revision_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('outdial.retention', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'agent_disposition_revisions is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
DROP TRIGGER IF EXISTS agent_disposition_revisions_immutable ON agent_disposition_revisions;
CREATE TRIGGER agent_disposition_revisions_immutable BEFORE UPDATE OR DELETE ON agent_disposition_revisions
    FOR EACH ROW EXECUTE FUNCTION agent_disposition_revision_immutable();

CREATE OR REPLACE VIEW agent_dispositions_current AS
SELECT d.id, d.event_id, d.agent_id, d.call_id, d.campaign_id, d.lead_id, d.number,
       coalesce(r.disposition, d.disposition) AS disposition,
       CASE WHEN r.id IS NULL THEN d.callback_at ELSE r.callback_at END AS callback_at,
       coalesce(r.notes, d.notes) AS notes, d.at, d.dnc_status, d.callback_status, d.attempts, d.last_error,
       coalesce(r.revisions, 0) AS revisions
  FROM agent_dispositions d
  LEFT JOIN LATERAL (
      SELECT x.id, x.disposition, x.callback_at, x.notes, count(*) OVER () AS revisions
        FROM agent_disposition_revisions x WHERE x.disposition_id = d.id ORDER BY x.id DESC LIMIT 1
  ) r ON true;
