-- Sequences: jobs with the same sequence (namespace, key) run one at a time,
-- in the order their transactions committed; other keys are unaffected.
--
-- How the order is made. A job of a sequenced kind reaches river_job only
-- through the outbox table (outbox_jobs), whose rows a transaction writes in
-- its flush, right before its COMMIT. Two transactions that conflict (one
-- waits for a lock the other holds: the checkout's row, the payer's row)
-- therefore flush in their commit order, and their outbox ids follow it.
-- The relay (outbox/relay) inserts a sequenced row's job as a River
-- 'pending' job, which no producer fetches, and notes it in
-- job_sequence_inbox. job_sequence_append() then places the noted jobs in
-- their sequences in outbox id order, but only those older than every row
-- still in outbox_jobs (committed and not yet moved, or being moved by a
-- relay right now): a job is placed only once every job that committed
-- before it was placed. Transactions that do not conflict have no commit
-- order to keep; they get their outbox ids' order.
--
-- How a sequence runs. The member at the head of its sequence (no earlier
-- member unfinished) is made available as it is placed; every other one
-- stays pending. When the head finishes — completed, discarded or
-- cancelled, by JobCompleteTx, River's completer, its rescuer or an
-- operator — the trigger below makes the next member available in that
-- same transaction and wakes the producers of its queue (River's insert
-- notification). A head that fails and will retry holds its sequence (the
-- default) or, for a sequence whose members say "continue", releases it:
-- the next member starts, and the failed one retries on its own.
--
-- Nothing polls: a pending member costs nothing until its turn.

-- job_sequence_inbox: sequenced jobs the relay inserted (pending) and
-- job_sequence_append() has not placed yet.
CREATE TABLE job_sequence_inbox (
    outbox_id bigint PRIMARY KEY, -- the outbox_jobs row the job came from
    namespace text   NOT NULL CHECK (length(namespace) BETWEEN 1 AND 255),
    seq_key   text   NOT NULL CHECK (length(seq_key) BETWEEN 1 AND 255),
    job_id    bigint NOT NULL UNIQUE
);

COMMENT ON TABLE job_sequence_inbox IS
'Sequenced jobs inserted by the relay (pending) and not yet placed in their sequence by job_sequence_append(), which places them in outbox id order once no older outbox row is left.';

-- job_sequences: one row per sequence with unfinished members, locked by
-- job_sequence_append() and by the trigger that advances it, so the two
-- never miss each other. Deleted when its last member finishes.
CREATE TABLE job_sequences (
    namespace  text        NOT NULL CHECK (length(namespace) BETWEEN 1 AND 255),
    seq_key    text        NOT NULL CHECK (length(seq_key) BETWEEN 1 AND 255),
    -- next_pos: the position the next appended member gets.
    next_pos   bigint      NOT NULL DEFAULT 0 CHECK (next_pos >= 0),
    -- head_pos: the member that runs now (available, running, scheduled or
    -- retrying); NULL while no member may run.
    head_pos   bigint,
    -- head_since: when head_pos became the head.
    head_since timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, seq_key)
) WITH (fillfactor = 70);

COMMENT ON TABLE job_sequences IS
'One row per job sequence with unfinished members: next_pos is the next member''s position, head_pos the member allowed to run (NULL: none). Written by job_sequence_append() and the river_job_sequence triggers only. See job_sequence_status.';

-- job_sequence_members: the unfinished members, in order. A member leaves
-- when its job finishes (or is deleted).
CREATE TABLE job_sequence_members (
    namespace text   NOT NULL,
    seq_key   text   NOT NULL,
    pos       bigint NOT NULL,
    job_id    bigint NOT NULL UNIQUE,
    PRIMARY KEY (namespace, seq_key, pos)
);

COMMENT ON TABLE job_sequence_members IS
'The unfinished jobs of each sequence (job_sequences), by position. Written by job_sequence_append() and the river_job_sequence triggers only.';

