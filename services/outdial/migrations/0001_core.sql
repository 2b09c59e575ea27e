-- Core tables shared by every service.

-- Idempotency keys for RPCs that must not act twice when retried (uploads, imports, originations).
CREATE TABLE IF NOT EXISTS idempotency_keys (
    scope       text        NOT NULL,
    key         text        NOT NULL,
    result      jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
