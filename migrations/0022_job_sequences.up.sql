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
--
-- A sequence has a width: how many of its members may be released
-- (available, running or retrying) at once. Sequences proper have width 1.
-- A wider one is a fair share (jobs.FairShare): at most width jobs of one
-- tenant are ever in the queue ahead of another tenant's, whatever the
-- tenant's backlog; they start in commit order, and finish in any order.

-- job_sequence_inbox: sequenced jobs the relay inserted (pending) and
-- job_sequence_append() has not placed yet.
CREATE TABLE job_sequence_inbox (
    outbox_id bigint  PRIMARY KEY, -- the outbox_jobs row the job came from
    namespace text    NOT NULL CHECK (length(namespace) BETWEEN 1 AND 255),
    seq_key   text    NOT NULL CHECK (length(seq_key) BETWEEN 1 AND 255),
    width     integer NOT NULL CHECK (width BETWEEN 1 AND 10000),
    job_id    bigint  NOT NULL UNIQUE
);

COMMENT ON TABLE job_sequence_inbox IS
'Sequenced jobs inserted by the relay (pending) and not yet placed in their sequence by job_sequence_append(), which places them in outbox id order once no older outbox row is left.';

-- job_sequences: one row per sequence with unfinished members, locked by
-- job_sequence_append() and by the trigger that advances it, so the two
-- never miss each other. Deleted when its last member finishes.
--
-- Members before release_pos are released (available, running, retrying)
-- or detached (a "continue" member that failed and retries on its own);
-- members from release_pos on are pending. released counts the released
-- members that are not detached; it is below width only when no member is
-- pending.
CREATE TABLE job_sequences (
    namespace    text        NOT NULL CHECK (length(namespace) BETWEEN 1 AND 255),
    seq_key      text        NOT NULL CHECK (length(seq_key) BETWEEN 1 AND 255),
    width        integer     NOT NULL DEFAULT 1 CHECK (width BETWEEN 1 AND 10000),
    next_pos     bigint      NOT NULL DEFAULT 0 CHECK (next_pos >= 0),
    release_pos  bigint      NOT NULL DEFAULT 0 CHECK (release_pos BETWEEN 0 AND next_pos),
    released     integer     NOT NULL DEFAULT 0 CHECK (released >= 0),
    -- detached: members that failed in a "continue" sequence and retry on
    -- their own. The sequence is empty when released, detached and the
    -- pending members (release_pos to next_pos) are none.
    detached     integer     NOT NULL DEFAULT 0 CHECK (detached >= 0),
    -- released_at: the latest release.
    released_at  timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, seq_key)
) WITH (fillfactor = 70);

COMMENT ON TABLE job_sequences IS
'One row per job sequence (or fair share) with unfinished members: members before release_pos are released, the rest pending; released counts those that run now (at most width). Written by job_sequence_append() and the river_job_sequence triggers only. See job_sequence_status.';

-- job_sequence_members: the unfinished members of each sequence, by
-- position. A member leaves when its job finishes (or is deleted).
CREATE TABLE job_sequence_members (
    namespace text    NOT NULL,
    seq_key   text    NOT NULL,
    pos       bigint  NOT NULL,
    job_id    bigint  NOT NULL UNIQUE,
    detached  boolean NOT NULL DEFAULT false,
    PRIMARY KEY (namespace, seq_key, pos)
);

COMMENT ON TABLE job_sequence_members IS
'The unfinished jobs of each sequence (job_sequences), by position; detached: a "continue" member that failed and retries outside the sequence. Written by job_sequence_append() and the river_job_sequence triggers only.';

