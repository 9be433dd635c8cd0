-- Users that leave: kept as a tombstone (removed_at) so that their outstanding tokens stay
-- refused; their email is free again for a new account. Invitations: a one-time token to set
-- a password, stored as SHA-256, and an outbox a mailer reads.

ALTER TABLE users ADD COLUMN removed_at timestamptz;
DROP INDEX users_login_email;
-- Deliberately global: login finds the account by email alone (removed accounts excepted).
CREATE UNIQUE INDEX users_login_email ON users (lower(email)) WHERE removed_at IS NULL;

SET ROLE edge_definer;
CREATE OR REPLACE FUNCTION edge_private.login_lookup(login_email text)
RETURNS TABLE (organization_id text, user_id text, password_hash text, role text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = '' AS $$
  SELECT u.organization_id, u.id, u.password_hash, u.role
  FROM public.users u WHERE lower(u.email) = lower(login_email) AND u.removed_at IS NULL
$$;
RESET ROLE;
GRANT SELECT (removed_at) ON users TO edge_definer;

CREATE TABLE user_invites (
  organization_id text NOT NULL,
  user_id text NOT NULL,
  -- SHA-256 of `<organization id>.<secret>`. Deliberately global: presented alone.
  token_hash bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
  created_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz NOT NULL,
  used_at timestamptz,
  PRIMARY KEY (organization_id, user_id, token_hash),
  FOREIGN KEY (organization_id, user_id) REFERENCES users (organization_id, id) ON DELETE CASCADE
);

CREATE TABLE mail_outbox (
  organization_id text NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
  id bigint GENERATED ALWAYS AS IDENTITY,
  to_email text NOT NULL,
  kind text NOT NULL,
  payload jsonb NOT NULL DEFAULT '{}',
  created_at timestamptz NOT NULL DEFAULT now(),
  sent_at timestamptz,
  PRIMARY KEY (organization_id, id)
);
CREATE INDEX idx_mail_outbox_unsent ON mail_outbox (organization_id, created_at) WHERE sent_at IS NULL;

DO $$
DECLARE
  t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['user_invites', 'mail_outbox'] LOOP
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
    EXECUTE format(
      'CREATE POLICY tenant_isolation ON %I FOR ALL '
      'USING (organization_id = (SELECT nullif(current_setting(''app.current_tenant'', true), ''''))) '
      'WITH CHECK (organization_id = (SELECT nullif(current_setting(''app.current_tenant'', true), '''')))', t);
    EXECUTE format('REVOKE ALL ON %I FROM PUBLIC', t);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO edge_app', t);
  END LOOP;
END
$$;
