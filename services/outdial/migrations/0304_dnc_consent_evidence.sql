-- Consent evidence (security issue 12): a grant records what proves it (evidence), when the person gave it
-- (obtained_at) and how it was obtained (obtained_via). DNC service table (reads and writes: dnc only); in
-- the authz helper's number range, after 0200 which creates the table. Rows granted before this migration
-- keep NULL / '' here: they are the ones to review.
ALTER TABLE dnc_consent ADD COLUMN IF NOT EXISTS obtained_at timestamptz;
ALTER TABLE dnc_consent ADD COLUMN IF NOT EXISTS obtained_via text NOT NULL DEFAULT '';
