-- The index of scans by group and status that the retired migration 0005 built (builds of
-- 2026-12-05 applied it; it was removed before the next day's): every status change paid for it,
-- and no statement reads it. A database those builds migrated loses it here; any other has none.
DROP INDEX IF EXISTS signal_scans_group_status_newest;
