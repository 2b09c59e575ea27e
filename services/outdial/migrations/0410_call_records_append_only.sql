-- Call detail records are append-only (issue 13, point 7), like dial attempts (0409): the campaign service's
-- event consumer appends what each call event says, and never changes a row.
--
--   call_record_heads    one row per call: who was called in which campaign (written by its first event)
--   call_record_entries  one row per applied call event (dialing, answered, connected, ended, disposition,
--                        blocked) or correction (kind 'correction', with actor and reason), each stating the
--                        facts it carries
--   call_records         a view with the old shape: each fact is the one the latest entry stating it says
--
-- The triggers of 0409's call_record_immutable() refuse UPDATE, DELETE and TRUNCATE to everyone but the
-- retention function (0411). The migration role may still INSERT through the view (seeding, back-fills).

ALTER TABLE call_records RENAME TO call_record_heads;

CREATE TABLE IF NOT EXISTS call_record_entries (
    seq              bigserial   PRIMARY KEY,
    call_id          text        NOT NULL REFERENCES call_record_heads (call_id),
    kind             text        NOT NULL CHECK (kind IN ('dialing', 'answered', 'connected', 'ended', 'recording',
                         'disposition', 'blocked', 'correction', 'import')),
    event_id         text        NOT NULL DEFAULT '',
    written_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    calling_number   text,
    attempt          integer,
    dial_at          timestamptz,
    answer_at        timestamptz,
    connect_at       timestamptz,
    end_at           timestamptz,
    outcome          text,
    answer           text,
    agent_id         text,
    duration_s       double precision,
    disposition      text,
    notes            text,
    recording_path   text,
    recording_ms     bigint,
    recording_sha256 text,
    actor            text        NOT NULL DEFAULT '',
    reason           text        NOT NULL DEFAULT '',
    CONSTRAINT call_record_entries_recording_whole CHECK (
        (recording_path IS NULL) = (recording_sha256 IS NULL)
        AND (recording_sha256 IS NULL OR recording_sha256 ~ '^[0-9a-f]{64}$')
    ),
    CONSTRAINT call_record_entries_correction_says_why CHECK (
        kind <> 'correction' OR (actor <> '' AND reason <> '')
    )
);
CREATE INDEX IF NOT EXISTS call_record_entries_call ON call_record_entries (call_id, seq);
-- ScheduleCallback by an agent: the lead of the agent's last connected call.
CREATE INDEX IF NOT EXISTS call_record_entries_agent ON call_record_entries (agent_id, connect_at DESC)
    WHERE agent_id IS NOT NULL AND connect_at IS NOT NULL;

INSERT INTO call_record_entries (call_id, kind, written_at, calling_number, attempt, dial_at, answer_at, connect_at,
                                 end_at, outcome, answer, agent_id, duration_s, disposition, notes, recording_path,
                                 recording_ms, recording_sha256, actor, reason)
SELECT call_id, 'import', updated_at, nullif(calling_number, ''), attempt, dial_at, answer_at, connect_at, end_at,
       nullif(outcome, ''), nullif(answer, ''), nullif(agent_id, ''), duration_s, nullif(disposition, ''),
       nullif(notes, ''), recording_path, recording_ms, recording_sha256, 'migration', '0410'
  FROM call_record_heads;

ALTER TABLE call_record_heads DROP CONSTRAINT IF EXISTS call_records_recording_whole;
ALTER TABLE call_record_heads
    DROP COLUMN IF EXISTS calling_number, DROP COLUMN IF EXISTS attempt, DROP COLUMN IF EXISTS dial_at,
    DROP COLUMN IF EXISTS answer_at, DROP COLUMN IF EXISTS connect_at, DROP COLUMN IF EXISTS end_at,
    DROP COLUMN IF EXISTS outcome, DROP COLUMN IF EXISTS answer, DROP COLUMN IF EXISTS agent_id,
    DROP COLUMN IF EXISTS duration_s, DROP COLUMN IF EXISTS disposition, DROP COLUMN IF EXISTS notes,
    DROP COLUMN IF EXISTS updated_at, DROP COLUMN IF EXISTS recording_path, DROP COLUMN IF EXISTS recording_ms,
    DROP COLUMN IF EXISTS recording_sha256;
CREATE INDEX IF NOT EXISTS call_record_heads_campaign ON call_record_heads (campaign_id);
CREATE INDEX IF NOT EXISTS call_record_heads_number ON call_record_heads (called_number);
CREATE INDEX IF NOT EXISTS call_record_heads_created ON call_record_heads (created_at);

