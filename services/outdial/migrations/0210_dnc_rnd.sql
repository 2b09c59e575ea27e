-- Reassigned Numbers Database (RND) query results (issue 13, point 5). The FCC's RND answers, for a number
-- and a date, whether the number has been permanently disconnected since that date (yes / no / no data);
-- a caller that queried it and got "no" has the safe harbor of 47 CFR 64.1200(m). DNC service tables
-- (reads and writes: dnc only). Rows are never updated or deleted: each import adds what it has not seen.

-- One row per file imported (who, when, from where, its rows and rejects; how many rows were new is in the
-- import's audit record).
CREATE TABLE IF NOT EXISTS dnc_rnd_imports (
    id          bigserial   PRIMARY KEY,
    imported_at timestamptz NOT NULL,
    actor       text        NOT NULL,
    source      text        NOT NULL DEFAULT '',
    sha256      text        NOT NULL,
    rows        bigint      NOT NULL,
    rejected    bigint      NOT NULL
);

-- One row per RND answer. The same answer imported twice is stored once (the unique index below).
CREATE TABLE IF NOT EXISTS dnc_rnd_results (
    id              bigserial   PRIMARY KEY,
    import_id       bigint      NOT NULL REFERENCES dnc_rnd_imports (id),
    number          text        NOT NULL,                    -- E.164 (+1…: the RND covers US numbers)
    queried_date    date        NOT NULL,                    -- the date given to the RND
    answer          text        NOT NULL CHECK (answer IN ('yes', 'no', 'no_data')),
    disconnect_date date,                                    -- the permanent disconnect the RND reported
    imported_at     timestamptz NOT NULL,
    CHECK (disconnect_date IS NULL OR answer = 'yes')
);
CREATE UNIQUE INDEX IF NOT EXISTS dnc_rnd_results_once
    ON dnc_rnd_results (number, queried_date, answer, coalesce(disconnect_date, 'infinity'::date));
CREATE INDEX IF NOT EXISTS dnc_rnd_results_number ON dnc_rnd_results (number, queried_date DESC);
