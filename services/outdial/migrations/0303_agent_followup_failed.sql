-- A follow-up the other service refused for good (a callback for a lead that is not callable, a request it
-- finds invalid) is 'failed', with the reason in last_error: retrying it forever would change nothing.
ALTER TABLE agent_dispositions DROP CONSTRAINT IF EXISTS agent_dispositions_dnc_status_check;
ALTER TABLE agent_dispositions DROP CONSTRAINT IF EXISTS agent_dispositions_callback_status_check;
ALTER TABLE agent_dispositions ADD CONSTRAINT agent_dispositions_dnc_status_check
    CHECK (dnc_status IN ('none', 'pending', 'done', 'failed'));
ALTER TABLE agent_dispositions ADD CONSTRAINT agent_dispositions_callback_status_check
    CHECK (callback_status IN ('none', 'pending', 'done', 'failed'));
