-- The app's own user id (identity stitching) and the app's version: row format V2.
-- 18.16 has no ADD COLUMN IF NOT EXISTS: a column that exists already (a run interrupted
-- before its record) is taken as applied by `edge migrate`.
ALTER TABLE events ADD COLUMN user_id String DEFAULT '';
ALTER TABLE events ADD COLUMN app_version String DEFAULT '';
