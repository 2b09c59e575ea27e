-- Every start and resume of a campaign (compliance issue 13): who moved it to active, when, and the identity the
-- abandonment and agentless messages speak from then on (the seller's legal name and the callback number for
-- do-not-call requests), with the caller ID and jurisdiction in force. Appended by the campaign service in the
-- same transaction as the move; never updated or deleted (the campaign role holds SELECT and INSERT only).
CREATE TABLE IF NOT EXISTS campaign_starts (
    id              bigserial   PRIMARY KEY,
    campaign_id     text        NOT NULL REFERENCES campaigns (id),
    action          text        NOT NULL CHECK (action IN ('start', 'resume')),
    -- The token that did it ("role:subject"), or "system" for a scheduled start.
    actor           text        NOT NULL,
    at              timestamptz NOT NULL,
    seller_name     text        NOT NULL,
    callback_number text        NOT NULL,
    caller_id       text        NOT NULL,
    jurisdiction    text        NOT NULL
);
CREATE INDEX IF NOT EXISTS campaign_starts_campaign ON campaign_starts (campaign_id, id);
