-- grants.sql: register the least-privilege app and worker roles of one
-- aftercommit schema and grant them.
--
-- What each role may do is a migration's business, not this file's:
-- migrations/0018_role_grants.up.sql keeps the list in the table
-- aftercommit_role_grants (see it with SELECT * FROM aftercommit_role_grants
-- ORDER BY 1, 2) and the function aftercommit_apply_grants(), which gives
-- every role registered in aftercommit_roles exactly that list on the
-- schema, revoking whatever else it held there. The river_job kind guard
-- (the trigger river_job_kind_guard, which keeps the app role's UPDATE
-- (kind) from ever changing a job) is migrations/0017_river_job_kind_guard.
--
-- This file registers two roles once; from then on every migration that
-- adds an object a role needs grants it to them, whichever tool applies it
-- (aftercommit migrate up, golang-migrate's CLI, the test harness): nothing
-- is re-run by hand after a migration. Roles stay the operator's: create
-- them (CREATE ROLE app LOGIN PASSWORD '...'), or let
-- `aftercommit grant-roles --create` make NOLOGIN ones.
--
-- How to run it, as the owner of the schema's tables, once the schema is
-- migrated:
--
--   aftercommit grant-roles --app-role app --worker-role worker [--create]
--
-- (which also refuses a superuser, the owner, one role for both, or two
-- roles one of which is a member of the other), or with psql, whose
-- variables this file uses:
--
--   psql "$DATABASE_URL" -1 -v ON_ERROR_STOP=1 -v schema=public \
--        -v app_role=app -v worker_role=worker -f internal/dbroles/grants.sql
--
-- It is idempotent and exact: running it again changes nothing; a role
-- registered under the other kind is moved to this one.
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
-- To retire a role: DELETE FROM aftercommit_roles WHERE role_name = '...';
-- then revoke what it holds (DROP OWNED BY it, or REVOKE ... FROM it).

INSERT INTO :"schema".aftercommit_roles (role_name, role_kind)
VALUES (:'app_role', 'app'), (:'worker_role', 'worker')
ON CONFLICT (role_name) DO UPDATE SET role_kind = EXCLUDED.role_kind;

SELECT :"schema".aftercommit_apply_grants();
