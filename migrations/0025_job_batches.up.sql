-- Job batches (fan-in): N member jobs of any kinds, enqueued in a business
-- transaction (outbox.Tx.NewJobBatch), and a callback job that runs once
-- every member has finished: on_success when all completed, on_failure when
-- any was discarded or cancelled (or deleted before it finished).
--
-- expected counts the members enqueued, in the transactions that enqueued
-- them (job_batch_add_many, sent with the outbox's flush), so it is known
-- before any member can run; a batch created open takes members from later
-- transactions too (a member job's, say) until it is sealed. A member's
-- finish is counted by a trigger on river_job in the transaction that
-- finishes it — River's completer's, or the worker's own with
-- JobCompleteTx — and the finish that makes the count whole inserts the
-- callback job in that same transaction: a crash between the two cannot
-- happen. Two members finishing at once update the batch's row one after
-- the other (its row lock), so exactly one of them sees the count whole.
--
--   SELECT * FROM job_batch_status;
CREATE TABLE job_batches (
    id              uuid        PRIMARY KEY,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sealed          boolean     NOT NULL DEFAULT false,
    expected        integer     NOT NULL DEFAULT 0 CHECK (expected >= 0),
    completed       integer     NOT NULL DEFAULT 0,
    discarded       integer     NOT NULL DEFAULT 0,
    cancelled       integer     NOT NULL DEFAULT 0,
    on_success      jsonb,
    on_failure      jsonb,
    finished_at     timestamptz,
    callback_job_id bigint
);

COMMENT ON TABLE job_batches IS
'Job batches (outbox.Tx.NewJobBatch): expected members (counted when enqueued), completed/discarded/cancelled (counted when they finish, by a trigger on river_job), the callbacks (kind, args, queue, priority, max_attempts, tags as JSON), and, once sealed and every member finished, finished_at and the callback job inserted.';

-- One row per finished member, written when it finishes: counted once (a
-- job retried after it finished is not counted again), and its output
-- (river.RecordOutput) kept for the callback even after River's cleaner
-- deleted the job.
CREATE TABLE job_batch_members (
    job_id      bigint      PRIMARY KEY,
    batch_id    uuid        NOT NULL REFERENCES job_batches (id) ON DELETE CASCADE,
    kind        text        NOT NULL,
    state       text        NOT NULL,
    output      jsonb,
    finished_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX job_batch_members_batch_id_idx ON job_batch_members (batch_id);

COMMENT ON TABLE job_batch_members IS
'The finished members of job batches: state (completed, discarded, cancelled) and output (river.RecordOutput) at their finish.';

-- aftercommit_batch_fire finishes batch b (sealed, every member finished):
-- inserts its callback job, available now, with the batch's counts in its
-- metadata (aftercommit_batch_done), and wakes the callback's queue. The
-- callback is scheduled at the batch's creation: River fetches by
-- scheduled_at, so in a busy queue it goes ahead of the jobs enqueued after
-- its batch, not behind every job waiting at its finish.
CREATE FUNCTION aftercommit_batch_fire(b job_batches) RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path FROM CURRENT
AS $fn$
DECLARE
    cb  jsonb;
    q   text;
    jid bigint;
    at  timestamptz := clock_timestamp();
BEGIN
    cb := CASE WHEN b.discarded + b.cancelled = 0 THEN b.on_success ELSE b.on_failure END;
    IF cb IS NOT NULL THEN
        q := coalesce(cb ->> 'queue', 'default');
        INSERT INTO river_job (args, kind, max_attempts, metadata, priority, queue, state, scheduled_at, tags)
        VALUES (cb -> 'args', cb ->> 'kind', coalesce((cb ->> 'max_attempts')::smallint, 25),
                jsonb_build_object('aftercommit_batch_done', jsonb_build_object(
                    'id', b.id, 'expected', b.expected, 'completed', b.completed,
                    'discarded', b.discarded, 'cancelled', b.cancelled, 'finished_at', at)),
                coalesce((cb ->> 'priority')::smallint, 1), q, 'available', least(b.created_at, now()),
                ARRAY(SELECT t FROM jsonb_array_elements_text(coalesce(cb -> 'tags', '[]')) AS t))
        RETURNING id INTO jid;
        PERFORM pg_notify(current_schema() || '.river_insert', json_build_object('queue', q)::text);
    END IF;
    UPDATE job_batches x SET finished_at = at, callback_job_id = jid WHERE x.id = b.id;
END
$fn$;

COMMENT ON FUNCTION aftercommit_batch_fire(job_batches) IS
'Finishes a sealed job batch whose members all finished: inserts the on_success or on_failure callback job with the counts in its metadata (aftercommit_batch_done).';

-- job_batch_add_many records, for the i-th batch, p_members[i] more members
-- enqueued in the calling transaction: it creates the batch (p_create[i],
-- with its callbacks) or adds to an open one, and seals it when p_seal[i].
-- A batch sealed, and every member of it finished, is finished at once
-- (a sealed batch of no members, or a seal after the last finish).
-- Errors: an unknown batch (P0002), members added to a sealed batch (55000).
CREATE FUNCTION job_batch_add_many(
    p_id         uuid[],
    p_members    integer[],
    p_create     boolean[],
    p_seal       boolean[],
    p_on_success jsonb[],
    p_on_failure jsonb[]
) RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path FROM CURRENT
AS $fn$
DECLARE
    i integer;
    b job_batches;
BEGIN
    FOR i IN SELECT u.i FROM unnest(p_id) WITH ORDINALITY AS u(id, i) ORDER BY u.id LOOP
        IF p_members[i] IS NULL OR p_members[i] < 0 THEN
            RAISE EXCEPTION 'job batch %: members must be 0 or more', p_id[i] USING ERRCODE = '22023';
        END IF;
        IF p_create[i] THEN
            INSERT INTO job_batches (id, expected, sealed, on_success, on_failure)
            VALUES (p_id[i], p_members[i], p_seal[i], p_on_success[i], p_on_failure[i])
            RETURNING * INTO b;
        ELSE
            SELECT * INTO b FROM job_batches x WHERE x.id = p_id[i] FOR NO KEY UPDATE;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'job batch % does not exist', p_id[i] USING ERRCODE = 'P0002';
            END IF;
            IF b.sealed AND p_members[i] > 0 THEN
                RAISE EXCEPTION 'job batch % is sealed', p_id[i] USING ERRCODE = '55000';
            END IF;
            UPDATE job_batches x SET expected = x.expected + p_members[i], sealed = x.sealed OR p_seal[i]
             WHERE x.id = p_id[i]
            RETURNING * INTO b;
        END IF;
        IF b.sealed AND b.finished_at IS NULL AND b.completed + b.discarded + b.cancelled >= b.expected THEN
            PERFORM aftercommit_batch_fire(b);
        END IF;
    END LOOP;
END
$fn$;

COMMENT ON FUNCTION job_batch_add_many(uuid[], integer[], boolean[], boolean[], jsonb[], jsonb[]) IS
'Creates job batches or adds members to open ones, and seals them; sent by the outbox with the flush of the transaction that enqueues the members.';

-- aftercommit_batch_count counts job's finish as st (completed,
-- discarded, cancelled) in its batch (metadata aftercommit_batch), once,
-- and finishes the batch when that makes the sealed batch whole.
CREATE FUNCTION aftercommit_batch_count(job river_job, st text) RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path FROM CURRENT
AS $fn$
DECLARE
    bid uuid;
    b   job_batches;
BEGIN
    IF NOT coalesce((job.metadata ->> 'aftercommit_batch') ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$', false) THEN
        RETURN;
    END IF;
    bid := (job.metadata ->> 'aftercommit_batch')::uuid;
    -- The member's row first: a job counted already (retried after it
    -- finished) is not counted again.
    INSERT INTO job_batch_members (job_id, batch_id, kind, state, output)
    SELECT job.id, bid, job.kind, st, job.metadata -> 'output'
     WHERE EXISTS (SELECT FROM job_batches x WHERE x.id = bid)
    ON CONFLICT (job_id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE job_batches x
       SET completed = x.completed + (st = 'completed')::integer,
           discarded = x.discarded + (st = 'discarded')::integer,
           cancelled = x.cancelled + (st = 'cancelled')::integer
     WHERE x.id = bid
    RETURNING * INTO b;
    IF b.sealed AND b.finished_at IS NULL AND b.completed + b.discarded + b.cancelled >= b.expected THEN
        PERFORM aftercommit_batch_fire(b);
    END IF;
END
$fn$;

COMMENT ON FUNCTION aftercommit_batch_count(river_job, text) IS
'Counts a job batch member''s finish once and, when it makes the sealed batch whole, inserts the callback in the same transaction.';

-- aftercommit_batch_member_finished: trigger of river_job, when a job of a
-- batch (metadata aftercommit_batch) finishes or is deleted unfinished.
CREATE FUNCTION aftercommit_batch_member_finished() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path FROM CURRENT
AS $fn$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM aftercommit_batch_count(OLD, 'cancelled');
    ELSE
        PERFORM aftercommit_batch_count(NEW, NEW.state::text);
    END IF;
    RETURN NULL;
END
$fn$;

COMMENT ON FUNCTION aftercommit_batch_member_finished() IS
'Trigger of river_job: counts a job batch member''s finish (or deletion before it finished) and, when it makes the sealed batch whole, inserts the callback in the same transaction.';

CREATE TRIGGER river_job_batch_finish
    AFTER UPDATE OF state ON river_job
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state
          AND NEW.state IN ('completed', 'discarded', 'cancelled')
          AND NEW.metadata ? 'aftercommit_batch')
    EXECUTE FUNCTION aftercommit_batch_member_finished();

CREATE TRIGGER river_job_batch_leave
    AFTER DELETE ON river_job
    FOR EACH ROW
    WHEN (OLD.state NOT IN ('completed', 'discarded', 'cancelled') AND OLD.metadata ? 'aftercommit_batch')
    EXECUTE FUNCTION aftercommit_batch_member_finished();

COMMENT ON TRIGGER river_job_batch_finish ON river_job IS
'Counts a job batch member''s finish (see aftercommit_batch_member_finished).';
COMMENT ON TRIGGER river_job_batch_leave ON river_job IS
'Counts a job batch member deleted before it finished as cancelled.';

-- job_batch_status: one row per batch. state: open (members may still be
-- added), running (sealed, members unfinished), succeeded, failed (a member
-- discarded or cancelled); the callback job and its state.
CREATE VIEW job_batch_status AS
SELECT b.id, b.created_at, b.sealed, b.expected,
       b.expected - b.completed - b.discarded - b.cancelled AS unfinished,
       b.completed, b.discarded, b.cancelled,
       CASE WHEN b.finished_at IS NULL THEN CASE WHEN b.sealed THEN 'running' ELSE 'open' END
            WHEN b.discarded + b.cancelled = 0 THEN 'succeeded'
            ELSE 'failed' END AS state,
       b.finished_at, b.callback_job_id, j.kind AS callback_kind, j.state AS callback_state
  FROM job_batches b
  LEFT JOIN river_job j ON j.id = b.callback_job_id;

COMMENT ON VIEW job_batch_status IS
'Per job batch: expected members, unfinished, completed, discarded, cancelled; state (open, running, succeeded, failed); the callback job and its state.';

-- Run with their owner's rights, by the triggers and job_batch_add_many
-- only: nobody calls them to count a finish or insert a callback.
REVOKE EXECUTE ON FUNCTION aftercommit_batch_fire(job_batches) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION aftercommit_batch_count(river_job, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION aftercommit_batch_member_finished() FROM PUBLIC;

INSERT INTO aftercommit_role_grants (role_kind, on_object, privileges) VALUES
    ('app', 'TABLE job_batch_status', 'SELECT'),
    ('worker', 'TABLE job_batches', 'SELECT'),
    ('worker', 'TABLE job_batch_members', 'SELECT'),
    ('worker', 'TABLE job_batch_status', 'SELECT');

SELECT aftercommit_apply_grants();
