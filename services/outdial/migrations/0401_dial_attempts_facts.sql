-- Facts of a dial that the database itself enforces.
--
-- 1. A connected call was answered by a person, at a known time, and connected to an agent at a known time.
--    Rows closed by a new lease holder before this migration could say "connected" without their answer:
--    the answer was a person (only people are connected) and it came at most 2 s before the connection.
UPDATE dial_attempts
   SET answer = 'human', answer_at = COALESCE(answer_at, connect_at)
 WHERE outcome = 'connected' AND connect_at IS NOT NULL AND (answer IS DISTINCT FROM 'human' OR answer_at IS NULL);
UPDATE dial_attempts SET outcome = 'failed'
 WHERE outcome = 'connected' AND (connect_at IS NULL OR agent_id IS NULL OR agent_id = '');

ALTER TABLE dial_attempts DROP CONSTRAINT IF EXISTS dial_attempts_connected_is_answered;
ALTER TABLE dial_attempts ADD CONSTRAINT dial_attempts_connected_is_answered CHECK (
    outcome IS DISTINCT FROM 'connected'
    OR (answer = 'human' AND answer_at IS NOT NULL AND connect_at IS NOT NULL AND agent_id IS NOT NULL
        AND agent_id <> '')
);

-- 2. Never two calls at once to one lead, one number, or one agent. Calls left open by a crash before this
--    migration (dialled, never ended) are closed first, keeping the newest open one of each kind.
WITH ranked AS (
    SELECT call_id,
           row_number() OVER (PARTITION BY campaign_id, lead_id ORDER BY dial_at DESC) AS by_lead,
           row_number() OVER (PARTITION BY number ORDER BY dial_at DESC) AS by_number
      FROM dial_attempts WHERE dial_at IS NOT NULL AND end_at IS NULL
)
UPDATE dial_attempts d SET end_at = d.dial_at, outcome = COALESCE(d.outcome, 'failed')
  FROM ranked r WHERE d.call_id = r.call_id AND (r.by_lead > 1 OR r.by_number > 1);
WITH ranked AS (
    SELECT call_id, row_number() OVER (PARTITION BY agent_id ORDER BY connect_at DESC) AS n
      FROM dial_attempts WHERE connect_at IS NOT NULL AND end_at IS NULL AND agent_id IS NOT NULL
)
UPDATE dial_attempts d SET end_at = d.connect_at FROM ranked r WHERE d.call_id = r.call_id AND r.n > 1;

CREATE UNIQUE INDEX IF NOT EXISTS dial_attempts_open_lead
    ON dial_attempts (campaign_id, lead_id) WHERE dial_at IS NOT NULL AND end_at IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS dial_attempts_open_number
    ON dial_attempts (number) WHERE dial_at IS NOT NULL AND end_at IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS dial_attempts_open_agent
    ON dial_attempts (agent_id) WHERE connect_at IS NOT NULL AND end_at IS NULL;
-- The lease holder's reconciliation reads a campaign's open calls through dial_attempts_open_lead.

-- 3. The campaign service rebuilds call detail records of ended calls whose events Redis lost.
CREATE INDEX IF NOT EXISTS dial_attempts_end ON dial_attempts (end_at) WHERE end_at IS NOT NULL;
