-- The events table (SPEC §7): the seed's columns plus app_id, received_at,
-- sent_at and the attribution device identifiers.
-- ReplacingMergeTree with event_id last in the order key: replays and client
-- retries of the same event collapse to one row on merge (and under FINAL).
CREATE TABLE IF NOT EXISTS events (
    organization_id String,
    app_id String,
    event_id String,
    event_type String,
    event_name String,
    device_id String,
    session_id String,
    platform String,
    event_timestamp DateTime('UTC'),
    received_at DateTime('UTC'),
    sent_at Nullable(DateTime('UTC')),
    properties String,
    user_properties String,
    revenue Decimal(18, 2),
    currency String,
    idfa String,
    idfv String,
    gaid String,
    oaid String,
    ip String,
    user_agent String,
    created_at DateTime('UTC') DEFAULT now()
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(event_timestamp)
ORDER BY (organization_id, event_timestamp, device_id, event_id);
