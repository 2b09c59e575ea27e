-- ScheduleCallback by an agent is limited to the lead of their own last call, read from call_records by
-- agent (campaign service: reads and writes call_records).
CREATE INDEX IF NOT EXISTS call_records_agent ON call_records (agent_id, connect_at DESC) WHERE agent_id <> '';
