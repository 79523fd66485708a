-- no-transaction
-- Each audit row carries its scan's account group, so that a reader of one group's changes reads
-- that group's rows only (an index on it is built by 0005), and the retention sweep's high-water
-- mark per group (what a cursor is checked against).
--
-- Why not one plain transaction: sqlx runs a migration in one transaction unless its first line
-- says `-- no-transaction`. In one transaction the ALTER TABLE's ACCESS EXCLUSIVE lock would be
-- held until the backfill of every existing row had committed, and every cancel (which inserts an
-- audit row) would wait for all of it. So this migration is one DO block that commits as it goes:
--   1. add the column, nullable and without a default: a change to the catalog only, no rewrite
--      of the table, its lock held for milliseconds (and given up after 1 s, then tried again, so
--      that it never queues cancels behind a long transaction that holds the table);
--   2. in the same short transaction, a trigger that fills the column of any row inserted
--      without it: replicas still running the previous version during a rolling upgrade write
--      such rows, and so does any writer that does not know the column. Its WHEN clause is
--      checked without calling the function, so a writer that sets the column pays nothing;
--   3. backfill the existing rows in batches of 10,000 ids, each its own short transaction: an
--      UPDATE takes only ROW EXCLUSIVE on the table, which cancels' inserts do not wait for, and
--      nothing else locks audit rows. Positions are untouched: `xid` keeps the value it was
--      written with (an UPDATE does not apply defaults), so every `(xid, id)` cursor stays exact.
-- The index is built CONCURRENTLY by 0005: PostgreSQL refuses that in any transaction block,
-- including the implicit one of a query string holding several statements, so it needs a file
-- (one query) of its own. Every step can run again: a migration without a transaction that fails
-- half-way is not recorded, and runs again from the top at the next start.
DO $migration$
DECLARE
    attempt int := 0;
    last_id bigint;
    batch_start bigint := 0;
BEGIN
    LOOP
        BEGIN
            PERFORM set_config('lock_timeout', '1s', true);
            ALTER TABLE signal_scan_events ADD COLUMN IF NOT EXISTS account_group_id text;
            CREATE OR REPLACE FUNCTION signal_scan_events_fill_group() RETURNS trigger
                LANGUAGE plpgsql AS $fill$
                BEGIN
                    NEW.account_group_id :=
                        (SELECT account_group_id FROM signal_scans WHERE id = NEW.scan_id);
                    RETURN NEW;
                END
            $fill$;
            CREATE OR REPLACE TRIGGER signal_scan_events_fill_group
                BEFORE INSERT ON signal_scan_events
                FOR EACH ROW WHEN (NEW.account_group_id IS NULL)
                EXECUTE FUNCTION signal_scan_events_fill_group();
            EXIT;
        EXCEPTION WHEN lock_not_available THEN
            attempt := attempt + 1;
            IF attempt >= 30 THEN
                RAISE;
            END IF;
            PERFORM pg_sleep(1);
        END;
    END LOOP;

    -- The retention sweep's high-water mark: per group, the greatest position it has deleted.
    -- A cursor of that group below it may have missed deleted changes.
    CREATE TABLE IF NOT EXISTS signal_scan_events_trimmed (
        account_group_id text   PRIMARY KEY,
        xid              xid8   NOT NULL,
        id               bigint NOT NULL
    );
    COMMIT;

    -- Rows written from here on are filled by their insert or the trigger.
    SELECT coalesce(max(id), 0) INTO last_id FROM signal_scan_events;
    WHILE batch_start < last_id LOOP
        UPDATE signal_scan_events e
        SET account_group_id = s.account_group_id
        FROM signal_scans s
        WHERE e.id > batch_start AND e.id <= batch_start + 10000
          AND e.account_group_id IS NULL
          AND s.id = e.scan_id;
        batch_start := batch_start + 10000;
        COMMIT;
    END LOOP;
END
$migration$;
