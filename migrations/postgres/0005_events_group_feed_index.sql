-- no-transaction
-- The index a reader of one group's changes reads through: that group's rows past a cursor, in
-- `(xid, id)` order (the change stream's catch-up, a follower that fell behind, `scans watch
-- --account-group`), and the rows of one pending transaction of that group.
--
-- Built CONCURRENTLY, so cancels keep inserting audit rows while it is built (a plain CREATE
-- INDEX holds a SHARE lock, which waits for and blocks every insert, for the whole build). That
-- cannot run inside a transaction block, hence `-- no-transaction`, and it must be the only
-- statement of this file: sqlx sends a file as one query string, and PostgreSQL runs a string of
-- several statements in one implicit transaction block.
--
-- A build that is interrupted leaves an invalid index of this name behind, and this migration
-- then fails at the next start naming it: drop it (`DROP INDEX CONCURRENTLY
-- signal_scan_events_group_feed`) and start again. IF NOT EXISTS would keep the invalid index
-- silently, and every group read would scan the table instead.
CREATE INDEX CONCURRENTLY signal_scan_events_group_feed
    ON signal_scan_events (account_group_id, xid, id);
