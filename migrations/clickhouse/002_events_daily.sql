-- Per-tenant daily stats. AggregatingMergeTree with uniqState: unique devices
-- must be merged as sketches (uniqMerge), never summed as numbers, which the
-- seed's SummingMergeTree of uniq() results would do.
-- Query: SELECT event_date, countMerge(events), sumMerge(revenue), uniqMerge(devices)
--        FROM events_daily WHERE organization_id = ? GROUP BY event_date
-- Counts here are per insert: a replayed event counts again until the events
-- table's merges collapse it; use the events table with FINAL for exact counts.
CREATE TABLE IF NOT EXISTS events_daily (
    organization_id String,
    event_date Date,
    event_type String,
    events AggregateFunction(count),
    revenue AggregateFunction(sum, Decimal(18, 2)),
    devices AggregateFunction(uniq, String)
) ENGINE = AggregatingMergeTree()
PARTITION BY toYYYYMM(event_date)
ORDER BY (organization_id, event_date, event_type);

CREATE MATERIALIZED VIEW IF NOT EXISTS events_daily_mv TO events_daily AS
SELECT
    organization_id,
    toDate(event_timestamp) AS event_date,
    event_type,
    countState() AS events,
    sumState(revenue) AS revenue,
    uniqState(device_id) AS devices
FROM events
GROUP BY organization_id, event_date, event_type;
