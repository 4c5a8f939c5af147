-- The kind guard: no UPDATE may change a job's kind, whoever runs it (the
-- owner included). A kind never changes: River renames kinds with
-- KindAliases, not with UPDATE.
--
-- Why it exists: every job insert River makes is one statement ending in
--
--   ON CONFLICT (unique_key) WHERE ... DO UPDATE SET kind = river_job.kind
--
-- and Postgres checks the UPDATE privilege of the columns an ON CONFLICT DO
-- UPDATE sets, whether a row conflicts or not. So the least-privilege app
-- role (0018_role_grants) must hold UPDATE (kind) on river_job; this trigger
-- keeps that privilege from ever changing a job. River's no-op
-- (SET kind = river_job.kind) passes: the trigger only fires when the kind
-- really changes.
--
-- Until this migration, `aftercommit grant-roles` installed the same trigger
-- and function; CREATE OR REPLACE and DROP ... IF EXISTS take them over.
CREATE OR REPLACE FUNCTION aftercommit_river_job_kind_guard() RETURNS trigger
    LANGUAGE plpgsql AS $guard$
BEGIN
    RAISE EXCEPTION 'aftercommit: river_job.kind never changes (job %: % to %)', OLD.id, OLD.kind, NEW.kind
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'UPDATE (kind) exists only for River''s INSERT ... ON CONFLICT DO UPDATE SET kind = river_job.kind; rename kinds with KindAliases';
END
$guard$;

DROP TRIGGER IF EXISTS river_job_kind_guard ON river_job;
CREATE TRIGGER river_job_kind_guard
    BEFORE UPDATE OF kind ON river_job
    FOR EACH ROW WHEN (OLD.kind IS DISTINCT FROM NEW.kind)
    EXECUTE FUNCTION aftercommit_river_job_kind_guard();

COMMENT ON TRIGGER river_job_kind_guard ON river_job IS
'Fails any UPDATE that changes river_job.kind (SQLSTATE 42501), for every role: the app role holds UPDATE (kind) only for River''s INSERT ... ON CONFLICT DO UPDATE SET kind = river_job.kind, which this lets through.';
