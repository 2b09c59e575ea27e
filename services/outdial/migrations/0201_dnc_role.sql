-- The DNC service's sessions run as outdial_app (ServiceSpec.db_role; OUTDIAL_DNC_DB_ROLE). Give the role
-- exactly what the service does, and no more:
--   dnc_lists, dnc_entries, dnc_consent   SELECT, INSERT, UPDATE (removals and revocations stamp rows)
--   dnc_registry_imports                  SELECT, INSERT
--   dnc_index_state                       SELECT, UPDATE (the dirty flag)
--   dnc_audit_head                        SELECT, UPDATE (the chain head; appends lock it FOR UPDATE)
--   dnc_audit                             SELECT, INSERT (never UPDATE, DELETE or TRUNCATE)
--   the id sequences of the three bigserial tables: USAGE (nextval)
--   TEMPORARY on the database (registry imports stage rows in a temporary table)
-- Migrations themselves run as the login user (DDL). Idempotent; a missing role only leaves a notice.
DO $$
DECLARE
    seq text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'outdial_app') THEN
        RAISE NOTICE 'role outdial_app does not exist: create it (NOLOGIN) and run the migrations again';
        RETURN;
    END IF;
    GRANT USAGE ON SCHEMA public TO outdial_app;
    REVOKE ALL ON dnc_lists, dnc_entries, dnc_consent, dnc_registry_imports, dnc_index_state,
        dnc_audit_head, dnc_audit FROM outdial_app;
    GRANT SELECT, INSERT, UPDATE ON dnc_lists, dnc_entries, dnc_consent TO outdial_app;
    GRANT SELECT, INSERT ON dnc_registry_imports TO outdial_app;
    GRANT SELECT, UPDATE ON dnc_index_state, dnc_audit_head TO outdial_app;
    GRANT SELECT, INSERT ON dnc_audit TO outdial_app;
    -- 0200 granted USAGE, SELECT on every sequence of the schema (other services' too): narrow it.
    FOR seq IN
        SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'S' AND n.nspname = 'public'
    LOOP
        EXECUTE format('REVOKE ALL ON SEQUENCE %s FROM outdial_app', seq);
    END LOOP;
    FOR seq IN
        SELECT pg_get_serial_sequence(t, 'id') FROM unnest(ARRAY['dnc_entries', 'dnc_consent',
            'dnc_registry_imports']) AS t
    LOOP
        EXECUTE format('GRANT USAGE ON SEQUENCE %s TO outdial_app', seq);
    END LOOP;
    EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO outdial_app', current_database());
END
$$;

-- The login user must be able to become outdial_app. A superuser can already; otherwise grant the
-- membership when this user may (CREATEROLE / ADMIN OPTION), else an administrator has to run
-- GRANT outdial_app TO <login user>; (the service reports NOT_SERVING until then).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'outdial_app')
       AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       AND NOT pg_has_role(current_user, 'outdial_app', 'MEMBER') THEN
        GRANT outdial_app TO CURRENT_USER;
    END IF;
EXCEPTION
    WHEN insufficient_privilege THEN
        RAISE NOTICE 'cannot grant outdial_app to %: an administrator must run GRANT outdial_app TO %;',
            current_user, current_user;
END
$$;