-- LATERAL: a filter on a head column (call_id, campaign_id, lead_id, called_number) reaches the heads' indexes
-- before any folding.
CREATE OR REPLACE VIEW call_records AS
SELECT h.call_id, h.campaign_id, h.lead_id, coalesce(f.calling_number, '') AS calling_number, h.called_number,
       coalesce(f.attempt, 0) AS attempt, f.dial_at, f.answer_at, f.connect_at, f.end_at,
       coalesce(f.outcome, '') AS outcome, coalesce(f.answer, '') AS answer, coalesce(f.agent_id, '') AS agent_id,
       f.duration_s, coalesce(f.disposition, '') AS disposition, coalesce(f.notes, '') AS notes, h.created_at,
       coalesce(f.updated_at, h.created_at) AS updated_at, f.recording_path, f.recording_ms, f.recording_sha256,
       coalesce(f.revisions, 0) AS revisions
  FROM call_record_heads h
  LEFT JOIN LATERAL (
      SELECT (array_agg(e.calling_number ORDER BY e.seq DESC)
                  FILTER (WHERE e.calling_number IS NOT NULL))[1] AS calling_number,
             (array_agg(e.attempt ORDER BY e.seq DESC) FILTER (WHERE e.attempt IS NOT NULL))[1] AS attempt,
             (array_agg(e.dial_at ORDER BY e.seq DESC) FILTER (WHERE e.dial_at IS NOT NULL))[1] AS dial_at,
             (array_agg(e.answer_at ORDER BY e.seq DESC) FILTER (WHERE e.answer_at IS NOT NULL))[1] AS answer_at,
             (array_agg(e.connect_at ORDER BY e.seq DESC) FILTER (WHERE e.connect_at IS NOT NULL))[1] AS connect_at,
             (array_agg(e.end_at ORDER BY e.seq DESC) FILTER (WHERE e.end_at IS NOT NULL))[1] AS end_at,
             (array_agg(e.outcome ORDER BY e.seq DESC) FILTER (WHERE e.outcome IS NOT NULL))[1] AS outcome,
             (array_agg(e.answer ORDER BY e.seq DESC) FILTER (WHERE e.answer IS NOT NULL))[1] AS answer,
             (array_agg(e.agent_id ORDER BY e.seq DESC) FILTER (WHERE e.agent_id IS NOT NULL))[1] AS agent_id,
             (array_agg(e.duration_s ORDER BY e.seq DESC) FILTER (WHERE e.duration_s IS NOT NULL))[1] AS duration_s,
             (array_agg(e.disposition ORDER BY e.seq DESC)
                  FILTER (WHERE e.disposition IS NOT NULL))[1] AS disposition,
             (array_agg(e.notes ORDER BY e.seq DESC) FILTER (WHERE e.notes IS NOT NULL))[1] AS notes,
             (array_agg(e.recording_path ORDER BY e.seq DESC)
                  FILTER (WHERE e.recording_path IS NOT NULL))[1] AS recording_path,
             (array_agg(e.recording_ms ORDER BY e.seq DESC)
                  FILTER (WHERE e.recording_path IS NOT NULL))[1] AS recording_ms,
             (array_agg(e.recording_sha256 ORDER BY e.seq DESC)
                  FILTER (WHERE e.recording_path IS NOT NULL))[1] AS recording_sha256,
             max(e.written_at) AS updated_at,
             count(*) AS revisions
        FROM call_record_entries e WHERE e.call_id = h.call_id
  ) f ON true;

CREATE OR REPLACE FUNCTION call_records_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO call_record_heads (call_id, campaign_id, lead_id, called_number, created_at)
    VALUES (NEW.call_id, NEW.campaign_id, NEW.lead_id, coalesce(NEW.called_number, ''),
            coalesce(NEW.created_at, now()));
    -- An imported row is dated by the facts it carries (as 0410's own import of the rows before it).
    INSERT INTO call_record_entries (call_id, kind, written_at, calling_number, attempt, dial_at, answer_at,
                                     connect_at, end_at, outcome, answer, agent_id, duration_s, disposition, notes,
                                     recording_path, recording_ms, recording_sha256, actor, reason)
    VALUES (NEW.call_id, 'import', coalesce(NEW.updated_at, NEW.created_at, clock_timestamp()),
            nullif(NEW.calling_number, ''), NEW.attempt, NEW.dial_at, NEW.answer_at,
            NEW.connect_at, NEW.end_at, nullif(NEW.outcome, ''), nullif(NEW.answer, ''), nullif(NEW.agent_id, ''),
            NEW.duration_s, nullif(NEW.disposition, ''), nullif(NEW.notes, ''), NEW.recording_path, NEW.recording_ms,
            NEW.recording_sha256, current_user, 'inserted through the call_records view');
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS call_records_insert ON call_records;
CREATE TRIGGER call_records_insert INSTEAD OF INSERT ON call_records
    FOR EACH ROW EXECUTE FUNCTION call_records_insert();

-- Never changed, never removed (but by the retention function): 0409's call_record_immutable().
DROP TRIGGER IF EXISTS call_record_heads_immutable ON call_record_heads;
CREATE TRIGGER call_record_heads_immutable BEFORE UPDATE OR DELETE ON call_record_heads
    FOR EACH ROW EXECUTE FUNCTION call_record_immutable();
DROP TRIGGER IF EXISTS call_record_heads_no_truncate ON call_record_heads;
CREATE TRIGGER call_record_heads_no_truncate BEFORE TRUNCATE ON call_record_heads
    FOR EACH STATEMENT EXECUTE FUNCTION call_record_immutable();
DROP TRIGGER IF EXISTS call_record_entries_immutable ON call_record_entries;
CREATE TRIGGER call_record_entries_immutable BEFORE UPDATE OR DELETE ON call_record_entries
    FOR EACH ROW EXECUTE FUNCTION call_record_immutable();
DROP TRIGGER IF EXISTS call_record_entries_no_truncate ON call_record_entries;
CREATE TRIGGER call_record_entries_no_truncate BEFORE TRUNCATE ON call_record_entries
    FOR EACH STATEMENT EXECUTE FUNCTION call_record_immutable();
