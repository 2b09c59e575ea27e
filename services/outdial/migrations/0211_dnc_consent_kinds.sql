-- Consent that means something (issue 13, point 3). DNC service table (reads and writes: dnc only).
-- The kinds take the rules table's names (rules/data/*.yaml, `consent` rows), so a row's `requires_any`
-- names exactly what is stored. An established business relationship says what it rests on (a purchase or
-- an inquiry: the rules table gives each its months, counted from obtained_at). A grant's evidence is the
-- text the person agreed to and an IP address or a recording reference (at least one), besides its source
-- (obtained_via) and time (obtained_at). Rows granted before keep '' here: the gate relies on no EBR without
-- its basis, and such rows are the ones to review.
ALTER TABLE dnc_consent ADD COLUMN IF NOT EXISTS text_agreed   text NOT NULL DEFAULT '';
ALTER TABLE dnc_consent ADD COLUMN IF NOT EXISTS ip_address    text NOT NULL DEFAULT '';
ALTER TABLE dnc_consent ADD COLUMN IF NOT EXISTS recording_ref text NOT NULL DEFAULT '';
ALTER TABLE dnc_consent ADD COLUMN IF NOT EXISTS ebr_basis     text NOT NULL DEFAULT ''
    CHECK (ebr_basis IN ('', 'purchase', 'inquiry'));

UPDATE dnc_consent SET kind = 'prior_express_consent' WHERE kind = 'express';
UPDATE dnc_consent SET kind = 'prior_express_written_consent' WHERE kind = 'express_written';
UPDATE dnc_consent SET kind = 'established_business_relationship' WHERE kind = 'existing_business_relationship';

-- The gate's consent lookup: a number's consents in force.
CREATE INDEX IF NOT EXISTS dnc_consent_active ON dnc_consent (number) WHERE revoked_at IS NULL;
