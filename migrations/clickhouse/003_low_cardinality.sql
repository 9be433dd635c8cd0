-- min_version: 19.9
-- LowCardinality dictionary-encodes short repetitive strings (platform,
-- currency, event_type): smaller parts and faster GROUP BY. 18.16 has it
-- only behind an experimental flag, so this runs on 19.9 and later only;
-- skipped migrations are not recorded and run after a server upgrade.
ALTER TABLE events MODIFY COLUMN platform LowCardinality(String);
ALTER TABLE events MODIFY COLUMN currency LowCardinality(String);
ALTER TABLE events MODIFY COLUMN event_type LowCardinality(String);
