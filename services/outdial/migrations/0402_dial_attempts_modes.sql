-- Preview and agentless modes: how each call was dialled.
--   mode        the campaign's dial mode at the gate (preview, progressive, power, predictive, agentless)
--   manual      true when an agent chose to dial this one lead (preview): an agent-initiated call, not an
--               autodialled one, which is what compliance needs to tell (e.g. for wireless numbers)
--   dialled_by  the agent who chose to dial it (preview); a manual call always names its agent
ALTER TABLE dial_attempts ADD COLUMN IF NOT EXISTS mode text NOT NULL DEFAULT '';
ALTER TABLE dial_attempts ADD COLUMN IF NOT EXISTS manual boolean NOT NULL DEFAULT false;
ALTER TABLE dial_attempts ADD COLUMN IF NOT EXISTS dialled_by text;
ALTER TABLE dial_attempts DROP CONSTRAINT IF EXISTS dial_attempts_manual_names_its_agent;
ALTER TABLE dial_attempts ADD CONSTRAINT dial_attempts_manual_names_its_agent CHECK (
    NOT manual OR (dialled_by IS NOT NULL AND dialled_by <> '')
);
