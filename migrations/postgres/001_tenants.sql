-- The control plane's tenant tables, Row-Level Security on every one of them,
-- and the few cross-tenant reads as SECURITY DEFINER functions in a private schema.
--
-- Roles (cluster-wide, created here when missing; `edge migrate` also creates the
-- service's login role from EDGE_DB_SERVICE_ROLE and grants it edge_app):
--   edge_app      NOLOGIN. What the service may do: read and write tenant rows, always
--                 through the tenant policy, and execute the private functions.
--   edge_definer  NOLOGIN. Owns the private functions; reads what they return through its
--                 own read-only policies (FORCE filters owners too). Never BYPASSRLS.
-- Tables belong to whoever runs the migrations (the owner); the service owns nothing.
--
-- Ids: organisations keep their text ids (`org_…`, as in tokens, tenants files and
-- ClickHouse). Users, apps and keys get `usr_`, `app_`, `key_` + a UUIDv7 in hex: ordered
-- by creation, so list cursors are ids.
--
-- Every tenant table's policy compares organization_id with `app.current_tenant`, set per
-- transaction with set_config(…, true). Unset means zero rows, never an error. The sub-select
-- makes PostgreSQL evaluate the setting once per query.
--
-- Unique constraints and foreign keys include organization_id, except three that are
-- deliberately global and documented where they are made: a subdomain, a custom domain and
-- a login email name one tenant among all; an SDK key hash identifies a key among all.
-- Their conflicts answer 409 without saying whose.

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'edge_app') THEN
    CREATE ROLE edge_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'edge_definer') THEN
    CREATE ROLE edge_definer NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
  END IF;
END
$$;

CREATE TABLE organizations (
  id text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 64),
  name text NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
  -- Deliberately global: a subdomain names one tenant among all.
  subdomain text NOT NULL UNIQUE CHECK (subdomain ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
  tier text NOT NULL DEFAULT 'starter',
  status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'deleted')),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  deleted_at timestamptz
);
CREATE INDEX idx_organizations_status ON organizations (status);

CREATE TABLE users (
  organization_id text NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
  id text NOT NULL,
  email text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
  -- argon2id in PHC form; NULL until an invited user sets a password.
  password_hash text,
  role text NOT NULL CHECK (role IN ('super_admin', 'admin', 'analyst', 'viewer')),
  -- Tokens issued before this instant are refused (role change, removal, logout everywhere).
  tokens_valid_after timestamptz,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (organization_id, id)
);
-- Deliberately global: login finds the account by email alone.
CREATE UNIQUE INDEX users_login_email ON users (lower(email));
CREATE INDEX idx_users_org_created ON users (organization_id, created_at DESC);

CREATE TABLE apps (
  organization_id text NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
  id text NOT NULL,
  name text NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (organization_id, id)
);
CREATE INDEX idx_apps_org_created ON apps (organization_id, created_at DESC);

CREATE TABLE api_keys (
  organization_id text NOT NULL,
  id text NOT NULL,
  app_id text NOT NULL,
  -- SHA-256 of the secret. Deliberately global: a key identifies its tenant among all.
  key_hash bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
  -- The first characters of the secret, for people to tell keys apart.
  prefix text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  revoked_at timestamptz,
  PRIMARY KEY (organization_id, id),
  FOREIGN KEY (organization_id, app_id) REFERENCES apps (organization_id, id) ON DELETE CASCADE
);
CREATE INDEX idx_api_keys_org_created ON api_keys (organization_id, created_at DESC);

