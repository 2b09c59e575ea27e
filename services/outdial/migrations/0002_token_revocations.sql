-- Token revocation list (docs/security.md). PostgreSQL is the record: Redis holds a mirror
-- (od:auth:revoked) that services rebuild from this table when Redis loses its data.
-- Writers: `outdial token revoke` (an operator, with the issuer's rights). Readers: every service (SELECT).
-- A row revokes one token (kind 'jti') or every token of a subject issued before `before` (kind 'subject').
-- `expires_at`: past it no token the row revokes can still be valid (every token lives at most 24 h), so
-- services stop loading the row; it stays here as the record.
CREATE TABLE IF NOT EXISTS token_revocations (
    id          bigserial   PRIMARY KEY,
    kind        text        NOT NULL CHECK (kind IN ('jti', 'subject')),
    value       text        NOT NULL CHECK (length(value) BETWEEN 1 AND 256),
    before      timestamptz,
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz NOT NULL DEFAULT now(),
    revoked_by  text        NOT NULL,
    reason      text        NOT NULL DEFAULT '',
    CHECK ((kind = 'subject') = (before IS NOT NULL))
);

CREATE INDEX IF NOT EXISTS token_revocations_expires ON token_revocations (expires_at);

-- Every service's login role reads it: migrations/grants.py.
