-- Usage rows: tenant_usage keeps one row per organisation and day (UTC day of arrival).
-- API requests and bytes ingested come from each node's per-period counts, recorded once per
-- (node id, period start): a node saving a period twice (a retry after a lost answer) or
-- several nodes saving theirs add each count exactly once. Events and unique devices are
-- set from ClickHouse (uniqExact of event_id and device_id per day of arrival), so client
-- retries of the same event count once.

ALTER TABLE tenant_usage ADD COLUMN bytes_ingested bigint NOT NULL DEFAULT 0;

-- The definer adds and sets usage rows through the two functions below, for any organisation.
GRANT SELECT (organization_id, metric_date, events_count, api_requests_count, bytes_ingested, unique_users_count),
      INSERT (organization_id, metric_date, events_count, api_requests_count, bytes_ingested, unique_users_count),
      UPDATE (events_count, api_requests_count, bytes_ingested, unique_users_count, updated_at)
  ON tenant_usage TO edge_definer;
CREATE POLICY definer_usage ON tenant_usage FOR ALL TO edge_definer USING (true) WITH CHECK (true);

SET ROLE edge_definer;

CREATE TABLE edge_private.usage_periods (
  node_id text NOT NULL,
  period_start_ms bigint NOT NULL,
  organization_id text NOT NULL,
  metric_date date NOT NULL,
  events bigint NOT NULL,
  api_requests bigint NOT NULL,
  bytes bigint NOT NULL,
  recorded_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (node_id, period_start_ms, organization_id)
);

-- One node's counts for one period: recorded once, and added to tenant_usage only then.
CREATE FUNCTION edge_private.usage_record(
  p_node text, p_start_ms bigint, p_date date, p_orgs text[], p_events bigint[], p_api bigint[], p_bytes bigint[])
RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = '' AS $$
  WITH fresh AS (
    INSERT INTO edge_private.usage_periods
      (node_id, period_start_ms, organization_id, metric_date, events, api_requests, bytes)
    SELECT p_node, p_start_ms, u.org, p_date, u.events, u.api, u.bytes
    FROM unnest(p_orgs, p_events, p_api, p_bytes) AS u(org, events, api, bytes)
    WHERE EXISTS (SELECT 1 FROM public.organizations o WHERE o.id = u.org)
    ON CONFLICT DO NOTHING
    RETURNING organization_id, metric_date, api_requests, bytes
  )
  INSERT INTO public.tenant_usage AS t (organization_id, metric_date, api_requests_count, bytes_ingested)
  SELECT organization_id, metric_date, api_requests, bytes FROM fresh
  ON CONFLICT (organization_id, metric_date) DO UPDATE
  SET api_requests_count = t.api_requests_count + EXCLUDED.api_requests_count,
      bytes_ingested = t.bytes_ingested + EXCLUDED.bytes_ingested,
      updated_at = now()
$$;

-- Events and unique devices per organisation and day, as ClickHouse counts them now.
CREATE FUNCTION edge_private.usage_set_events(p_orgs text[], p_dates date[], p_events bigint[], p_devices bigint[])
RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = '' AS $$
  INSERT INTO public.tenant_usage AS t (organization_id, metric_date, events_count, unique_users_count)
  SELECT u.org, u.day, u.events, least(u.devices, 2147483647)::integer
  FROM unnest(p_orgs, p_dates, p_events, p_devices) AS u(org, day, events, devices)
  WHERE EXISTS (SELECT 1 FROM public.organizations o WHERE o.id = u.org)
  ON CONFLICT (organization_id, metric_date) DO UPDATE
  SET events_count = EXCLUDED.events_count, unique_users_count = EXCLUDED.unique_users_count, updated_at = now()
$$;

RESET ROLE;

REVOKE ALL ON FUNCTION
  edge_private.usage_record(text, bigint, date, text[], bigint[], bigint[], bigint[]),
  edge_private.usage_set_events(text[], date[], bigint[], bigint[])
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
  edge_private.usage_record(text, bigint, date, text[], bigint[], bigint[], bigint[]),
  edge_private.usage_set_events(text[], date[], bigint[], bigint[])
TO edge_app;
