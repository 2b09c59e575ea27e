-- Per-person caps (0404) on the append-only dial attempts (0409).
--
-- 0404's index on dial_attempts (number, dial_at) went with the dial_at column when 0409 moved the facts into
-- dial_attempt_events. The person query (core/persons.py `dial_times`, pacing/store.py `mark_dialed`) reads the
-- dial_attempts view by number and gate time (a call is dialled within a day of its gate decision): this index
-- on the gate table lets it fold only those calls.
CREATE INDEX IF NOT EXISTS dial_attempt_gates_number_gate ON dial_attempt_gates (number, gate_at);

-- The dial-time recount under the person's locks (pacing/store.py `mark_dialed`) may refuse a call the gate
-- allowed: the gate row is never changed, so the refusal is an event row (kind 'refusal', its reason code in
-- `reason`), and the view reads such a call as not allowed with the refusal's reasons appended.
ALTER TABLE dial_attempt_events DROP CONSTRAINT IF EXISTS dial_attempt_events_kind_check;
ALTER TABLE dial_attempt_events ADD CONSTRAINT dial_attempt_events_kind_check CHECK (kind IN
    ('dial', 'answer', 'connect', 'outcome', 'end', 'correction', 'import', 'refusal'));
ALTER TABLE dial_attempt_events ADD CONSTRAINT dial_attempt_events_refusal_says_why CHECK (
    kind <> 'refusal' OR reason <> ''
);

CREATE OR REPLACE VIEW dial_attempts AS
SELECT g.call_id, g.campaign_id, g.lead_id, g.number, g.attempt, g.replica, g.fence_token,
       g.allowed AND NOT coalesce(f.refused, false) AS allowed,
       g.reasons || coalesce(f.refusals, '[]'::jsonb) AS reasons,
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
             count(*) AS revisions,
             bool_or(e.kind = 'refusal') AS refused,
             jsonb_agg(e.reason ORDER BY e.seq) FILTER (WHERE e.kind = 'refusal') AS refusals
        FROM dial_attempt_events e WHERE e.call_id = g.call_id
  ) f ON true;
