-- The per-agent sequence number comes from Redis, which may lose its data (it is coordination, not the
-- record): after such a loss the sequence starts again at 1, and with UNIQUE (agent_id, seq) every new state
-- change of the agent was silently dropped as a "replay". A replayed row carries the same instant too, so
-- the key that ignores replays but keeps new rows is (agent_id, seq, at); timelines are read by (at, seq).
ALTER TABLE agent_state_events DROP CONSTRAINT IF EXISTS agent_state_events_agent_id_seq_key;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'agent_state_events_agent_seq_at_key') THEN
        ALTER TABLE agent_state_events
            ADD CONSTRAINT agent_state_events_agent_seq_at_key UNIQUE (agent_id, seq, at);
    END IF;
END $$;
