-- Retention (issue 13, point 7): call detail records older than the retention period are removed by a
-- scheduled job (campaign service; `outdial retention run [--dry-run]`), through retention_prune(), a SECURITY
-- DEFINER function owned by the migration role: the services cannot UPDATE or DELETE call records (0409, 0410),
-- and the one path that removes them keeps a floor the caller cannot lower.
--
-- retention_policy  each jurisdiction's minimum (years), from the rules table (rules/data/*.yaml, kind
--                   retention), written by `outdial db migrate` (core/db.py) with the migration role: no service
--                   may change it. A campaign's records are kept at least its jurisdiction's minimum; a record
--                   whose campaign is unknown, and the event-idempotency rows, the largest minimum.
-- retention_runs    one row per run (dry or not): who, when, the period asked, the rows removed per table.
--                   Append-only (settings_version_immutable() refuses UPDATE and DELETE to everyone).
--
-- Removed: calls (call_record_heads + call_record_entries, dial_attempt_gates + dial_attempt_events + a stale
-- dial_open row), agent dispositions (and their revisions, 0305), applied call-event ids. Kept, and why:
--   dnc_audit       the hash chain must stay verifiable from its genesis; its records are the DNC and consent
--                   evidence (DNC requests are honoured, and their proof kept, 5 years after the request; a
--                   chain cut would need a signed checkpoint, which the DNC service owns): not pruned here.
--   dnc_entries, dnc_consent, RND results: the DNC service's records, kept by their own rules.
--   campaign_versions, pacing_settings_versions, campaign_starts: small, and the proof of what settings a call
--                   was placed under; kept as long as their campaign.

