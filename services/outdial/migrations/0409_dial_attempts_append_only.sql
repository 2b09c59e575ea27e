-- Dial attempts are append-only (issue 13, point 7): nothing a runtime role does can change or remove what
-- was written about a call. The one row per call that the dialer used to UPDATE at each step becomes:
--
--   dial_attempt_gates   the gate's decision (the old row's first columns), written once, at the gate
--   dial_attempt_events  one row per step (dial, answer, connect, outcome, end) or correction, each stating the
--                        facts it knows; a correction is a new row (kind 'correction', with actor and reason)
--   dial_attempts        a view with the old shape: each fact is the one the latest row stating it says,
--                        opt_out is true once any row says so
--   dial_open            which calls are dialled and not ended: the lock rows behind "never two calls at once
--                        to one lead, one number or one agent" (the old partial unique indexes). It is
--                        coordination, not a record: the dialer inserts a row at the dial and deletes it at
--                        the end, in the same statement as the event that says so.
--
-- Each step is still one statement (one round trip), as the UPDATE it replaces. "The end is written once,
-- first writer wins" is the unique index dial_attempt_events_one_end (INSERT … ON CONFLICT DO NOTHING).
-- The triggers below refuse UPDATE, DELETE and TRUNCATE for everyone but the retention function (0411,
-- SECURITY DEFINER, which removes whole calls older than the retention period).

ALTER TABLE dial_attempts RENAME TO dial_attempt_gates;
ALTER INDEX IF EXISTS dial_attempts_pkey RENAME TO dial_attempt_gates_pkey;

CREATE TABLE IF NOT EXISTS dial_attempt_events (
    seq              bigserial   PRIMARY KEY,
    call_id          text        NOT NULL REFERENCES dial_attempt_gates (call_id),
    kind             text        NOT NULL CHECK (kind IN
                         ('dial', 'answer', 'connect', 'outcome', 'end', 'correction', 'import')),
    written_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    dial_at          timestamptz,
    answer_at        timestamptz,
    connect_at       timestamptz,
    end_at           timestamptz,
    outcome          text,
    answer           text,
    agent_id         text,
    opt_out          boolean     NOT NULL DEFAULT false,
    recording_path   text,
    recording_ms     bigint,
    recording_sha256 text,
    -- corrections (and imports): who wrote the row and why
    actor            text        NOT NULL DEFAULT '',
    reason           text        NOT NULL DEFAULT '',
    CONSTRAINT dial_attempt_events_correction_says_why CHECK (
        kind <> 'correction' OR (actor <> '' AND reason <> '')
    )
);
CREATE INDEX IF NOT EXISTS dial_attempt_events_call ON dial_attempt_events (call_id, seq);
CREATE UNIQUE INDEX IF NOT EXISTS dial_attempt_events_one_end ON dial_attempt_events (call_id) WHERE kind = 'end';
-- The campaign service rebuilds call detail records of ended calls whose events Redis lost.
CREATE INDEX IF NOT EXISTS dial_attempt_events_end_at ON dial_attempt_events (end_at) WHERE end_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS dial_open (
    call_id     text PRIMARY KEY REFERENCES dial_attempt_gates (call_id),
    campaign_id text NOT NULL,
    lead_id     text NOT NULL,
    number      text NOT NULL,
    agent_id    text
);
CREATE UNIQUE INDEX IF NOT EXISTS dial_open_lead ON dial_open (campaign_id, lead_id);
CREATE UNIQUE INDEX IF NOT EXISTS dial_open_number ON dial_open (number);
CREATE UNIQUE INDEX IF NOT EXISTS dial_open_agent ON dial_open (agent_id) WHERE agent_id IS NOT NULL;

-- The rows written before: their facts as one 'import' event each, their open calls as lock rows.
INSERT INTO dial_attempt_events (call_id, kind, written_at, dial_at, answer_at, connect_at, end_at, outcome,
                                 answer, agent_id, opt_out, recording_path, recording_ms, recording_sha256,
                                 actor, reason)
SELECT call_id, 'import', coalesce(end_at, connect_at, answer_at, dial_at, gate_at), dial_at, answer_at, connect_at, end_at, outcome, answer, agent_id, opt_out,
       recording_path, recording_ms, recording_sha256, 'migration', '0409'
  FROM dial_attempt_gates
 WHERE dial_at IS NOT NULL OR answer_at IS NOT NULL OR end_at IS NOT NULL OR outcome IS NOT NULL OR opt_out;