CREATE TABLE tenant_branding (
  organization_id text PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
  logo_url text,
  favicon_url text,
  primary_color text CHECK (primary_color ~ '^#[0-9A-Fa-f]{6}$'),
  secondary_color text CHECK (secondary_color ~ '^#[0-9A-Fa-f]{6}$'),
  accent_color text CHECK (accent_color ~ '^#[0-9A-Fa-f]{6}$'),
  -- Deliberately global: a custom domain names one tenant among all.
  custom_domain text UNIQUE CHECK (custom_domain = lower(custom_domain)),
  custom_css text,
  email_from_name text,
  email_from_address text,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tenant_usage (
  organization_id text NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
  metric_date date NOT NULL,
  events_count bigint NOT NULL DEFAULT 0,
  api_requests_count bigint NOT NULL DEFAULT 0,
  storage_bytes bigint NOT NULL DEFAULT 0,
  ml_predictions_count bigint NOT NULL DEFAULT 0,
  unique_users_count integer NOT NULL DEFAULT 0,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (organization_id, metric_date)
);
CREATE INDEX idx_tenant_usage_org_date ON tenant_usage (organization_id, metric_date DESC);

-- No foreign key: audit rows outlive their organisation, and blocked attempts are recorded
-- under the organisation whose credential made them, or '' (the operator's stream) when the
-- credential named none.
CREATE TABLE audit_log (
  organization_id text NOT NULL,
  id bigint GENERATED ALWAYS AS IDENTITY,
  at timestamptz NOT NULL DEFAULT now(),
  actor text NOT NULL,
  action text NOT NULL,
  target text NOT NULL DEFAULT '',
  client inet,
  detail jsonb NOT NULL DEFAULT '{}',
  PRIMARY KEY (organization_id, id)
);
CREATE INDEX idx_audit_log_org_at ON audit_log (organization_id, at DESC);

-- Row-Level Security: every tenant table, forced (owners are filtered too).
DO $$
DECLARE
  t text;
  tenant_column text;
BEGIN
  FOREACH t IN ARRAY ARRAY['organizations', 'users', 'apps', 'api_keys', 'tenant_branding',
                           'tenant_usage', 'audit_log'] LOOP
    tenant_column := CASE t WHEN 'organizations' THEN 'id' ELSE 'organization_id' END;
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
    EXECUTE format(
      'CREATE POLICY tenant_isolation ON %I FOR ALL '
      'USING (%I = (SELECT nullif(current_setting(''app.current_tenant'', true), ''''))) '
      'WITH CHECK (%I = (SELECT nullif(current_setting(''app.current_tenant'', true), '''')))',
      t, tenant_column, tenant_column);
    EXECUTE format('REVOKE ALL ON %I FROM PUBLIC', t);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO edge_app', t);
  END LOOP;
END
$$;

-- The private schema: the only cross-tenant reads, each returning only what its caller needs.
CREATE SCHEMA edge_private AUTHORIZATION edge_definer;
REVOKE ALL ON SCHEMA edge_private FROM PUBLIC;
GRANT USAGE ON SCHEMA edge_private TO edge_app;

-- What the definer may read, and nothing it may write but audit rows.
GRANT SELECT (id, subdomain, tier, status, updated_at) ON organizations TO edge_definer;
GRANT SELECT (organization_id, app_id, key_hash, revoked_at) ON api_keys TO edge_definer;
GRANT SELECT (organization_id, custom_domain) ON tenant_branding TO edge_definer;
GRANT SELECT (organization_id, id, email, password_hash, role, tokens_valid_after) ON users TO edge_definer;
GRANT INSERT (organization_id, actor, action, target, client, detail) ON audit_log TO edge_definer;
CREATE POLICY definer_read ON organizations FOR SELECT TO edge_definer USING (true);
CREATE POLICY definer_read ON api_keys FOR SELECT TO edge_definer USING (true);
CREATE POLICY definer_read ON tenant_branding FOR SELECT TO edge_definer USING (true);
CREATE POLICY definer_read ON users FOR SELECT TO edge_definer USING (true);
CREATE POLICY definer_insert ON audit_log FOR INSERT TO edge_definer WITH CHECK (true);

-- Bumped by every change the registry must see; LISTEN carries only ids and this version.
CREATE SEQUENCE edge_private.registry_version;
ALTER SEQUENCE edge_private.registry_version OWNER TO edge_definer;

SET ROLE edge_definer;

-- Every organisation as the edge's registry needs it: no names, no people.
CREATE FUNCTION edge_private.registry_organizations()
RETURNS TABLE (id text, subdomain text, custom_domain text, tier text, status text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = '' AS $$
  SELECT o.id, o.subdomain, b.custom_domain, o.tier, o.status
  FROM public.organizations o LEFT JOIN public.tenant_branding b ON b.organization_id = o.id
$$;

-- Every SDK key hash with its organisation and app; revoked keys are left out.
CREATE FUNCTION edge_private.registry_keys()
RETURNS TABLE (organization_id text, app_id text, key_hash bytea)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = '' AS $$
  SELECT k.organization_id, k.app_id, k.key_hash FROM public.api_keys k WHERE k.revoked_at IS NULL
$$;

-- Users whose tokens issued before an instant are refused (role changes, removals).
CREATE FUNCTION edge_private.registry_token_revocations()
RETURNS TABLE (organization_id text, user_id text, tokens_valid_after timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = '' AS $$
  SELECT u.organization_id, u.id, u.tokens_valid_after FROM public.users u WHERE u.tokens_valid_after IS NOT NULL
$$;

CREATE FUNCTION edge_private.registry_version_now()
RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = '' AS $$
  SELECT last_value FROM edge_private.registry_version
$$;

-- The login check: the one place a password hash leaves the table.
CREATE FUNCTION edge_private.login_lookup(login_email text)
RETURNS TABLE (organization_id text, user_id text, password_hash text, role text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = '' AS $$
  SELECT u.organization_id, u.id, u.password_hash, u.role
  FROM public.users u WHERE lower(u.email) = lower(login_email)
$$;

-- An audit row for a request whose organisation the caller cannot set as its tenant.
CREATE FUNCTION edge_private.audit_unscoped(
  org text, actor text, action text, target text, client inet, detail jsonb)
RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = '' AS $$
  INSERT INTO public.audit_log (organization_id, actor, action, target, client, detail)
  VALUES (org, actor, action, target, client, detail)
$$;

-- Trigger: bump the version and tell every listening edge which organisation changed.
CREATE FUNCTION edge_private.registry_changed()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
DECLARE
  org text;
  version bigint;
BEGIN
  IF TG_TABLE_NAME = 'organizations' THEN
    org := CASE TG_OP WHEN 'DELETE' THEN OLD.id ELSE NEW.id END;
  ELSE
    org := CASE TG_OP WHEN 'DELETE' THEN OLD.organization_id ELSE NEW.organization_id END;
  END IF;
  version := nextval('edge_private.registry_version');
  PERFORM pg_notify('edge_registry', json_build_object('organization_id', org, 'version', version)::text);
  RETURN NULL;
END
$$;

RESET ROLE;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA edge_private FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
  edge_private.registry_organizations(),
  edge_private.registry_keys(),
  edge_private.registry_token_revocations(),
  edge_private.registry_version_now(),
  edge_private.login_lookup(text),
  edge_private.audit_unscoped(text, text, text, text, inet, jsonb)
TO edge_app;

CREATE TRIGGER registry_changed AFTER INSERT OR DELETE OR UPDATE OF subdomain, tier, status ON organizations
  FOR EACH ROW EXECUTE FUNCTION edge_private.registry_changed();
CREATE TRIGGER registry_changed AFTER INSERT OR DELETE OR UPDATE OF key_hash, revoked_at, app_id ON api_keys
  FOR EACH ROW EXECUTE FUNCTION edge_private.registry_changed();
CREATE TRIGGER registry_changed AFTER INSERT OR DELETE OR UPDATE OF custom_domain ON tenant_branding
  FOR EACH ROW EXECUTE FUNCTION edge_private.registry_changed();
CREATE TRIGGER registry_changed AFTER INSERT OR DELETE OR UPDATE OF tokens_valid_after ON users
  FOR EACH ROW EXECUTE FUNCTION edge_private.registry_changed();
