-- The embedded store: the same tables as PostgreSQL, in SQLite's types.
-- Timestamps are RFC 3339 text in UTC, written by the service; lists are JSON arrays.

CREATE TABLE api_keys (
    id                TEXT    PRIMARY KEY,
    name              TEXT    NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    key_hash          BLOB    NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    permissions       TEXT    NOT NULL CHECK (json_valid(permissions)),
    -- NULL means every account group.
    account_group_ids TEXT    CHECK (account_group_ids IS NULL OR json_valid(account_group_ids)),
    created_at        TEXT    NOT NULL,
    expires_at        TEXT,
    revoked_at        TEXT
) STRICT;

CREATE TABLE signal_scans (
    id               TEXT PRIMARY KEY CHECK (length(id) = 24 AND id NOT GLOB '*[^0-9a-f]*'),
    account_group_id TEXT NOT NULL
                     CHECK (length(account_group_id) = 24 AND account_group_id NOT GLOB '*[^0-9a-f]*'),
    status           TEXT NOT NULL
                     CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    started_at       TEXT,
    finished_at      TEXT,
    cancelled_at     TEXT,
    CHECK ((status = 'cancelled') = (cancelled_at IS NOT NULL))
) STRICT;

CREATE INDEX signal_scans_group_newest ON signal_scans (account_group_id, created_at DESC, id DESC);

CREATE TABLE signal_scan_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    scan_id     TEXT    NOT NULL REFERENCES signal_scans (id),
    from_status TEXT,
    to_status   TEXT    NOT NULL,
    api_key_id  TEXT,
    trace_id    TEXT,
    occurred_at TEXT    NOT NULL
) STRICT;

CREATE INDEX signal_scan_events_scan ON signal_scan_events (scan_id, id);
