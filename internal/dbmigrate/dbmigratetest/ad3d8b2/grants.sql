-- grants.sql: least-privilege roles for one aftercommit schema.
--
-- Two roles, neither of which owns anything:
--
--   app_role     the application: runs business transactions that write the
--                domain rows and enqueue jobs and publish events through the
--                outbox (River's insert, including its COPY path). It reads
--                jobs, events and the job views, but cannot update (beyond
--                the one column River's insert names, see below), delete or
--                truncate a job, nor delete an event.
--   worker_role  cmd/worker: River's fetch, completion, retries, rescuer,
--                cleaner, leader election and periodic jobs, the worker
--                lock, the event pruner, the domain workers.
--
-- Neither may create, alter, drop, truncate or reindex anything; only the
-- owner of the tables (the role that ran `aftercommit migrate up`) can.
--
-- River's reindexer: on Postgres 15 and 16, REINDEX needs ownership of the
-- index (Postgres 17's MAINTAIN privilege would do, but is not granted
-- here). The worker role does not own River's tables, so run it with
-- River's reindexer off (cmd/worker --reindexer off, or
-- river.Config{ReindexerSchedule: river.NeverSchedule()}) and, when the job
-- indexes bloat, run REINDEX INDEX CONCURRENTLY as the owner:
--
--   REINDEX INDEX CONCURRENTLY river_job_args_index;
--   REINDEX INDEX CONCURRENTLY river_job_metadata_index;
--
-- River's insert and UPDATE (kind): every job insert River makes (unique or
-- not) is one statement ending in
--
--   ON CONFLICT (unique_key) WHERE ... DO UPDATE SET kind = river_job.kind
--
-- and Postgres checks the UPDATE privilege of the columns an ON CONFLICT DO
-- UPDATE sets when the statement is planned, whether a row conflicts or not.
-- So the app role holds UPDATE on river_job's kind column and no other.
-- Column privileges are also what SELECT ... FOR UPDATE/SHARE requires, so
-- the app can lock job rows (it could already hold them up with its own
-- inserts). To keep UPDATE (kind) from ever changing a job, this file
-- installs the trigger river_job_kind_guard: any UPDATE that changes
-- river_job.kind fails with SQLSTATE 42501, for every role, the owner
-- included (a kind never changes: River renames kinds with KindAliases, not
-- with UPDATE). River's no-op DO UPDATE SET kind = river_job.kind passes.
--
-- How to run it, as the owner of the schema's tables, with the two roles
-- created beforehand (CREATE ROLE app LOGIN PASSWORD '...'):
--
--   aftercommit grant-roles --app-role app --worker-role worker [--create]
--
-- or with psql, whose variables this file uses:
--
--   psql "$DATABASE_URL" -1 -v ON_ERROR_STOP=1 -v schema=public \
--        -v app_role=app -v worker_role=worker -f internal/dbroles/grants.sql
--
-- It is idempotent and exact: every privilege the two roles hold on the
-- schema and its objects is revoked first, then the list below is granted,
-- in one transaction. A new migration's table is invisible to both roles
-- until it is added here (dbroles' tests fail until then).
--
-- Not covered: river_notification (River's legacy table, unused by this
-- River version) and the migration bookkeeping beyond a read for the
-- worker's startup check. EXECUTE on functions and USAGE on types are
-- granted to PUBLIC by Postgres' defaults; they are granted explicitly too,
-- for databases that revoked those defaults.

-- Start from nothing.
REVOKE ALL ON ALL TABLES    IN SCHEMA :"schema" FROM :"app_role", :"worker_role";
REVOKE ALL ON ALL SEQUENCES IN SCHEMA :"schema" FROM :"app_role", :"worker_role";
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA :"schema" FROM :"app_role", :"worker_role";
REVOKE ALL ON SCHEMA :"schema" FROM :"app_role", :"worker_role";

-- Both: look up names in the schema (never CREATE), River's job state type
-- and the function River's unique inserts and fetches call.
GRANT USAGE ON SCHEMA :"schema" TO :"app_role", :"worker_role";
GRANT USAGE ON TYPE :"schema".river_job_state TO :"app_role", :"worker_role";
GRANT EXECUTE ON FUNCTION :"schema".river_job_state_in_bitmask(bit, :"schema".river_job_state)
    TO :"app_role", :"worker_role";

-- Both: the domains' tables (donations, inventory, reporting, pings), full
-- DML, and their id sequences (nextval for inserts).
GRANT SELECT, INSERT, UPDATE, DELETE ON
    :"schema".pings,
    :"schema".users, :"schema".fundraisers, :"schema".emails, :"schema".donations,
    :"schema".email_counter_deltas,
    :"schema".products, :"schema".checkouts, :"schema".inventory_claims, :"schema".product_buckets,
    :"schema".cars, :"schema".car_users, :"schema".car_reports, :"schema".fundraiser_daily_totals
    TO :"app_role", :"worker_role";
GRANT USAGE ON SEQUENCE
    :"schema".pings_id_seq,
    :"schema".users_id_seq, :"schema".fundraisers_id_seq, :"schema".emails_id_seq,
    :"schema".donations_id_seq, :"schema".email_counter_deltas_id_seq,
    :"schema".products_id_seq, :"schema".checkouts_id_seq,
    :"schema".cars_id_seq
    TO :"app_role", :"worker_role";

-- Both: the job report views (they read river_job with their owner's
-- rights).
GRANT SELECT ON :"schema".job_kind_stats, :"schema".queue_depth, :"schema".stuck_jobs, :"schema".failing_jobs
    TO :"app_role", :"worker_role";

-- Both: jobs and events are inserted (River's INSERT and COPY; the outbox's
-- events INSERT) and read.
GRANT SELECT, INSERT ON :"schema".river_job, :"schema".outbox_events TO :"app_role", :"worker_role";
GRANT USAGE ON SEQUENCE :"schema".river_job_id_seq, :"schema".outbox_events_id_seq TO :"app_role", :"worker_role";

-- App: the one column River's INSERT ... ON CONFLICT DO UPDATE sets (see
-- above; river_job_kind_guard keeps it from changing).
GRANT UPDATE (kind) ON :"schema".river_job TO :"app_role";