-- aftercommit_sequence_release: writes seq, the row of a sequence the
-- caller has locked and changed, after releasing its pending members,
-- oldest first, until width of them run,
-- and wakes their queues, but those named by the setting
-- aftercommit.sequence_wakes (comma-separated: jobs' completion names the
-- completed jobs' queues and wakes them itself once committed). A released job's scheduled_at becomes the
-- release (unless it lies ahead): River fetches by scheduled_at, so a job
-- released now queues behind the jobs of other keys that were ready before
-- it, as a job inserted now would, and the queue latency River and the
-- views report is the time it waited once it could run.
CREATE FUNCTION aftercommit_sequence_release(seq job_sequences) RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path FROM CURRENT
AS $fn$
DECLARE
    m      record;
    q      text;
    queues text[] := '{}';
BEGIN
    IF seq.released < seq.width AND seq.release_pos < seq.next_pos THEN
        FOR m IN SELECT x.pos, x.job_id FROM job_sequence_members x
                  WHERE x.namespace = seq.namespace AND x.seq_key = seq.seq_key AND x.pos >= seq.release_pos
                  ORDER BY x.pos LIMIT seq.width - seq.released LOOP
            UPDATE river_job j
               SET state = CASE WHEN j.scheduled_at > now() THEN 'scheduled' ELSE 'available' END::river_job_state,
                   scheduled_at = greatest(j.scheduled_at, now())
             WHERE j.id = m.job_id AND j.state = 'pending'
            RETURNING CASE WHEN j.state = 'available' THEN j.queue END INTO q;
            IF q IS NOT NULL AND NOT q = ANY (queues) THEN
                queues := queues || q;
            END IF;
            seq.released := seq.released + 1;
            seq.release_pos := m.pos + 1;
            seq.released_at := now();
        END LOOP;
        -- No pending member left: the next one appended starts at once.
        IF seq.released < seq.width THEN
            seq.release_pos := seq.next_pos;
        END IF;
    END IF;
    -- One write of the row, whatever the caller changed in it.
    UPDATE job_sequences s
       SET released = seq.released, detached = seq.detached, release_pos = seq.release_pos, released_at = seq.released_at
     WHERE s.namespace = seq.namespace AND s.seq_key = seq.seq_key;
    FOREACH q IN ARRAY queues LOOP
        -- River's insert notification (internal/riverseam.WakeSQL): the
        -- queue's producers fetch now, in every process. Not for the queue
        -- the caller wakes itself after its COMMIT: a transaction that
        -- notifies holds Postgres' one notification lock from its COMMIT
        -- until the COMMIT is on disk, so every completion notifying would
        -- make completions commit one at a time.
        IF NOT coalesce(q = ANY (string_to_array(current_setting('aftercommit.sequence_wakes', true), ',')), false) THEN
            PERFORM pg_notify(current_schema() || '.river_insert', json_build_object('queue', q)::text);
        END IF;
    END LOOP;
END
$fn$;

-- job_sequence_append: places the noted jobs (job_sequence_inbox) in their
-- sequences, oldest outbox id first, up to p_limit of them, but only those
-- older than every row left in outbox_jobs; releases each one that finds
-- its sequence under its width (available) and wakes its queue. One runs at
-- a time per schema. The relay calls it after every batch and on its poll;
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
        RETURNING i.outbox_id, i.namespace, i.seq_key, i.width, i.job_id),
    ranked AS (
        SELECT t.*, row_number() OVER w - 1 AS rn,
               count(*) OVER (PARTITION BY t.namespace, t.seq_key) AS cnt,
               last_value(t.width) OVER (PARTITION BY t.namespace, t.seq_key ORDER BY t.outbox_id
                                         ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS w
          FROM taken t WINDOW w AS (PARTITION BY t.namespace, t.seq_key ORDER BY t.outbox_id)),
    claimed AS (
        -- In key order, as every writer of job_sequences locks. The new
        -- members are released at once, as far as the width allows and no
        -- older member waits (release_pos = next_pos).
        INSERT INTO job_sequences AS s (namespace, seq_key, width, next_pos, release_pos, released, released_at)
        SELECT DISTINCT r.namespace, r.seq_key, r.w, r.cnt, least(r.cnt, r.w), least(r.cnt, r.w), now() FROM ranked r
         ORDER BY r.namespace, r.seq_key
        ON CONFLICT (namespace, seq_key) DO UPDATE
           SET width = EXCLUDED.width,
               next_pos = s.next_pos + EXCLUDED.next_pos,
               release_pos = CASE WHEN s.release_pos = s.next_pos AND s.released < EXCLUDED.width
                                  THEN s.next_pos + least(EXCLUDED.next_pos, EXCLUDED.width - s.released)
                                  ELSE s.release_pos END,
               released = CASE WHEN s.release_pos = s.next_pos AND s.released < EXCLUDED.width
                               THEN s.released + least(EXCLUDED.next_pos, EXCLUDED.width - s.released)
                               ELSE s.released END,
               released_at = CASE WHEN s.release_pos = s.next_pos AND s.released < EXCLUDED.width
                                  THEN now() ELSE s.released_at END
        RETURNING s.namespace, s.seq_key, s.next_pos, s.release_pos),
    placed_rows AS (
        SELECT r.namespace, r.seq_key, r.job_id, c.next_pos - r.cnt + r.rn AS pos, c.release_pos
          FROM ranked r JOIN claimed c ON c.namespace = r.namespace AND c.seq_key = r.seq_key),
    members AS (
        INSERT INTO job_sequence_members (namespace, seq_key, pos, job_id)
        SELECT p.namespace, p.seq_key, p.pos, p.job_id FROM placed_rows p),
    heads AS (
        UPDATE river_job j
           SET state = CASE WHEN j.scheduled_at > now() THEN 'scheduled' ELSE 'available' END::river_job_state,
               scheduled_at = greatest(j.scheduled_at, now())
          FROM placed_rows p
         WHERE j.id = p.job_id AND p.pos < p.release_pos AND j.state = 'pending'
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
'Places the jobs the relay noted in job_sequence_inbox in their sequences, oldest outbox id first, only those older than every row left in outbox_jobs; releases (makes available) those their sequence''s width allows. Returns the number placed.';

-- aftercommit_sequence_advance: the trigger function. The job's sequence is
-- in its metadata: {"aftercommit_seq": {"ns": …, "key": …, "width": …,
-- "continue": true|false, "outbox_id": …}}; its place in
-- job_sequence_members. It runs with its owner's rights (whoever finishes a
-- job need not write the sequence tables), on the tables of the schema this
-- migration ran in.
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
    finished boolean;
    cur      job_sequences;
    m        job_sequence_members;
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

    SELECT * INTO cur FROM job_sequences s WHERE s.namespace = ns AND s.seq_key = k FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF finished THEN
        DELETE FROM job_sequence_members x WHERE x.job_id = job.id RETURNING * INTO m;
    ELSE
        -- A "continue" member failed: it retries outside the sequence.
        UPDATE job_sequence_members x SET detached = true
         WHERE x.job_id = job.id AND NOT x.detached RETURNING * INTO m;
        m.detached := false; -- as it was
    END IF;
    IF m.job_id IS NULL THEN
        RETURN NULL;
    END IF;
    IF m.pos < cur.release_pos AND NOT m.detached THEN
        -- A released member is done (or detached): its place is free.
        cur.released := greatest(cur.released - 1, 0);
        IF NOT finished THEN
            cur.detached := cur.detached + 1;
        END IF;
    ELSIF m.detached THEN
        -- A detached member ended.
        cur.detached := greatest(cur.detached - 1, 0);
    ELSE
        -- A pending member left (cancelled, deleted): nothing runs less.
        -- The release that reaches its place skips it.
        IF cur.released = 0 AND cur.detached = 0
           AND NOT EXISTS (SELECT FROM job_sequence_members x
                            WHERE x.namespace = ns AND x.seq_key = k AND x.pos >= cur.release_pos) THEN
            DELETE FROM job_sequences s WHERE s.namespace = ns AND s.seq_key = k;
        END IF;
        RETURN NULL;
    END IF;
    -- Counted, not scanned: a member's index entries stay behind it dead
    -- until vacuum, and a long sequence would scan them all.
    IF cur.released = 0 AND cur.detached = 0 AND cur.release_pos >= cur.next_pos THEN
        DELETE FROM job_sequences s WHERE s.namespace = ns AND s.seq_key = k;
    ELSE
        PERFORM aftercommit_sequence_release(cur);
    END IF;
    RETURN NULL;
END
$fn$;

COMMENT ON FUNCTION aftercommit_sequence_advance() IS
'Trigger of river_job: when a released sequence member finishes (or fails, in a "continue" sequence), releases the next pending member in the same transaction and notifies its queue.';

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
'Advances a job sequence when a released member finishes (see aftercommit_sequence_advance).';
COMMENT ON TRIGGER river_job_sequence_leave ON river_job IS
'Removes a deleted unfinished job from its sequence, advancing it if it was released.';

-- job_sequence_status: one row per sequence with unfinished members.
-- waiting: pending members; running: released ones (at most width); head:
-- the oldest released member that is not detached (the one that runs, in a
-- sequence of width 1). held: the head failed and waits for its retry (a
-- sequence of width 1 waits with it); stuck: the head failed at least 3
-- times, or members wait while none runs.
CREATE VIEW job_sequence_status AS
SELECT s.namespace,
       s.seq_key,
       s.width,
       (SELECT count(*) FROM job_sequence_members w
         WHERE w.namespace = s.namespace AND w.seq_key = s.seq_key AND w.pos >= s.release_pos) AS waiting,
       s.released AS running,
       h.pos AS head_pos,
       h.job_id AS head_job_id,
       j.kind AS head_kind,
       j.state AS head_state,
       j.attempt AS head_attempt,
       coalesce(cardinality(j.errors), 0) AS head_errors,
       j.errors[cardinality(j.errors)] ->> 'error' AS head_last_error,
       s.released_at,
       now() - s.released_at AS released_age,
       (j.state IN ('retryable', 'available', 'scheduled') AND coalesce(cardinality(j.errors), 0) > 0) AS held,
       (coalesce(cardinality(j.errors), 0) >= 3
        OR (s.released = 0 AND s.release_pos < s.next_pos)
        OR (h.job_id IS NOT NULL AND (j.id IS NULL OR j.state IN ('completed', 'discarded', 'cancelled', 'pending')))) AS stuck
  FROM job_sequences s
  LEFT JOIN LATERAL (SELECT m.pos, m.job_id FROM job_sequence_members m
                      WHERE m.namespace = s.namespace AND m.seq_key = s.seq_key
                        AND m.pos < s.release_pos AND NOT m.detached
                      ORDER BY m.pos LIMIT 1) AS h ON true
  LEFT JOIN river_job j ON j.id = h.job_id;

COMMENT ON VIEW job_sequence_status IS
'Per job sequence (or fair share) with unfinished members: its width, pending members (waiting), released ones (running), the head job (oldest released: kind, state, attempt, errors, last error), the latest release, held (the head failed and waits for its retry), stuck (3+ errors, or members wait while none runs).';

REVOKE EXECUTE ON FUNCTION job_sequence_append(integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION aftercommit_sequence_advance() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION aftercommit_sequence_release(job_sequences) FROM PUBLIC;

INSERT INTO aftercommit_role_grants (role_kind, on_object, privileges) VALUES
    ('app', 'TABLE job_sequence_status', 'SELECT'),
    ('worker', 'FUNCTION job_sequence_append(integer)', 'EXECUTE'),
    ('worker', 'TABLE job_sequence_inbox', 'SELECT, INSERT'),
    ('worker', 'TABLE job_sequences', 'SELECT'),
    ('worker', 'TABLE job_sequence_members', 'SELECT'),
    ('worker', 'TABLE job_sequence_status', 'SELECT');

SELECT aftercommit_apply_grants();
