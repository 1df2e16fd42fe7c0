-- Declared trust for the provenance policy (plpy_bg.policy.trust).
-- A row (truster, trustee) says: jobs that run as `truster` may be induced by `trustee`.

CREATE TABLE plpy_bg.trust (
    truster     pg_catalog.oid         NOT NULL,
    trustee     pg_catalog.oid         NOT NULL,
    declared_at pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (truster, trustee),
    CHECK (truster OPERATOR(pg_catalog.<>) trustee)
);
COMMENT ON TABLE plpy_bg.trust IS
    'roles trusted by a job role to induce its jobs; written only through pg_background_trust() and pg_background_distrust()';

-- Nobody declares trust on another role's behalf: rows are the current role's own.
ALTER TABLE plpy_bg.trust ENABLE ROW LEVEL SECURITY;

CREATE POLICY trust_visible ON plpy_bg.trust FOR SELECT
    USING (truster OPERATOR(pg_catalog.=) (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER)
        OR trustee OPERATOR(pg_catalog.=) (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER));
CREATE POLICY trust_declare ON plpy_bg.trust FOR INSERT
    WITH CHECK (truster OPERATOR(pg_catalog.=) (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER));
CREATE POLICY trust_withdraw ON plpy_bg.trust FOR DELETE
    USING (truster OPERATOR(pg_catalog.=) (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER));
