-- The DNC audit log is appended only through dnc_audit_append(), a SECURITY DEFINER function owned by the
-- migration role: it takes the chain head's row lock, assigns each record's seq, time and prev_hash itself,
-- computes its hash, inserts the records and moves the head, in one call per batch. The service role may
-- EXECUTE it and SELECT the log (grants.py); it has no INSERT, UPDATE, DELETE or TRUNCATE on the log or on
-- its head, so it can neither choose a record's seq or time nor move the head.
--
-- The hash is the chain's format unchanged (outdial.dnc.audit): sha256(canonical(record) || prev_hash) where
-- canonical is the JSON object with sorted keys, no spaces, non-ASCII kept as is. PostgreSQL's to_json(text)
-- escapes exactly as Python's json.dumps(ensure_ascii=False) does (", \, \b \f \n \r \t, other control
-- characters as \u00xx in lower case); tests/integration/test_dnc_audit_append.py checks both agree.
--
-- Time: clock_timestamp() when the head lock is held, never earlier than the head's last record (so a clock
-- that steps back does not date a record before the one it follows; verify checks time never decreases).

ALTER TABLE dnc_audit_head ADD COLUMN IF NOT EXISTS at timestamptz;
UPDATE dnc_audit_head h SET at = (SELECT a.at FROM dnc_audit a WHERE a.seq = h.seq) WHERE h.at IS NULL;

-- Inlined into dnc_audit_append's statement (so: no SET clause, no STRICT; pg_catalog names qualified; EXTRACT is
-- grammar, which always means pg_catalog's).
CREATE OR REPLACE FUNCTION dnc_audit_canonical(
    p_seq bigint, p_at timestamptz, p_actor text, p_action text, p_number text, p_campaign_id text,
    p_call_id text, p_result text, p_reason text, p_details text
) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT '{"action":' || pg_catalog.to_json(p_action)::text
        || ',"actor":' || pg_catalog.to_json(p_actor)::text
        || ',"at_us":' || (extract(epoch FROM p_at) * 1000000)::bigint::text
        || ',"call_id":' || pg_catalog.to_json(p_call_id)::text
        || ',"campaign_id":' || pg_catalog.to_json(p_campaign_id)::text
        || ',"details":' || pg_catalog.to_json(p_details)::text
        || ',"number":' || pg_catalog.to_json(p_number)::text
        || ',"reason":' || pg_catalog.to_json(p_reason)::text
        || ',"result":' || pg_catalog.to_json(p_result)::text
        || ',"seq":' || p_seq::text
        || '}'
$$;

