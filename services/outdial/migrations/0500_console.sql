-- The web console (issue 14): local users (argon2id hashes, never a password) and server-side sessions.
-- A browser holds only a random session secret in an HttpOnly cookie; the database keeps its SHA-256, so a
-- copy of this table signs nobody in. Sessions end at expires_at or when revoked (sign-out, user disabled).
CREATE TABLE IF NOT EXISTS console_users (
    username      text        PRIMARY KEY CHECK (username ~ '^[a-z0-9][a-z0-9._@-]{1,63}$'),
    role          text        NOT NULL CHECK (role IN ('admin', 'manager', 'compliance', 'agent')),
    display_name  text        NOT NULL DEFAULT '',
    password_hash text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text        NOT NULL,
    disabled_at   timestamptz
);

CREATE TABLE IF NOT EXISTS console_sessions (
    id_hash     text        PRIMARY KEY,
    username    text        NOT NULL REFERENCES console_users (username),
    csrf        text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    ip          text        NOT NULL DEFAULT '',
    user_agent  text        NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS console_sessions_user ON console_sessions (username);

-- Who changed which user, and sign-ins (successful and not): append-only.
CREATE TABLE IF NOT EXISTS console_user_log (
    id       bigserial   PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    actor    text        NOT NULL,
    username text        NOT NULL,
    action   text        NOT NULL,
    detail   text        NOT NULL DEFAULT ''
);
