-- The scan lifecycle over HTTP: a runner's reason for a failure travels with its audit row, and
-- scans started through the API may carry an Idempotency-Key.

-- Nullable with no default: adding it rewrites nothing and takes its lock only for a moment.
ALTER TABLE signal_scan_events ADD COLUMN reason text CHECK (char_length(reason) <= 1000);

-- One row per (API key, Idempotency-Key) for 24 hours: a retry of the same creation answers the
-- scan the first request created. Rows older than that are forgotten (deleted in the background),
-- and an expired key may be claimed again.
CREATE TABLE idempotency_keys (
    api_key_id       uuid        NOT NULL,
    key              text        NOT NULL CHECK (char_length(key) BETWEEN 1 AND 255),
    account_group_id text        NOT NULL,
    scan_id          text        NOT NULL,
    created_at       timestamptz NOT NULL,
    PRIMARY KEY (api_key_id, key)
);

CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);
