-- Wireless without guessing (issue 13, point 4). Campaign service table (reads and writes: campaign only).
-- Why the DNC check last refused a lead, when the answer was one that consent or a fresh wireless list would
-- change: 'consent' (the lead needs the consent its call type requires) or 'fresh_list' (the line type is
-- not known: no current wireless and ported-number list). '' otherwise. The campaign report counts them.
ALTER TABLE leads ADD COLUMN IF NOT EXISTS compliance_block text NOT NULL DEFAULT ''
    CHECK (compliance_block IN ('', 'consent', 'fresh_list'));
