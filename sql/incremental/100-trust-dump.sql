-- pg_dump keeps the trust declarations, which are security configuration. Their role columns
-- become regrole, which dumps a role's name and restores it by name (a role missing there fails
-- the restore of the table): an oid copied to another cluster would name someone else.
DROP POLICY trust_visible ON plpy_bg.trust;
DROP POLICY trust_declare ON plpy_bg.trust;
DROP POLICY trust_withdraw ON plpy_bg.trust;
-- A type change rebuilds a CHECK from its printed text (truster <> trustee) under this script's
-- search_path, the database owner's public first: pg_catalog has no <>(regrole, regrole), so an
-- operator of that exact signature planted there would become the constraint's, run by every
-- write of trust as the superuser. The CHECK goes first and comes back with its operator named.
DO $trust_check$
DECLARE c pg_catalog.name;
BEGIN
    FOR c IN SELECT k.conname FROM pg_catalog.pg_constraint k
             WHERE k.conrelid OPERATOR(pg_catalog.=) 'plpy_bg.trust'::pg_catalog.regclass
               AND k.contype OPERATOR(pg_catalog.=) 'c' LOOP
        EXECUTE pg_catalog.format('ALTER TABLE plpy_bg.trust DROP CONSTRAINT %I', c);
    END LOOP;
END $trust_check$;
ALTER TABLE plpy_bg.trust
    ALTER COLUMN truster TYPE pg_catalog.regrole,
    ALTER COLUMN trustee TYPE pg_catalog.regrole;
ALTER TABLE plpy_bg.trust ADD CONSTRAINT trust_not_self
    CHECK (truster::pg_catalog.oid OPERATOR(pg_catalog.<>) trustee::pg_catalog.oid);
CREATE POLICY trust_visible ON plpy_bg.trust FOR SELECT
    USING (truster OPERATOR(pg_catalog.=) (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER)
        OR trustee OPERATOR(pg_catalog.=) (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER));
CREATE POLICY trust_declare ON plpy_bg.trust FOR INSERT
    WITH CHECK (truster OPERATOR(pg_catalog.=) (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER));
CREATE POLICY trust_withdraw ON plpy_bg.trust FOR DELETE
    USING (truster OPERATOR(pg_catalog.=) (SELECT r.oid FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER));
-- Only rows whose roles exist: a dropped role's row holds a bare oid, which another cluster (or
-- this one, after the oid is used again) would read as someone else.
SELECT pg_catalog.pg_extension_config_dump('plpy_bg.trust',
    'WHERE truster OPERATOR(pg_catalog.=) ANY (SELECT r.oid FROM pg_catalog.pg_roles r) '
    'AND trustee OPERATOR(pg_catalog.=) ANY (SELECT r.oid FROM pg_catalog.pg_roles r)');
