-- Caps per person (compliance issue 13, point 2): a person is every lead linked to the dialled number through
-- shared numbers, in every campaign (core/persons.py). The walk from a number to the leads that hold it needs
-- the number first; the primary key (campaign_id, e164) cannot serve it.
CREATE INDEX IF NOT EXISTS lead_numbers_e164 ON lead_numbers (e164);
