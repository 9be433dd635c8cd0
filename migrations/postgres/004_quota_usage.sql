-- Monthly event quotas across a fleet of edge nodes: each node's charge per organisation and
-- billing month (the first day of the UTC calendar month), saved by the node itself and never
-- lowered, so a restarted node, or a Redis that lost its counts, learns the month back.
-- Keyed by node id, so a node saving the same count twice, or late, changes nothing.
--
-- Private: owned by edge_definer and reached only through the two functions below (the
-- service has no grant on the table); no tenant reads it.

SET ROLE edge_definer;

CREATE TABLE edge_private.quota_usage (
  organization_id text NOT NULL,
  month date NOT NULL,
  node_id text NOT NULL,
  events bigint NOT NULL CHECK (events >= 0),
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (month, organization_id, node_id)
);

-- One node's charges for one month: a row per organisation, the larger count wins.
CREATE FUNCTION edge_private.quota_save(p_node text, p_month date, p_orgs text[], p_events bigint[])
RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = '' AS $$
  INSERT INTO edge_private.quota_usage AS q (organization_id, month, node_id, events)
  SELECT u.org, p_month, p_node, u.events FROM unnest(p_orgs, p_events) AS u(org, events)
  ON CONFLICT (month, organization_id, node_id)
  DO UPDATE SET events = GREATEST(q.events, EXCLUDED.events), updated_at = now()
$$;

-- Every node's charge for one month.
CREATE FUNCTION edge_private.quota_month(p_month date)
RETURNS TABLE (organization_id text, node_id text, events bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = '' AS $$
  SELECT q.organization_id, q.node_id, q.events FROM edge_private.quota_usage q WHERE q.month = p_month
$$;

RESET ROLE;

REVOKE ALL ON FUNCTION edge_private.quota_save(text, date, text[], bigint[]), edge_private.quota_month(date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION edge_private.quota_save(text, date, text[], bigint[]), edge_private.quota_month(date) TO edge_app;
