-- API keys are stored only as the SHA-256 of their secret.
CREATE TABLE api_keys (
    id                uuid        PRIMARY KEY,
    name              text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    key_hash          bytea       NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    permissions       text[]      NOT NULL,
    -- NULL means every account group.
    account_group_ids text[],
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz,
    revoked_at        timestamptz
);

CREATE TABLE signal_scans (
    id               text        PRIMARY KEY CHECK (id ~ '^[0-9a-f]{24}$'),
    account_group_id text        NOT NULL CHECK (account_group_id ~ '^[0-9a-f]{24}$'),
    status           text        NOT NULL
                     CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    cancelled_at     timestamptz,
    CHECK ((status = 'cancelled') = (cancelled_at IS NOT NULL))
);

-- Newest-first listing of one group's scans (keyset pagination on created_at, id).
CREATE INDEX signal_scans_group_newest ON signal_scans (account_group_id, created_at DESC, id DESC);

-- The audit trail: one row per status change, written in the same statement as the change.
CREATE TABLE signal_scan_events (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    scan_id     text        NOT NULL REFERENCES signal_scans (id),
    -- NULL when the row records the scan's creation.
    from_status text,
    to_status   text        NOT NULL,
    api_key_id  uuid,
    trace_id    text,
    occurred_at timestamptz NOT NULL
);

CREATE INDEX signal_scan_events_scan ON signal_scan_events (scan_id, id);