INSERT INTO dial_open (call_id, campaign_id, lead_id, number, agent_id)
SELECT call_id, campaign_id, lead_id, number, CASE WHEN connect_at IS NOT NULL THEN agent_id END
  FROM dial_attempt_gates WHERE dial_at IS NOT NULL AND end_at IS NULL
ON CONFLICT DO NOTHING;

ALTER TABLE dial_attempt_gates DROP CONSTRAINT IF EXISTS dial_attempts_connected_is_answered;
ALTER TABLE dial_attempt_gates
    DROP COLUMN IF EXISTS dial_at, DROP COLUMN IF EXISTS answer_at, DROP COLUMN IF EXISTS connect_at,
    DROP COLUMN IF EXISTS end_at, DROP COLUMN IF EXISTS outcome, DROP COLUMN IF EXISTS answer,
    DROP COLUMN IF EXISTS agent_id, DROP COLUMN IF EXISTS opt_out, DROP COLUMN IF EXISTS recording_path,
    DROP COLUMN IF EXISTS recording_ms, DROP COLUMN IF EXISTS recording_sha256;

-- The folded view, in the old table's shape. LATERAL: a filter on a gate column (call_id, campaign_id,
-- lead_id, number, gate_at), and a join on call_id, reach the gate table's indexes before any folding, and only
-- the calls asked for are folded. (A view grouped by the gate columns folds bulk reads faster, but a join
-- cannot reach into it: it folds every call first. bench/records.py measures the reads.)
CREATE OR REPLACE VIEW dial_attempts AS
SELECT g.call_id, g.campaign_id, g.lead_id, g.number, g.attempt, g.replica, g.fence_token, g.allowed, g.reasons,
       g.gate_at, f.dial_at, f.answer_at, f.connect_at, f.end_at, f.outcome, f.answer, f.agent_id,
       coalesce(f.opt_out, false) AS opt_out, g.mode, g.manual, g.dialled_by, f.recording_path, f.recording_ms,
       f.recording_sha256, f.revisions
  FROM dial_attempt_gates g
  LEFT JOIN LATERAL (
      SELECT (array_agg(e.dial_at ORDER BY e.seq DESC) FILTER (WHERE e.dial_at IS NOT NULL))[1] AS dial_at,
             (array_agg(e.answer_at ORDER BY e.seq DESC) FILTER (WHERE e.answer_at IS NOT NULL))[1] AS answer_at,
             (array_agg(e.connect_at ORDER BY e.seq DESC) FILTER (WHERE e.connect_at IS NOT NULL))[1] AS connect_at,
             (array_agg(e.end_at ORDER BY e.seq DESC) FILTER (WHERE e.end_at IS NOT NULL))[1] AS end_at,
             (array_agg(e.outcome ORDER BY e.seq DESC) FILTER (WHERE e.outcome IS NOT NULL))[1] AS outcome,
             (array_agg(e.answer ORDER BY e.seq DESC) FILTER (WHERE e.answer IS NOT NULL))[1] AS answer,
             (array_agg(e.agent_id ORDER BY e.seq DESC) FILTER (WHERE e.agent_id IS NOT NULL))[1] AS agent_id,
             bool_or(e.opt_out) AS opt_out,
             (array_agg(e.recording_path ORDER BY e.seq DESC)
                  FILTER (WHERE e.recording_path IS NOT NULL))[1] AS recording_path,
             (array_agg(e.recording_ms ORDER BY e.seq DESC)
                  FILTER (WHERE e.recording_path IS NOT NULL))[1] AS recording_ms,
             (array_agg(e.recording_sha256 ORDER BY e.seq DESC)
                  FILTER (WHERE e.recording_path IS NOT NULL))[1] AS recording_sha256,
             count(*) AS revisions
        FROM dial_attempt_events e WHERE e.call_id = g.call_id
  ) f ON true;

