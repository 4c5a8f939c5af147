-- Least-privilege roles, kept by the migrations themselves.
--
-- Roles belong to the whole Postgres cluster and their names are the
-- operator's choice, so no migration creates or names one. What a
-- migration can own is the schema's side:
--
--   aftercommit_role_grants  what an app role and a worker role may do with
--                            each object of this schema: one row per role
--                            kind and object, written by migrations only.
--   aftercommit_roles        the operator's roles, registered once with
--                            `aftercommit grant-roles --app-role R
--                            --worker-role R` (or internal/dbroles/grants.sql
--                            with psql), each as 'app' or 'worker'.
--   aftercommit_apply_grants()
--                            gives every registered role that exists exactly
--                            the rows of its kind: it revokes everything the
--                            role holds on the schema's tables, views,
--                            sequences, functions and the schema itself,
--                            then grants the rows. It returns how many roles
--                            it granted.
--
-- A later migration that adds an object a role needs inserts its rows and
-- calls aftercommit_apply_grants() (its down deletes them and calls it
-- again), so the registered roles see the object as soon as the migration
-- is applied, by any runner: nobody re-runs grants by hand after a
-- migration. Run them as the owner of the tables; the function is not
-- granted to anyone else.
--
-- The roles themselves: an app role runs business transactions that write
-- domain rows and enqueue jobs and events (River's insert, including its
-- COPY path) and reads jobs, events and the job views, but cannot update
-- (beyond the one column River's insert names, guarded by
-- river_job_kind_guard from 0017), delete or truncate a job, nor delete an
-- event. A worker role runs cmd/worker: River's fetch, completion, retries,
-- rescuer, cleaner, leader election, periodic jobs, the worker lock, the
-- event pruner and the domain workers. Neither may create, alter, drop,
-- truncate or reindex anything: River's reindexer needs ownership on
-- Postgres 15 and 16, so run cmd/worker --reindexer off as the worker role
-- and REINDEX INDEX CONCURRENTLY as the owner when the job indexes bloat.
--
-- Not granted: river_notification (River's legacy table, unused by this
-- River version) and the migration bookkeeping beyond a read for the
-- worker's startup check.
CREATE TABLE aftercommit_role_grants (
    role_kind  text NOT NULL CHECK (role_kind IN ('app', 'worker')),
    -- 'SCHEMA' (this schema) or 'TABLE|SEQUENCE|TYPE|FUNCTION <name>' as
    -- GRANT spells it, unqualified.
    on_object  text NOT NULL
               CHECK (on_object = 'SCHEMA' OR on_object ~ '^(TABLE|SEQUENCE|TYPE|FUNCTION) [a-z_][a-z0-9_]*(\([a-z0-9_, ]*\))?$'),
    -- A GRANT privilege list, e.g. 'SELECT, INSERT, UPDATE (kind)'.
    privileges text NOT NULL
               CHECK (privileges ~ '^[A-Z]+( \([a-z_, ]+\))?(, [A-Z]+( \([a-z_, ]+\))?)*$'),
    PRIMARY KEY (role_kind, on_object)
);