-- job_sequence_append: places the noted jobs (job_sequence_inbox) in their
-- sequences, oldest outbox id first, up to p_limit of them, but only those
-- older than every row left in outbox_jobs; makes each one that lands at
-- the head of its sequence available and wakes its queue. One runs at a
-- time per schema. The relay calls it after every batch and on its poll;
-- an operator may call it too. Returns the number placed. It runs with its
-- owner's rights: the worker role executes it, and writes no sequence
-- table itself.
CREATE FUNCTION job_sequence_append(p_limit integer DEFAULT 10000) RETURNS integer
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path FROM CURRENT
AS $fn$
DECLARE
    frontier bigint;
    placed   integer;
    queues   text[];
    q        text;
BEGIN
    IF NOT EXISTS (SELECT FROM job_sequence_inbox) THEN
        RETURN 0;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended(current_schema() || '.job_sequence_append', 0));
    -- Taken after the lock: rows another relay moved and noted since are
    -- seen, rows it is moving now still count as left.
    SELECT min(id) INTO frontier FROM outbox_jobs;

    WITH taken AS (
        DELETE FROM job_sequence_inbox i
         WHERE i.outbox_id IN (SELECT x.outbox_id FROM job_sequence_inbox x
                                WHERE frontier IS NULL OR x.outbox_id < frontier
                                ORDER BY x.outbox_id LIMIT p_limit)
        RETURNING i.outbox_id, i.namespace, i.seq_key, i.job_id),
    ranked AS (
        SELECT t.*, row_number() OVER w - 1 AS rn, count(*) OVER (PARTITION BY t.namespace, t.seq_key) AS cnt
          FROM taken t WINDOW w AS (PARTITION BY t.namespace, t.seq_key ORDER BY t.outbox_id)),
    claimed AS (
        -- In key order, as every writer of job_sequences locks.
        INSERT INTO job_sequences AS s (namespace, seq_key, next_pos, head_pos, head_since)
        SELECT DISTINCT r.namespace, r.seq_key, r.cnt, 0::bigint, now() FROM ranked r
         ORDER BY r.namespace, r.seq_key
        ON CONFLICT (namespace, seq_key) DO UPDATE
           SET next_pos = s.next_pos + EXCLUDED.next_pos,
               head_pos = coalesce(s.head_pos, s.next_pos),
               head_since = CASE WHEN s.head_pos IS NULL THEN now() ELSE s.head_since END
        RETURNING s.namespace, s.seq_key, s.next_pos, s.head_pos),
    placed_rows AS (
        SELECT r.namespace, r.seq_key, r.job_id, c.next_pos - r.cnt + r.rn AS pos, c.head_pos
          FROM ranked r JOIN claimed c ON c.namespace = r.namespace AND c.seq_key = r.seq_key),
    members AS (
        INSERT INTO job_sequence_members (namespace, seq_key, pos, job_id)
        SELECT p.namespace, p.seq_key, p.pos, p.job_id FROM placed_rows p),
    heads AS (
        UPDATE river_job j
           SET state = CASE WHEN j.scheduled_at > now() THEN 'scheduled' ELSE 'available' END::river_job_state
          FROM placed_rows p
         WHERE j.id = p.job_id AND p.pos = p.head_pos AND j.state = 'pending'
        RETURNING j.queue, j.state)
    SELECT (SELECT count(*) FROM placed_rows),
           (SELECT array_agg(DISTINCT h.queue) FROM heads h WHERE h.state = 'available')
      INTO placed, queues;

    FOREACH q IN ARRAY coalesce(queues, '{}') LOOP
        -- River's insert notification (internal/riverseam.WakeSQL).
        PERFORM pg_notify(current_schema() || '.river_insert', json_build_object('queue', q)::text);
    END LOOP;
    RETURN placed;
END
$fn$;

COMMENT ON FUNCTION job_sequence_append(integer) IS
'Places the jobs the relay noted in job_sequence_inbox in their sequences, oldest outbox id first, only those older than every row left in outbox_jobs; makes new heads available. Returns the number placed.';

