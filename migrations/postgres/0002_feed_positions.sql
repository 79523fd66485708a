-- Each audit row records the transaction that wrote it, so readers of the change feed can page
-- through the trail by (xid, id) and know which rows may still commit behind their position.
-- Existing rows read as xid 0, before every new one: the constant default is stored in the
-- catalog (no table rewrite), and the default for new rows is set right after.
ALTER TABLE signal_scan_events ADD COLUMN xid xid8 NOT NULL DEFAULT '0';
ALTER TABLE signal_scan_events ALTER COLUMN xid SET DEFAULT pg_current_xact_id();

CREATE INDEX signal_scan_events_feed ON signal_scan_events (xid, id);
