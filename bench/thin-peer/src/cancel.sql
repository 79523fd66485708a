WITH current AS (
    SELECT * FROM signal_scans
    WHERE id = $1 AND ($2::text IS NULL OR account_group_id = $2::text)
    FOR UPDATE
), stamp AS (
    -- Read after `current` holds the lock: a change that waited behind
    -- another is stamped after it, never before.
    SELECT clock_timestamp() AS at FROM current
), changed AS (
    UPDATE signal_scans AS s
    SET status = $3::text,
        updated_at = stamp.at,
        started_at = CASE WHEN $3::text = 'running' THEN stamp.at ELSE s.started_at END,
        finished_at = CASE WHEN $3::text IN ('completed', 'failed', 'cancelled')
                           THEN stamp.at ELSE s.finished_at END,
        cancelled_at = CASE WHEN $3::text = 'cancelled' THEN stamp.at ELSE s.cancelled_at END
    FROM current, stamp
    WHERE s.id = current.id AND current.status = ANY($4::text[])
    RETURNING s.*, current.status AS previous_status
), audit AS (
    INSERT INTO signal_scan_events
        (scan_id, account_group_id, from_status, to_status, api_key_id, trace_id, occurred_at,
         reason)
    SELECT id, account_group_id, previous_status, status, $5, $6, updated_at, $7 FROM changed
)
SELECT * FROM changed
UNION ALL
SELECT *, NULL::text FROM current WHERE NOT EXISTS (SELECT 1 FROM changed)
