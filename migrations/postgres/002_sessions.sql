-- Refresh tokens of logged-in users: stored as SHA-256, rotated on every use, revoked by
-- logout. A token names its organisation in clear (`<organization id>.<secret>`), so
-- refreshing runs in that tenant's transaction like everything else.

CREATE TABLE refresh_tokens (
  organization_id text NOT NULL,
  id text NOT NULL,
  user_id text NOT NULL,
  -- Deliberately global: a refresh token is presented alone, and its hash names it among all.
  token_hash bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
  created_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz NOT NULL,
  revoked_at timestamptz,
  PRIMARY KEY (organization_id, id),
  FOREIGN KEY (organization_id, user_id) REFERENCES users (organization_id, id) ON DELETE CASCADE
);
CREATE INDEX idx_refresh_tokens_org_user ON refresh_tokens (organization_id, user_id);

ALTER TABLE refresh_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE refresh_tokens FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON refresh_tokens FOR ALL
  USING (organization_id = (SELECT nullif(current_setting('app.current_tenant', true), '')))
  WITH CHECK (organization_id = (SELECT nullif(current_setting('app.current_tenant', true), '')));
REVOKE ALL ON refresh_tokens FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON refresh_tokens TO edge_app;