-- aftercommit_sequence_advance: the trigger function. The job's sequence is
-- in its metadata: {"aftercommit_seq": {"ns": …, "key": …, "continue":
-- true|false, "outbox_id": …}}; its place in job_sequence_members. It runs with its owner's rights (whoever
-- finishes a job need not write the sequence tables), on the tables of the
-- schema this migration ran in.
CREATE FUNCTION aftercommit_sequence_advance() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path FROM CURRENT
AS $fn$
DECLARE
    job      river_job;
    seq      jsonb;
    ns       text;
    k        text;
    p        bigint;
    finished boolean;
    head     bigint;
    nxt      record;
    q        text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        job := OLD;
        finished := true;
    ELSE
        job := NEW;
        finished := NEW.state IN ('completed', 'discarded', 'cancelled');
        -- A failed attempt (the WHEN clause let only that through
        -- besides a finish) releases only a "continue" sequence.
        IF NOT finished AND NOT coalesce((NEW.metadata -> 'aftercommit_seq' ->> 'continue')::boolean, false) THEN
            RETURN NULL;
        END IF;
    END IF;
    seq := job.metadata -> 'aftercommit_seq';
    ns := seq ->> 'ns';
    k := seq ->> 'key';
    IF ns IS NULL OR k IS NULL THEN
        RETURN NULL;
    END IF;
    IF finished THEN
        -- A job not placed yet only leaves the inbox (if job_sequence_append
        -- holds its row, this waits, and then finds it placed).
        DELETE FROM job_sequence_inbox i WHERE i.job_id = job.id;
        IF FOUND THEN
            RETURN NULL;
        END IF;
    END IF;

    SELECT s.head_pos INTO head FROM job_sequences s WHERE s.namespace = ns AND s.seq_key = k FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT m.pos INTO p FROM job_sequence_members m WHERE m.job_id = job.id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF finished THEN
        DELETE FROM job_sequence_members m WHERE m.job_id = job.id;
    END IF;

    IF head IS DISTINCT FROM p THEN
        -- Not the head: a pending member left, or a released one ended.
        IF head IS NULL AND NOT EXISTS (SELECT FROM job_sequence_members m WHERE m.namespace = ns AND m.seq_key = k) THEN
            DELETE FROM job_sequences s WHERE s.namespace = ns AND s.seq_key = k;
        END IF;
        RETURN NULL;
    END IF;

    -- The head finished, or failed in a "continue" sequence: the next
    -- member becomes the head.
    SELECT m.pos, m.job_id INTO nxt
      FROM job_sequence_members m
     WHERE m.namespace = ns AND m.seq_key = k AND m.pos > p
     ORDER BY m.pos LIMIT 1;
    IF FOUND THEN
        UPDATE river_job j
           SET state = CASE WHEN j.scheduled_at > now() THEN 'scheduled' ELSE 'available' END::river_job_state
         WHERE j.id = nxt.job_id AND j.state = 'pending'
        RETURNING CASE WHEN j.state = 'available' THEN j.queue END INTO q;
        UPDATE job_sequences s SET head_pos = nxt.pos, head_since = now()
         WHERE s.namespace = ns AND s.seq_key = k;
        IF q IS NOT NULL THEN
            -- River's insert notification (internal/riverseam.WakeSQL):
            -- the queue's producers fetch now, in every process.
            PERFORM pg_notify(current_schema() || '.river_insert', json_build_object('queue', q)::text);
        END IF;
    ELSIF EXISTS (SELECT FROM job_sequence_members m WHERE m.namespace = ns AND m.seq_key = k) THEN
        -- Only released members, retrying on their own, are left.
        UPDATE job_sequences s SET head_pos = NULL, head_since = NULL
         WHERE s.namespace = ns AND s.seq_key = k;
    ELSE
        DELETE FROM job_sequences s WHERE s.namespace = ns AND s.seq_key = k;
    END IF;
    RETURN NULL;
END
$fn$;

COMMENT ON FUNCTION aftercommit_sequence_advance() IS
'Trigger of river_job: when a sequence member finishes (or fails, in a "continue" sequence), makes the next member available in the same transaction and notifies its queue.';

