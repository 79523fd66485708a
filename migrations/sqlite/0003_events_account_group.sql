-- Each audit row carries its scan's account group, so that a reader of one group's changes reads
-- that group's rows only, through the index below; and the retention sweep's high-water mark per
-- group. (The embedded store serves one process, and this runs in one transaction before it
-- serves: nothing waits for it.)
ALTER TABLE signal_scan_events ADD COLUMN account_group_id TEXT;

UPDATE signal_scan_events
SET account_group_id = (SELECT s.account_group_id FROM signal_scans s
                        WHERE s.id = signal_scan_events.scan_id);

-- A writer that does not set the column (one written before it existed) still files its row
-- under the right group. Its WHEN clause costs a writer that sets the column nothing more.
CREATE TRIGGER signal_scan_events_fill_group AFTER INSERT ON signal_scan_events
WHEN NEW.account_group_id IS NULL
BEGIN
    UPDATE signal_scan_events
    SET account_group_id = (SELECT account_group_id FROM signal_scans WHERE id = NEW.scan_id)
    WHERE id = NEW.id;
END;

-- One group's rows past a cursor (ids follow commit order here, so the id is the position).
CREATE INDEX signal_scan_events_group_feed ON signal_scan_events (account_group_id, id);

-- Per group, the greatest audit id the retention sweep has deleted: a cursor of that group below
-- it may have missed deleted changes.
CREATE TABLE signal_scan_events_trimmed (
    account_group_id TEXT    PRIMARY KEY,
    id               INTEGER NOT NULL
) STRICT;
