-- no-transaction
-- The index a page of one group's scans of one status reads through (`GET …/scans?status=…`):
-- a range of it from the page's cursor, however few of the group's scans have that status.
-- Without it such a page walked the group's index and filtered, reading every newer scan of
-- the group (123 ms for the queued scans of a group of 300,000 mostly finished ones).
--
-- Built CONCURRENTLY for the reasons of 0005 (writes go on during the build; it must be the
-- only statement of this file). A start stopped mid-build leaves the index built, or invalid,
-- with this migration not recorded: the next start takes a built one as this migration's work
-- and drops an invalid one before building it again (`PgStore::migrate`).
CREATE INDEX CONCURRENTLY signal_scans_group_status_newest
    ON signal_scans (account_group_id, status, created_at DESC, id DESC);
