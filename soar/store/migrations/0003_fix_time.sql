-- Every fix has two times: `time`, when the aircraft was at the position (the OGN beacon's own
-- hhmmss, the Beast receiver's counter, the SBS generated time), and `received_at`, when soar
-- received it. The flight rules and the API use `time`.
--
-- The key and the partitioning stay on received_at (decision, docs/protocols.md "Two times"):
-- re-keying a populated, partitioned table would rewrite every partition, and received_at is
-- the better partition key anyway: a backlog delivered hours late lands in today's partition
-- (retention drops what arrived long ago, never a day being written). The tracking core makes
-- received_at unique per aircraft (+1 µs on a tie), so (aircraft_id, received_at) stays a key.
--
-- Rows written before this migration have no position time: their receive time stands in,
-- which is what they always showed. So every read of a fix's time is
-- coalesce(time, received_at), and that is what the index for "an aircraft's fixes in time
-- order" (the API's fixes, a flight's track, restoring a shard) is built on. Adding a column
-- without a default touches no row; building the index reads the table once (migrations run
-- before anything writes).
ALTER TABLE fixes ADD COLUMN time timestamptz;
CREATE INDEX fixes_by_time ON fixes (aircraft_id, (coalesce(time, received_at)));

-- The aircraft's newest fix time when a flight row was written: the store keeps the row with the
-- greatest (a replayed older state never overwrites a newer one), even when a late fix merged
-- into the track moved the flight's last fix back. NULL on older rows: their last_fix_at.
ALTER TABLE flights ADD COLUMN as_of timestamptz;