CREATE OR REPLACE FUNCTION dnc_audit_append(
    p_actor text[], p_action text[], p_number text[], p_campaign_id text[], p_call_id text[],
    p_result text[], p_reason text[], p_details text[]
) RETURNS TABLE (seq bigint, at timestamptz, prev_hash text, hash text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    n integer := coalesce(cardinality(p_actor), 0);
    head_seq bigint;
    head_hash text;
    head_at timestamptz;
    t timestamptz;
    s bigint[] := '{}';
    prevs text[] := '{}';
    canon text[];
    c text;
    hashes text[] := '{}';
    prev text;
    h text;
    i integer;
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;
    IF n > 100000 THEN
        RAISE EXCEPTION 'at most 100000 audit records per call (got %)', n USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF cardinality(p_action) IS DISTINCT FROM n OR cardinality(p_number) IS DISTINCT FROM n
       OR cardinality(p_campaign_id) IS DISTINCT FROM n OR cardinality(p_call_id) IS DISTINCT FROM n
       OR cardinality(p_result) IS DISTINCT FROM n OR cardinality(p_reason) IS DISTINCT FROM n
       OR cardinality(p_details) IS DISTINCT FROM n THEN
        RAISE EXCEPTION 'dnc_audit_append: every array must have % elements', n
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- (set-based and FOREACH below: subscripting a text[] walks it from the start, quadratic per batch)
    IF array_position(p_actor, NULL) IS NOT NULL OR array_position(p_action, NULL) IS NOT NULL
       OR array_position(p_number, NULL) IS NOT NULL OR array_position(p_campaign_id, NULL) IS NOT NULL
       OR array_position(p_call_id, NULL) IS NOT NULL OR array_position(p_result, NULL) IS NOT NULL
       OR array_position(p_reason, NULL) IS NOT NULL OR array_position(p_details, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'dnc_audit_append: a record has a NULL field' USING ERRCODE = 'null_value_not_allowed';
    END IF;

    SELECT dh.seq, dh.hash, dh.at INTO head_seq, head_hash, head_at FROM dnc_audit_head dh WHERE dh.id = 1 FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'dnc_audit_head is missing its row';
    END IF;
    t := greatest(clock_timestamp(), coalesce(head_at, '-infinity'::timestamptz));
    -- every record's canonical text in one set-based statement; only the hash chaining is sequential
    SELECT array_agg(dnc_audit_canonical(head_seq + u.i, t, u.actor, u.action, u.number, u.campaign_id,
                                         u.call_id, u.result, u.reason, u.details) ORDER BY u.i)
      INTO canon
      FROM unnest(p_actor, p_action, p_number, p_campaign_id, p_call_id, p_result, p_reason, p_details)
           WITH ORDINALITY AS u(actor, action, number, campaign_id, call_id, result, reason, details, i);
    prev := head_hash;
    i := 0;
    FOREACH c IN ARRAY canon LOOP
        i := i + 1;
        h := encode(sha256(convert_to(c || prev, 'UTF8')), 'hex');
        s[i] := head_seq + i;
        prevs[i] := prev;
        hashes[i] := h;
        prev := h;
    END LOOP;

    INSERT INTO dnc_audit (seq, at, actor, action, number, campaign_id, call_id, result, reason, details,
                           prev_hash, hash)
    SELECT u.seq, t, u.actor, u.action, u.number, u.campaign_id, u.call_id, u.result, u.reason, u.details,
           u.prev_hash, u.hash
      FROM unnest(s, p_actor, p_action, p_number, p_campaign_id, p_call_id, p_result, p_reason, p_details, prevs,
                  hashes)
           AS u(seq, actor, action, number, campaign_id, call_id, result, reason, details, prev_hash, hash);
    UPDATE dnc_audit_head dh SET seq = head_seq + n, hash = prev, at = t WHERE dh.id = 1;

    RETURN QUERY SELECT u.seq, t, u.prev_hash, u.hash FROM unnest(s, prevs, hashes) AS u(seq, prev_hash, hash);
END
$$;

-- Functions are executable by PUBLIC by default: only the roles grants.py names may append.
REVOKE ALL ON FUNCTION dnc_audit_append(text[], text[], text[], text[], text[], text[], text[], text[]) FROM PUBLIC;

-- Nobody but the owner writes the log or its head (the trigger stops even the owner's UPDATE/DELETE/TRUNCATE
-- of the log until it is disabled on purpose; the signed checkpoints then tell, see outdial.dnc.anchor).
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON dnc_audit, dnc_audit_head FROM PUBLIC;

-- PostgreSQL before 15 let every role create objects in the public schema; no runtime role may.
DO $$
BEGIN
    REVOKE CREATE ON SCHEMA public FROM PUBLIC;
EXCEPTION
    WHEN insufficient_privilege THEN
        RAISE NOTICE 'cannot revoke CREATE on schema public from PUBLIC: an administrator should';
END
$$;

-- The role of migrations 0200/0201 (outdial_app, applied with SET ROLE by a login user that could SET ROLE back)
-- is replaced by one login role per service (grants.py): it keeps nothing in this database.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'outdial_app') THEN
        REVOKE ALL ON ALL TABLES IN SCHEMA public FROM outdial_app;
        REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM outdial_app;
        REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM outdial_app;
        EXECUTE format('REVOKE ALL ON DATABASE %I FROM outdial_app', current_database());
    END IF;
END
$$;
