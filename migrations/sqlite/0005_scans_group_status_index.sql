-- The index a page of one group's scans of one status reads through (`GET …/scans?status=…`):
-- a range of it from the page's cursor, however few of the group's scans have that status.
-- Without it such a page walked the group's index and filtered, reading every newer scan of
-- the group (579 ms for the queued scans of a group of 300,000 mostly finished ones).
CREATE INDEX signal_scans_group_status_newest
    ON signal_scans (account_group_id, status, created_at DESC, id DESC);
