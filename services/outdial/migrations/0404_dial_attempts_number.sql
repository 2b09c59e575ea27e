-- Caps per person (compliance issue 13, point 2): the dial-time gate and the feeder count the dials of the
-- last 24 h to every number of a person from PostgreSQL (core/persons.py), so that a Redis that lost its data
-- never loosens a cap. Only rows that were dialled count.
CREATE INDEX IF NOT EXISTS dial_attempts_number_dial ON dial_attempts (number, dial_at) WHERE dial_at IS NOT NULL;