-- The WHEN clauses keep the cost off every other job: states are compared
-- first, the metadata looked at only for a finish or a failed attempt.
-- A failed attempt is running → available/retryable with one more error
-- (a snooze adds none).
CREATE TRIGGER river_job_sequence_advance
    AFTER UPDATE OF state ON river_job
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state
          AND (NEW.state IN ('completed', 'discarded', 'cancelled')
               OR (OLD.state = 'running' AND NEW.state IN ('available', 'retryable')
                   AND coalesce(cardinality(NEW.errors), 0) > coalesce(cardinality(OLD.errors), 0)))
          AND NEW.metadata ? 'aftercommit_seq')
    EXECUTE FUNCTION aftercommit_sequence_advance();

CREATE TRIGGER river_job_sequence_leave
    AFTER DELETE ON river_job
    FOR EACH ROW
    WHEN (OLD.state NOT IN ('completed', 'discarded', 'cancelled') AND OLD.metadata ? 'aftercommit_seq')
    EXECUTE FUNCTION aftercommit_sequence_advance();

COMMENT ON TRIGGER river_job_sequence_advance ON river_job IS
'Advances a job sequence when its head finishes (see aftercommit_sequence_advance).';
COMMENT ON TRIGGER river_job_sequence_leave ON river_job IS
'Removes a deleted unfinished job from its sequence, advancing it if it was the head.';

-- job_sequence_status: one row per sequence with unfinished members. held:
-- the head failed and waits for its retry (the sequence waits with it);
-- stuck: the head failed at least 3 times, or the
-- sequence has waiting members and no head, or the head's job is gone or
-- finished (which the trigger never leaves).
CREATE VIEW job_sequence_status AS
SELECT s.namespace,
       s.seq_key,
       (SELECT count(*) FROM job_sequence_members m
         WHERE m.namespace = s.namespace AND m.seq_key = s.seq_key AND m.pos > coalesce(s.head_pos, -1)) AS waiting,
       s.head_pos,
       h.job_id AS head_job_id,
       j.kind AS head_kind,
       j.state AS head_state,
       j.attempt AS head_attempt,
       coalesce(cardinality(j.errors), 0) AS head_errors,
       j.errors[cardinality(j.errors)] ->> 'error' AS head_last_error,
       s.head_since,
       now() - s.head_since AS head_age,
       (j.state IN ('retryable', 'available', 'scheduled') AND coalesce(cardinality(j.errors), 0) > 0) AS held,
       (coalesce(cardinality(j.errors), 0) >= 3
        OR (s.head_pos IS NULL AND EXISTS (SELECT FROM job_sequence_members m
                                            WHERE m.namespace = s.namespace AND m.seq_key = s.seq_key))
        OR (s.head_pos IS NOT NULL AND (j.id IS NULL OR j.state IN ('completed', 'discarded', 'cancelled', 'pending')))) AS stuck
  FROM job_sequences s
  LEFT JOIN job_sequence_members h
         ON h.namespace = s.namespace AND h.seq_key = s.seq_key AND h.pos = s.head_pos
  LEFT JOIN river_job j ON j.id = h.job_id;

COMMENT ON VIEW job_sequence_status IS
'Per job sequence with unfinished members: waiting members behind the head, the head job (kind, state, attempt, errors, last error, since when), held (the head failed and waits for its retry), stuck (held for 3+ errors, or no runnable head while members wait).';

REVOKE EXECUTE ON FUNCTION job_sequence_append(integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION aftercommit_sequence_advance() FROM PUBLIC;

INSERT INTO aftercommit_role_grants (role_kind, on_object, privileges) VALUES
    ('app', 'TABLE job_sequence_status', 'SELECT'),
    ('worker', 'FUNCTION job_sequence_append(integer)', 'EXECUTE'),
    ('worker', 'TABLE job_sequence_inbox', 'SELECT, INSERT'),
    ('worker', 'TABLE job_sequences', 'SELECT'),
    ('worker', 'TABLE job_sequence_members', 'SELECT'),
    ('worker', 'TABLE job_sequence_status', 'SELECT');

SELECT aftercommit_apply_grants();