CREATE TABLE IF NOT EXISTS retention_policy (
    jurisdiction text        PRIMARY KEY,
    min_years    integer     NOT NULL CHECK (min_years > 0),
    source       text        NOT NULL,
    rule_id      text        NOT NULL,
    written_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS retention_runs (
    id        bigserial   PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor     text        NOT NULL,
    dry_run   boolean     NOT NULL,
    years     integer     NOT NULL,
    -- {"call_records": n, "dial_attempts": n, "agent_dispositions": n, "campaign_events_applied": n}
    removed   jsonb       NOT NULL,
    -- the jurisdictions' minimums the run applied: {"US": 5, "UK": 6, …}
    floors    jsonb       NOT NULL
);
DROP TRIGGER IF EXISTS retention_runs_immutable ON retention_runs;
CREATE TRIGGER retention_runs_immutable BEFORE UPDATE OR DELETE ON retention_runs
    FOR EACH ROW EXECUTE FUNCTION settings_version_immutable();
DROP TRIGGER IF EXISTS retention_runs_no_truncate ON retention_runs;
CREATE TRIGGER retention_runs_no_truncate BEFORE TRUNCATE ON retention_runs
    FOR EACH STATEMENT EXECUTE FUNCTION settings_version_immutable();

-- p_years: the retention the service is configured with (it refuses to start below the rules' minimum);
-- each record is kept max(p_years, its jurisdiction's minimum) years. Removes at most p_limit calls of each
-- kind per call (the job calls again while it removed some), so no run holds locks for long.
CREATE OR REPLACE FUNCTION retention_prune(p_years integer, p_dry_run boolean, p_actor text, p_limit integer)
RETURNS TABLE (run_id bigint, removed jsonb, floors jsonb)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_max integer;
    v_floors jsonb;
    v_now timestamptz := now();
    n_calls bigint := 0;
    n_attempts bigint := 0;
    n_disp bigint := 0;
    n_events bigint := 0;
    v_removed jsonb;
    v_id bigint;
    v_ids text[];
    v_disp bigint[];
BEGIN
    IF p_years IS NULL OR p_years < 1 THEN
        RAISE EXCEPTION 'retention_prune: years must be at least 1, got %', p_years USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_actor IS NULL OR p_actor = '' THEN
        RAISE EXCEPTION 'retention_prune: the actor is required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT max(min_years), jsonb_object_agg(jurisdiction, min_years) INTO v_max, v_floors FROM retention_policy;
    IF v_max IS NULL THEN
        -- Fail closed: without the rules' minimums nothing is removed.
        RAISE EXCEPTION 'retention_prune: no retention policy (run `outdial db migrate`)'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    PERFORM set_config('outdial.retention', 'on', true);

    -- A call goes whole (its head and every entry), and only when nothing about it (a correction) was written
    -- within the period either.
    SELECT coalesce(array_agg(call_id), '{}') INTO v_ids FROM (
        SELECT h.call_id FROM call_record_heads h
          LEFT JOIN campaigns k ON k.id = h.campaign_id
          LEFT JOIN retention_policy p ON p.jurisdiction = k.settings->>'jurisdiction'
         WHERE h.created_at < v_now - make_interval(years => greatest(p_years, coalesce(p.min_years, v_max)))
           AND NOT EXISTS (SELECT 1 FROM call_record_entries e WHERE e.call_id = h.call_id
                   AND e.written_at >= v_now - make_interval(years => greatest(p_years, coalesce(p.min_years, v_max))))
         LIMIT p_limit) x;
    n_calls := cardinality(v_ids);
    IF NOT p_dry_run THEN
        DELETE FROM call_record_entries WHERE call_id = ANY(v_ids);
        DELETE FROM call_record_heads WHERE call_id = ANY(v_ids);
    END IF;

    SELECT coalesce(array_agg(call_id), '{}') INTO v_ids FROM (
        SELECT g.call_id FROM dial_attempt_gates g
          LEFT JOIN campaigns k ON k.id = g.campaign_id
          LEFT JOIN retention_policy p ON p.jurisdiction = k.settings->>'jurisdiction'
         WHERE g.gate_at < v_now - make_interval(years => greatest(p_years, coalesce(p.min_years, v_max)))
           AND NOT EXISTS (SELECT 1 FROM dial_attempt_events e WHERE e.call_id = g.call_id
                   AND e.written_at >= v_now - make_interval(years => greatest(p_years, coalesce(p.min_years, v_max))))
         LIMIT p_limit) x;
    n_attempts := cardinality(v_ids);
    IF NOT p_dry_run THEN
        DELETE FROM dial_open WHERE call_id = ANY(v_ids);
        DELETE FROM dial_attempt_events WHERE call_id = ANY(v_ids);
        DELETE FROM dial_attempt_gates WHERE call_id = ANY(v_ids);
    END IF;

    SELECT coalesce(array_agg(id), '{}') INTO v_disp FROM (
        SELECT d.id FROM agent_dispositions d
          LEFT JOIN campaigns k ON k.id = d.campaign_id
          LEFT JOIN retention_policy p ON p.jurisdiction = k.settings->>'jurisdiction'
         WHERE d.at < v_now - make_interval(years => greatest(p_years, coalesce(p.min_years, v_max)))
           AND d.dnc_status <> 'pending' AND d.callback_status <> 'pending'
         LIMIT p_limit) x;
    n_disp := cardinality(v_disp);
    IF NOT p_dry_run THEN
        -- agent_disposition_revisions: 0305 (the agent's range), applied after this file.
        DELETE FROM agent_disposition_revisions WHERE disposition_id = ANY(v_disp);
        DELETE FROM agent_dispositions WHERE id = ANY(v_disp);
    END IF;

    WITH old AS (
        SELECT event_id FROM campaign_events_applied
         WHERE applied_at < v_now - make_interval(years => greatest(p_years, v_max)) LIMIT p_limit
    ), gone AS (
        DELETE FROM campaign_events_applied a USING old WHERE a.event_id = old.event_id AND NOT p_dry_run RETURNING 1
    )
    SELECT CASE WHEN p_dry_run THEN (SELECT count(*) FROM old) ELSE (SELECT count(*) FROM gone) END INTO n_events;

    v_removed := jsonb_build_object('call_records', n_calls, 'dial_attempts', n_attempts,
                                    'agent_dispositions', n_disp, 'campaign_events_applied', n_events);
    INSERT INTO retention_runs (actor, dry_run, years, removed, floors)
    VALUES (p_actor, p_dry_run, p_years, v_removed, v_floors) RETURNING id INTO v_id;
    RETURN QUERY SELECT v_id, v_removed, v_floors;
END $$;
REVOKE ALL ON FUNCTION retention_prune(integer, boolean, text, integer) FROM PUBLIC;