CREATE TABLE aftercommit_roles (
    role_name     text        PRIMARY KEY CHECK (length(role_name) BETWEEN 1 AND 63),
    role_kind     text        NOT NULL CHECK (role_kind IN ('app', 'worker')),
    registered_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE aftercommit_role_grants IS
'What each kind of least-privilege role (app, worker) may do with each object of this schema; written by migrations, applied to the roles of aftercommit_roles by aftercommit_apply_grants().';
COMMENT ON TABLE aftercommit_roles IS
'The operator''s app and worker roles (aftercommit grant-roles); every migration that changes aftercommit_role_grants re-applies the grants to them.';

INSERT INTO aftercommit_role_grants (role_kind, on_object, privileges)
SELECT k.kind, g.on_object, g.privileges
  FROM (VALUES ('app'), ('worker')) AS k (kind)
 CROSS JOIN (VALUES
    -- Look up names in the schema (never CREATE); River's job state type
    -- and the function River's unique inserts and fetches call.
    ('SCHEMA', 'USAGE'),
    ('TYPE river_job_state', 'USAGE'),
    ('FUNCTION river_job_state_in_bitmask(bit, river_job_state)', 'EXECUTE'),
    -- The domains' tables (pings, donations, inventory, reporting): full
    -- DML, and their id sequences (nextval for inserts).
    ('TABLE pings', 'SELECT, INSERT, UPDATE, DELETE'),
    ('TABLE users', 'SELECT, INSERT, UPDATE, DELETE'),
    ('TABLE fundraisers', 'SELECT, INSERT, UPDATE, DELETE'),
    ('TABLE emails', 'SELECT, INSERT, UPDATE, DELETE'),
    ('TABLE donations', 'SELECT, INSERT, UPDATE, DELETE'),
    ('TABLE email_counter_deltas', 'SELECT, INSERT, UPDATE, DELETE'),
    ('TABLE products', 'SELECT, INSERT, UPDATE, DELETE'),
    ('TABLE checkouts', 'SELECT, INSERT, UPDATE, DELETE'),
    ('TABLE inventory_claims', 'SELECT, INSERT, UPDATE, DELETE'),
    ('TABLE product_buckets', 'SELECT, INSERT, UPDATE, DELETE'),
    ('TABLE cars', 'SELECT, INSERT, UPDATE, DELETE'),
    ('TABLE car_users', 'SELECT, INSERT, UPDATE, DELETE'),
    ('TABLE car_reports', 'SELECT, INSERT, UPDATE, DELETE'),
    ('TABLE fundraiser_daily_totals', 'SELECT, INSERT, UPDATE, DELETE'),
    ('SEQUENCE pings_id_seq', 'USAGE'),
    ('SEQUENCE users_id_seq', 'USAGE'),
    ('SEQUENCE fundraisers_id_seq', 'USAGE'),
    ('SEQUENCE emails_id_seq', 'USAGE'),
    ('SEQUENCE donations_id_seq', 'USAGE'),
    ('SEQUENCE email_counter_deltas_id_seq', 'USAGE'),
    ('SEQUENCE products_id_seq', 'USAGE'),
    ('SEQUENCE checkouts_id_seq', 'USAGE'),
    ('SEQUENCE cars_id_seq', 'USAGE'),
    -- The job report views (they read river_job with their owner's rights).
    ('TABLE job_kind_stats', 'SELECT'),
    ('TABLE queue_depth', 'SELECT'),
    ('TABLE stuck_jobs', 'SELECT'),
    ('TABLE failing_jobs', 'SELECT'),
    -- Jobs and events are inserted (River's INSERT and COPY; the outbox's
    -- events INSERT) and read; the rows below add to these per kind.
    ('SEQUENCE river_job_id_seq', 'USAGE'),
    ('SEQUENCE outbox_events_id_seq', 'USAGE')
 ) AS g (on_object, privileges);

INSERT INTO aftercommit_role_grants (role_kind, on_object, privileges) VALUES
    -- App: the one column River's INSERT ... ON CONFLICT DO UPDATE sets
    -- (river_job_kind_guard keeps it from changing).
    ('app', 'TABLE river_job', 'SELECT, INSERT, UPDATE (kind)'),
    ('app', 'TABLE outbox_events', 'SELECT, INSERT'),
    -- Worker: River's tables (fetch, complete, retry, rescue, clean, elect
    -- a leader, pause queues), the worker lock's leases, the event pruner,
    -- and a read of both migration tables for its startup check.
    ('worker', 'TABLE river_job', 'SELECT, INSERT, UPDATE, DELETE'),
    ('worker', 'TABLE outbox_events', 'SELECT, INSERT, DELETE'),
    ('worker', 'TABLE river_leader', 'SELECT, INSERT, UPDATE, DELETE'),
    ('worker', 'TABLE river_queue', 'SELECT, INSERT, UPDATE, DELETE'),
    ('worker', 'TABLE job_locks', 'SELECT, INSERT, UPDATE, DELETE'),
    ('worker', 'TABLE river_migration', 'SELECT'),
    ('worker', 'TABLE schema_migrations', 'SELECT');

CREATE FUNCTION aftercommit_apply_grants() RETURNS integer
    LANGUAGE plpgsql AS $fn$
DECLARE
    s text := current_schema();
    r record;
    g record;
    n integer := 0;
BEGIN
    -- One at a time: concurrent GRANTs on one object fail with "tuple
    -- concurrently updated".
    LOCK TABLE aftercommit_roles IN SHARE ROW EXCLUSIVE MODE;
    FOR r IN SELECT a.role_name, a.role_kind, p.oid IS NOT NULL AS role_exists
               FROM aftercommit_roles a
               LEFT JOIN pg_roles p ON p.rolname = a.role_name
              ORDER BY a.role_name
    LOOP
        IF NOT r.role_exists THEN
            RAISE NOTICE 'aftercommit: role % (%) is registered in %.aftercommit_roles but does not exist: skipped', r.role_name, r.role_kind, s;
            CONTINUE;
        END IF;
        EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM %I', s, r.role_name);
        EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA %I FROM %I', s, r.role_name);
        EXECUTE format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA %I FROM %I', s, r.role_name);
        EXECUTE format('REVOKE ALL ON SCHEMA %I FROM %I', s, r.role_name);
        FOR g IN SELECT on_object, privileges FROM aftercommit_role_grants
                  WHERE role_kind = r.role_kind ORDER BY on_object
        LOOP
            IF g.on_object = 'SCHEMA' THEN
                EXECUTE format('GRANT %s ON SCHEMA %I TO %I', g.privileges, s, r.role_name);
            ELSE
                EXECUTE format('GRANT %s ON %s TO %I', g.privileges, g.on_object, r.role_name);
            END IF;
        END LOOP;
        n := n + 1;
    END LOOP;
    RETURN n;
END
$fn$;

-- The function grants in the schema it was created in, whatever the
-- caller's search_path.
DO $pin$
BEGIN
    EXECUTE format('ALTER FUNCTION aftercommit_apply_grants() SET search_path = %I', current_schema());
END
$pin$;
REVOKE ALL ON FUNCTION aftercommit_apply_grants() FROM PUBLIC;

COMMENT ON FUNCTION aftercommit_apply_grants() IS
'Gives every role of aftercommit_roles that exists exactly the privileges aftercommit_role_grants lists for its kind on this schema (everything else it held here is revoked); returns how many roles it granted. Run by migrations and by aftercommit grant-roles, as the owner.';

SELECT aftercommit_apply_grants();
