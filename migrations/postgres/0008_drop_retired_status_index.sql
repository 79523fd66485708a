-- no-transaction
-- The index of scans by group and status that the retired migration 0007 built (builds of
-- 2026-12-05 applied it; it was removed before the next day's): every status change paid for it,
-- and no statement reads it. A database those builds migrated loses it here; any other has none.
--
-- CONCURRENTLY, so that cancels go on while it is dropped (alone in its file, as PostgreSQL
-- requires). A drop stopped mid-way leaves the index invalid, and the next start drops it again.
DROP INDEX CONCURRENTLY IF EXISTS signal_scans_group_status_newest;
