-- A batch of status changes in one statement, so every change and its audit row commit together.
-- Each input row is one change: its scan, the group that must own it (NULL: any), the status it
-- asks for, the statuses that status may be reached from (comma-separated), and its audit
-- columns. A batch never holds two changes of one scan. Answers one row per change whose scan
-- was found, numbered by `ord` (the change's place in the input, from 1); `previous_status` is
-- NULL when the scan's status did not allow the change.
WITH input AS (
    SELECT *
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::uuid[], $6::text[],
                $7::text[])
         WITH ORDINALITY AS i(scan_id, account_group_id, to_status, from_statuses, api_key_id,
                              trace_id, reason, ord)
), claimed AS (
    -- Every scan of the batch is claimed first, with a transaction-level advisory lock, all in one
    -- order (so batches never wait for each other in a circle), before any row is locked. Streams
    -- read changes in transaction-id order, and a transaction takes its id at its first row lock:
    -- a batch that had locked one scan and then waited for another, changed meanwhile by a batch
    -- with a later id, would be read before the change it waited for (a scan cancelled from
    -- running, then started). Waiting here, a batch has no id yet, so it takes one after the
    -- batch it waited for. An advisory lock takes no transaction id.
    SELECT count(*) AS scans
    FROM (SELECT pg_advisory_xact_lock(key)
          FROM (SELECT DISTINCT hashtextextended(scan_id, 0) AS key FROM input ORDER BY key) AS k
         ) AS taken
), current AS (
    -- Claimed before the first row is read: `claimed` is a one-time condition of this scan. Locked
    -- in id order as well. Under READ COMMITTED a change that waited reads the winner's row, never
    -- the one its snapshot started with.
    SELECT s.*, input.ord
    FROM signal_scans AS s
    JOIN input ON s.id = input.scan_id
              AND (input.account_group_id IS NULL OR s.account_group_id = input.account_group_id)
    WHERE (SELECT scans FROM claimed) > 0
    ORDER BY s.id
    FOR UPDATE OF s
), stamp AS (
    -- Read after `current` holds the locks: a change that waited behind another is stamped after
    -- it, never before. Nor before the scan's last change: under a clock set back since (an NTP
    -- step), a scan's instants would run backwards (`cancelledAt` before `startedAt`).
    SELECT ord, greatest(clock_timestamp(), updated_at) AS at FROM current
), changed AS (
    UPDATE signal_scans AS s
    SET status = input.to_status,
        updated_at = stamp.at,
        started_at = CASE WHEN input.to_status = 'running' THEN stamp.at ELSE s.started_at END,
        finished_at = CASE WHEN input.to_status IN ('completed', 'failed', 'cancelled')
                           THEN stamp.at ELSE s.finished_at END,
        cancelled_at = CASE WHEN input.to_status = 'cancelled' THEN stamp.at
                            ELSE s.cancelled_at END
    FROM current
    JOIN input ON input.ord = current.ord
    JOIN stamp ON stamp.ord = current.ord
    WHERE s.id = current.id AND current.status = ANY (string_to_array(input.from_statuses, ','))
    RETURNING s.id, s.account_group_id, s.status, s.created_at, s.updated_at, s.started_at,
              s.finished_at, s.cancelled_at, current.status AS previous_status, input.ord,
              input.api_key_id, input.trace_id, input.reason
), audit AS (
    INSERT INTO signal_scan_events
        (scan_id, account_group_id, from_status, to_status, api_key_id, trace_id, occurred_at,
         reason)
    SELECT id, account_group_id, previous_status, status, api_key_id, trace_id, updated_at, reason
    FROM changed
    ORDER BY ord
)
SELECT id, account_group_id, status, created_at, updated_at, started_at, finished_at,
       cancelled_at, previous_status, ord
FROM changed
UNION ALL
SELECT id, account_group_id, status, created_at, updated_at, started_at, finished_at,
       cancelled_at, NULL::text, ord
FROM current
WHERE NOT EXISTS (SELECT 1 FROM changed WHERE changed.ord = current.ord)
