-- Job dependencies: a job that starts only once other jobs completed
-- (outbox.Tx.EnqueueAfter), named by the references the enqueue of those
-- jobs returned (outbox.Tx.EnqueueRef), in the same transaction or an
-- earlier one. Small DAGs, not a workflow language.
--
--   * A job with a reference (metadata aftercommit_ref, a UUID) has a row in
--     job_refs from its insert, and its finish is written there (completed,
--     discarded, cancelled; deleted unfinished counts as cancelled), kept
--     after River's cleaner deletes the job.
--   * A job with dependencies (metadata aftercommit_after: {"refs": [...],
--     "run_on_failure": bool}) gets its state when it is inserted, whatever
--     state its producer asked for: pending while a dependency has not
--     finished (one job_waits row per such dependency); available when all
--     completed; cancelled, with the reason in its errors, when one was
--     discarded or cancelled (or is unknown) — unless run_on_failure, which
--     only waits for them to finish.
--   * When a referenced job finishes, a trigger on river_job, in the
--     transaction that finishes it, releases each waiting job whose last
--     dependency it was, or cancels the ones that do not run on failure;
--     a cancelled job's own dependents follow in the same transaction.
--
-- Both triggers are BEFORE INSERT for the insert side: a parent and its
-- child inserted by one statement (River's InsertMany, the relay's move) are
-- processed row by row in order, so the child sees its parent's row.
--
--   SELECT * FROM job_dependency_status;
CREATE TABLE job_refs (
    ref         uuid        PRIMARY KEY,
    job_id      bigint      NOT NULL,
    state       text        NOT NULL DEFAULT 'unfinished'
                            CHECK (state IN ('unfinished', 'completed', 'discarded', 'cancelled')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

COMMENT ON TABLE job_refs IS
'Jobs others may depend on (outbox.Tx.EnqueueRef): the reference, the job, and how it finished; written by triggers on river_job.';

CREATE TABLE job_waits (
    parent_ref     uuid    NOT NULL,
    child_job_id   bigint  NOT NULL,
    run_on_failure boolean NOT NULL DEFAULT false,
    PRIMARY KEY (parent_ref, child_job_id)
);

CREATE INDEX job_waits_child_job_id_idx ON job_waits (child_job_id);

COMMENT ON TABLE job_waits IS
'One row per unfinished dependency of a pending job (outbox.Tx.EnqueueAfter); deleted when the dependency finishes.';

-- aftercommit_dependency_error is the error a job cancelled for a
-- dependency carries, as River writes its errors.
CREATE FUNCTION aftercommit_dependency_error(p_ref uuid, p_state text) RETURNS jsonb
    LANGUAGE sql
    STABLE
AS $fn$
    SELECT jsonb_build_object('at', now(), 'attempt', 0, 'trace', '',
        'error', CASE WHEN p_state IS NULL THEN 'dependency ' || p_ref || ' is unknown'
                      ELSE 'dependency ' || p_ref || ' was ' || p_state END);
$fn$;

-- aftercommit_job_ref_insert: BEFORE INSERT trigger of river_job.
CREATE FUNCTION aftercommit_job_ref_insert() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path FROM CURRENT
AS $fn$
DECLARE
    uuid_re  constant text := '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$';
    after    jsonb;
    tolerant boolean;
    r        text;
    st       text;
    blocked  integer := 0;
    failed   jsonb;
BEGIN
    after := NEW.metadata -> 'aftercommit_after';
    IF jsonb_typeof(after -> 'refs') = 'array' THEN
        tolerant := coalesce((after ->> 'run_on_failure')::boolean, false);
        FOR r IN SELECT x FROM jsonb_array_elements_text(after -> 'refs') AS x LOOP
            st := NULL;
            IF r ~ uuid_re THEN
                SELECT j.state INTO st FROM job_refs j WHERE j.ref = r::uuid;
            END IF;
            IF st IS NULL THEN
                failed := coalesce(failed, aftercommit_dependency_error(CASE WHEN r ~ uuid_re THEN r::uuid END, NULL));
            ELSIF st = 'unfinished' THEN
                INSERT INTO job_waits (parent_ref, child_job_id, run_on_failure) VALUES (r::uuid, NEW.id, tolerant)
                ON CONFLICT DO NOTHING;
                blocked := blocked + 1;
            ELSIF st <> 'completed' AND NOT tolerant THEN
                failed := coalesce(failed, aftercommit_dependency_error(r::uuid, st));
            END IF;
        END LOOP;
        IF failed IS NOT NULL THEN
            DELETE FROM job_waits w WHERE w.child_job_id = NEW.id;
            NEW.state := 'cancelled';
            NEW.finalized_at := now();
            NEW.errors := coalesce(NEW.errors, '{}') || failed;
            -- Inserted finished: no UPDATE will count it in its batch.
            IF NEW.metadata ? 'aftercommit_batch' THEN
                PERFORM aftercommit_batch_count(NEW, 'cancelled');
            END IF;
        ELSIF blocked > 0 THEN
            NEW.state := 'pending';
        ELSIF NEW.state = 'pending' THEN
            NEW.state := CASE WHEN NEW.scheduled_at > now() THEN 'scheduled' ELSE 'available' END;
        END IF;
    END IF;
    IF coalesce((NEW.metadata ->> 'aftercommit_ref') ~ uuid_re, false) THEN
        INSERT INTO job_refs (ref, job_id, state, finished_at)
        VALUES ((NEW.metadata ->> 'aftercommit_ref')::uuid, NEW.id,
                CASE WHEN NEW.state IN ('completed', 'discarded', 'cancelled') THEN NEW.state::text ELSE 'unfinished' END,
                CASE WHEN NEW.state IN ('completed', 'discarded', 'cancelled') THEN now() END)
        ON CONFLICT (ref) DO NOTHING;
    END IF;
    RETURN NEW;
END
$fn$;

COMMENT ON FUNCTION aftercommit_job_ref_insert() IS
'BEFORE INSERT trigger of river_job: records a job''s reference (aftercommit_ref) and gives a job with dependencies (aftercommit_after) its state: pending, available, or cancelled with the reason.';

-- aftercommit_job_ref_finished: trigger of river_job when a referenced job
-- finishes or is deleted unfinished.
CREATE FUNCTION aftercommit_job_ref_finished() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path FROM CURRENT
AS $fn$
DECLARE
    job river_job;
    st  text;
    rf  uuid;
    w   job_waits;
    q   text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        job := OLD;
        st := 'cancelled';
    ELSE
        job := NEW;
        st := NEW.state::text;
    END IF;
    IF NOT coalesce((job.metadata ->> 'aftercommit_ref') ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$', false) THEN
        RETURN NULL;
    END IF;
    rf := (job.metadata ->> 'aftercommit_ref')::uuid;
    UPDATE job_refs j SET state = st, finished_at = now() WHERE j.ref = rf AND j.state = 'unfinished';
    IF NOT FOUND THEN
        RETURN NULL; -- finished before (a retry of a finished job changes nothing)
    END IF;
    FOR w IN DELETE FROM job_waits x WHERE x.parent_ref = rf RETURNING * LOOP
        IF st = 'completed' OR w.run_on_failure THEN
            IF NOT EXISTS (SELECT FROM job_waits x WHERE x.child_job_id = w.child_job_id) THEN
                UPDATE river_job c
                   SET state = CASE WHEN c.scheduled_at > now() THEN 'scheduled' ELSE 'available' END::river_job_state
                 WHERE c.id = w.child_job_id AND c.state = 'pending'
                RETURNING CASE WHEN c.state = 'available' THEN c.queue END INTO q;
                IF q IS NOT NULL THEN
                    PERFORM pg_notify(current_schema() || '.river_insert', json_build_object('queue', q)::text);
                END IF;
            END IF;
        ELSE
            DELETE FROM job_waits x WHERE x.child_job_id = w.child_job_id;
            -- Fires this trigger again for the child's own dependents.
            UPDATE river_job c
               SET state = 'cancelled', finalized_at = now(),
                   errors = coalesce(c.errors, '{}') || aftercommit_dependency_error(rf, st)
             WHERE c.id = w.child_job_id AND c.state = 'pending';
        END IF;
    END LOOP;
    RETURN NULL;
END
$fn$;

COMMENT ON FUNCTION aftercommit_job_ref_finished() IS
'Trigger of river_job: records how a referenced job finished and releases (or cancels, with the reason) the jobs that waited for it, in the same transaction.';

CREATE TRIGGER river_job_ref_insert
    BEFORE INSERT ON river_job
    FOR EACH ROW
    WHEN (NEW.metadata ? 'aftercommit_ref' OR NEW.metadata ? 'aftercommit_after')
    EXECUTE FUNCTION aftercommit_job_ref_insert();

CREATE TRIGGER river_job_ref_finish
    AFTER UPDATE OF state ON river_job
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state
          AND NEW.state IN ('completed', 'discarded', 'cancelled')
          AND NEW.metadata ? 'aftercommit_ref')
    EXECUTE FUNCTION aftercommit_job_ref_finished();

CREATE TRIGGER river_job_ref_leave
    AFTER DELETE ON river_job
    FOR EACH ROW
    WHEN (OLD.state NOT IN ('completed', 'discarded', 'cancelled') AND OLD.metadata ? 'aftercommit_ref')
    EXECUTE FUNCTION aftercommit_job_ref_finished();

COMMENT ON TRIGGER river_job_ref_insert ON river_job IS
'Records job references and gives jobs with dependencies their state (see aftercommit_job_ref_insert).';
COMMENT ON TRIGGER river_job_ref_finish ON river_job IS
'Releases or cancels the jobs waiting for a referenced job that finished (see aftercommit_job_ref_finished).';
COMMENT ON TRIGGER river_job_ref_leave ON river_job IS
'A referenced job deleted before it finished counts as cancelled for its dependents.';

-- job_dependency_status: the jobs waiting for others, with what they wait
-- for.
CREATE VIEW job_dependency_status AS
SELECT w.child_job_id AS job_id, j.kind, j.queue, j.state,
       array_agg(w.parent_ref ORDER BY w.parent_ref) AS waiting_for,
       array_agg(p.job_id ORDER BY w.parent_ref) AS waiting_for_job_ids,
       bool_or(w.run_on_failure) AS run_on_failure,
       j.created_at
  FROM job_waits w
  JOIN job_refs p ON p.ref = w.parent_ref
  LEFT JOIN river_job j ON j.id = w.child_job_id
 GROUP BY w.child_job_id, j.kind, j.queue, j.state, j.created_at;

COMMENT ON VIEW job_dependency_status IS
'Jobs waiting for their dependencies (outbox.Tx.EnqueueAfter): the references and job IDs they still wait for.';

-- job_fan_in_prune deletes, at most p_limit of each, the job batches that
-- finished more than p_older_than ago (their job_batch_members with them)
-- and the references of jobs that finished that long ago: the retention of
-- fan-in, run by the events pruner (jobs.RegisterEventPruner) with the
-- events' retention. A job enqueued later that waits for a pruned reference
-- finds it unknown and is cancelled. Open and running batches, and the
-- references of unfinished jobs, are never deleted.
CREATE FUNCTION job_fan_in_prune(p_older_than interval, p_limit integer)
RETURNS TABLE (batches bigint, refs bigint)
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path FROM CURRENT
AS $fn$
BEGIN
    DELETE FROM job_batches b
     WHERE b.id IN (SELECT x.id FROM job_batches x
                     WHERE x.finished_at < now() - p_older_than
                     ORDER BY x.finished_at LIMIT p_limit);
    GET DIAGNOSTICS batches = ROW_COUNT;
    DELETE FROM job_refs r
     WHERE r.ref IN (SELECT x.ref FROM job_refs x
                      WHERE x.state <> 'unfinished' AND x.finished_at < now() - p_older_than
                      ORDER BY x.finished_at LIMIT p_limit);
    GET DIAGNOSTICS refs = ROW_COUNT;
    RETURN NEXT;
END
$fn$;

COMMENT ON FUNCTION job_fan_in_prune(interval, integer) IS
'Deletes at most p_limit finished job batches (with their members) and p_limit references of finished jobs older than p_older_than; run by the events pruner.';

-- The triggers' functions run with their owner's rights and are called by
-- the triggers only; the pruner by the worker role (granted below).
REVOKE EXECUTE ON FUNCTION aftercommit_job_ref_insert() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION aftercommit_job_ref_finished() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION job_fan_in_prune(interval, integer) FROM PUBLIC;

INSERT INTO aftercommit_role_grants (role_kind, on_object, privileges) VALUES
    ('app', 'TABLE job_dependency_status', 'SELECT'),
    ('worker', 'TABLE job_refs', 'SELECT'),
    ('worker', 'TABLE job_waits', 'SELECT'),
    ('worker', 'TABLE job_dependency_status', 'SELECT'),
    ('worker', 'FUNCTION job_fan_in_prune(interval, integer)', 'EXECUTE');

SELECT aftercommit_apply_grants();