-- A connected call was answered by a person, at a known time, and connected to an agent at a known time
-- (0401's check, now on the folded facts: checked when the end is written).
CREATE OR REPLACE FUNCTION dial_attempt_end_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    d record;
BEGIN
    SELECT answer, answer_at, connect_at, agent_id, outcome INTO d FROM dial_attempts WHERE call_id = NEW.call_id;
    IF d.outcome = 'connected' AND NOT (d.answer = 'human' AND d.answer_at IS NOT NULL AND d.connect_at IS NOT NULL
                                         AND d.agent_id IS NOT NULL AND d.agent_id <> '') THEN
        RAISE EXCEPTION 'call % is connected without a human answer, its time, a connection time and an agent',
            NEW.call_id USING ERRCODE = 'check_violation', CONSTRAINT = 'dial_attempts_connected_is_answered';
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS dial_attempt_events_end_check ON dial_attempt_events;
-- An end that says another outcome settles it (the end is the call's last step): only a connected end, or a
-- correction or import (which may leave an earlier 'connected' standing), needs the fold.
CREATE CONSTRAINT TRIGGER dial_attempt_events_end_check AFTER INSERT ON dial_attempt_events
    FOR EACH ROW WHEN (NEW.kind IN ('correction', 'import') OR (NEW.kind = 'end' AND NEW.outcome = 'connected'))
    EXECUTE FUNCTION dial_attempt_end_check();

-- Rows are never changed and never removed, by anyone: only the retention function (0411) removes calls
-- older than the retention period, and it says so by setting outdial.retention for its transaction.
CREATE OR REPLACE FUNCTION call_record_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('outdial.retention', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION '% is append-only: % refused (a correction is a new row)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
DROP TRIGGER IF EXISTS dial_attempt_gates_immutable ON dial_attempt_gates;
CREATE TRIGGER dial_attempt_gates_immutable BEFORE UPDATE OR DELETE ON dial_attempt_gates
    FOR EACH ROW EXECUTE FUNCTION call_record_immutable();
DROP TRIGGER IF EXISTS dial_attempt_gates_no_truncate ON dial_attempt_gates;
CREATE TRIGGER dial_attempt_gates_no_truncate BEFORE TRUNCATE ON dial_attempt_gates
    FOR EACH STATEMENT EXECUTE FUNCTION call_record_immutable();
DROP TRIGGER IF EXISTS dial_attempt_events_immutable ON dial_attempt_events;
CREATE TRIGGER dial_attempt_events_immutable BEFORE UPDATE OR DELETE ON dial_attempt_events
    FOR EACH ROW EXECUTE FUNCTION call_record_immutable();
DROP TRIGGER IF EXISTS dial_attempt_events_no_truncate ON dial_attempt_events;
CREATE TRIGGER dial_attempt_events_no_truncate BEFORE TRUNCATE ON dial_attempt_events
    FOR EACH STATEMENT EXECUTE FUNCTION call_record_immutable();

-- Seeding and back-filling through the old shape (the migration role only: no runtime role may INSERT into
-- the view): a gate row, one 'import' event with the facts given, and the lock row of a call left open.
CREATE OR REPLACE FUNCTION dial_attempts_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO dial_attempt_gates (call_id, campaign_id, lead_id, number, attempt, replica, fence_token, allowed,
                                    reasons, gate_at, mode, manual, dialled_by)
    VALUES (NEW.call_id, NEW.campaign_id, NEW.lead_id, NEW.number, coalesce(NEW.attempt, 0), NEW.replica,
            NEW.fence_token, NEW.allowed, coalesce(NEW.reasons, '[]'::jsonb), NEW.gate_at, coalesce(NEW.mode, ''),
            coalesce(NEW.manual, false), NEW.dialled_by);
    -- An imported row is dated by the facts it carries (as this migration's own import of the rows before it).
    INSERT INTO dial_attempt_events (call_id, kind, written_at, dial_at, answer_at, connect_at, end_at, outcome,
                                     answer, agent_id, opt_out, recording_path, recording_ms, recording_sha256,
                                     actor, reason)
    VALUES (NEW.call_id, 'import', coalesce(NEW.end_at, NEW.connect_at, NEW.answer_at, NEW.dial_at, NEW.gate_at),
            NEW.dial_at, NEW.answer_at, NEW.connect_at, NEW.end_at, NEW.outcome, NEW.answer,
            NEW.agent_id, coalesce(NEW.opt_out, false), NEW.recording_path, NEW.recording_ms, NEW.recording_sha256,
            current_user, 'inserted through the dial_attempts view');
    IF NEW.dial_at IS NOT NULL AND NEW.end_at IS NULL THEN
        INSERT INTO dial_open (call_id, campaign_id, lead_id, number, agent_id)
        VALUES (NEW.call_id, NEW.campaign_id, NEW.lead_id, NEW.number,
                CASE WHEN NEW.connect_at IS NOT NULL THEN NEW.agent_id END);
    END IF;
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS dial_attempts_insert ON dial_attempts;
CREATE TRIGGER dial_attempts_insert INSTEAD OF INSERT ON dial_attempts
    FOR EACH ROW EXECUTE FUNCTION dial_attempts_insert();