-- Worker: River's tables (fetch, complete, retry, rescue, clean, elect a
-- leader, pause queues), the worker lock's leases, the event pruner.
GRANT UPDATE, DELETE ON :"schema".river_job TO :"worker_role";
GRANT SELECT, INSERT, UPDATE, DELETE ON :"schema".river_leader, :"schema".river_queue, :"schema".job_locks
    TO :"worker_role";
GRANT DELETE ON :"schema".outbox_events TO :"worker_role";
-- Worker: its startup check reads both migration versions.
GRANT SELECT ON :"schema".river_migration, :"schema".schema_migrations TO :"worker_role";

-- The kind guard (see above). The function belongs to the owner; a trigger
-- function needs no EXECUTE privilege of the role whose UPDATE fires it.
CREATE OR REPLACE FUNCTION :"schema".aftercommit_river_job_kind_guard() RETURNS trigger
    LANGUAGE plpgsql AS $guard$
BEGIN
    RAISE EXCEPTION 'aftercommit: river_job.kind never changes (job %: % to %)', OLD.id, OLD.kind, NEW.kind
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'UPDATE (kind) exists only for River''s INSERT ... ON CONFLICT DO UPDATE SET kind = river_job.kind; rename kinds with KindAliases';
END
$guard$;
CREATE OR REPLACE TRIGGER river_job_kind_guard
    BEFORE UPDATE OF kind ON :"schema".river_job
    FOR EACH ROW WHEN (OLD.kind IS DISTINCT FROM NEW.kind)
    EXECUTE FUNCTION :"schema".aftercommit_river_job_kind_guard();
