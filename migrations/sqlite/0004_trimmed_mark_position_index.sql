-- The greatest retention mark of every group, which each read of every group's changes (the
-- change hub's, `scans watch` without a group) takes with its rows: one step down this index
-- instead of a scan of one row per group the sweep has trimmed.
CREATE INDEX signal_scan_events_trimmed_position ON signal_scan_events_trimmed (id);
