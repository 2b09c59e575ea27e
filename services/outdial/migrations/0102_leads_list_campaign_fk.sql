-- Lead uploads COPY up to millions of leads, and every foreign key costs a trigger call and an index probe
-- per row (the two keys of leads were half of the COPY's time). One composite key replaces them: the lead's
-- list exists AND belongs to the lead's campaign (lead_lists.campaign_id references campaigns), which
-- implies both former keys (and forbids a lead whose campaign differs from its list's) at half the checks.
CREATE UNIQUE INDEX IF NOT EXISTS lead_lists_id_campaign ON lead_lists (id, campaign_id);
ALTER TABLE leads DROP CONSTRAINT IF EXISTS leads_campaign_id_fkey;
ALTER TABLE leads DROP CONSTRAINT IF EXISTS leads_list_id_fkey;
ALTER TABLE leads ADD CONSTRAINT leads_list_campaign_fkey
    FOREIGN KEY (list_id, campaign_id) REFERENCES lead_lists (id, campaign_id);
