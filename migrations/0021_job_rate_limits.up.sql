-- job_rate_limits: the rate limits of jobs.RateLimiter — at most max_starts
-- starts of (namespace, rate_key) in any window of length period, across
-- every process. A start is the fetch that ran the job: its river_job
-- attempted_at (the database's clock), so the limit can be checked from
-- river_job alone.
--
-- starts is the log of the admitted starts of the last two periods, sorted:
-- a sliding-window log, not a token bucket, because a bucket of N tokens
-- refilled at N per period lets 2N starts into one period (a full bucket,
-- then its refill) and the promise here is N in ANY window. job_rate_admit
-- admits a start when the log with it still has no N+1 starts within one
-- period, checking every window that contains it (fetches of several
-- processes arrive out of order). job_rate_admit_many decides a batch. next_slot spreads the jobs that wait: each
-- refused job is given the next free slot, about period/max_starts apart, and
-- snoozes until then without spending an attempt, so a backlog is fetched
-- about twice per job instead of polling.
--
--   SELECT * FROM job_rate_limit_status;
CREATE TABLE job_rate_limits (
    namespace  text        NOT NULL CHECK (namespace <> ''),
    rate_key   text        NOT NULL CHECK (rate_key <> ''),
    max_starts integer     NOT NULL CHECK (max_starts > 0),
    period     interval    NOT NULL CHECK (period > interval '0'),
    starts     timestamptz[] NOT NULL DEFAULT '{}',
    next_slot  timestamptz NOT NULL DEFAULT '-infinity',
    admitted   bigint      NOT NULL DEFAULT 0,
    delayed    bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, rate_key)
) WITH (fillfactor = 50);

COMMENT ON TABLE job_rate_limits IS
'Rate limits of jobs (jobs.RateLimiter): starts is the sliding-window log of admitted starts (river_job.attempted_at) of the last two periods; next_slot the slot the next refused job waits for; admitted and delayed count decisions since the key first ran. Written by job_rate_admit() only.';

-- job_rate_admit_many decides a batch of starts: the i-th of
-- (p_namespace[i], p_key[i]) at p_at[i] (a job's attempted_at) under at most
-- p_limit[i] starts per p_period[i]. It returns, for each ord i, admitted,
-- and for a refused start how long the job should wait (wait_us, in
-- microseconds of the database's clock): until the next free slot. A
-- start with no p_at[i] is decided at the time of the decision, for the
-- running job p_job_id[i], whose attempted_at becomes that time when it is
-- admitted (started_at returns the time of every admitted start).
-- p_waited[i] says the job waited for its slot already. A
-- process sends the decisions its jobs ask for at the same time in one
-- statement (jobs.RateLimiter's middleware), so a key's row is locked and
-- rewritten once per batch, not once per job.
CREATE FUNCTION job_rate_admit_many(
    p_namespace text[],
    p_key       text[],
    p_limit     integer[],
    p_period    interval[],
    p_at        timestamptz[],
    p_job_id    bigint[] DEFAULT NULL,
    p_waited    boolean[] DEFAULT NULL
) RETURNS TABLE (ord integer, admitted boolean, wait_us bigint, started_at timestamptz)
    LANGUAGE plpgsql
    SET search_path FROM CURRENT
AS $fn$
DECLARE
    v_req      record;
    v_out_ns       text[] := '{}';
    v_out_k        text[] := '{}';
    v_out_starts   jsonb[] := '{}';
    v_out_next     timestamptz[] := '{}';
    v_out_limit    integer[] := '{}';
    v_out_period   interval[] := '{}';
    v_out_admitted bigint[] := '{}';
    v_out_delayed  bigint[] := '{}';
    v_now_jobs     bigint[] := '{}';
    v_now      timestamptz;
    v_starts   timestamptz[];
    v_next     timestamptz;
    v_n        integer;
    v_ok       boolean;
    v_due      timestamptz;
    v_wake     timestamptz;
    v_admitted bigint;
    v_delayed  bigint;
BEGIN
    IF cardinality(p_namespace) IS DISTINCT FROM cardinality(p_at)
       OR cardinality(p_key) IS DISTINCT FROM cardinality(p_at)
       OR cardinality(p_limit) IS DISTINCT FROM cardinality(p_at)
       OR cardinality(p_period) IS DISTINCT FROM cardinality(p_at)
       OR (p_job_id IS NOT NULL AND cardinality(p_job_id) IS DISTINCT FROM cardinality(p_at))
       OR (p_waited IS NOT NULL AND cardinality(p_waited) IS DISTINCT FROM cardinality(p_at)) THEN
        RAISE EXCEPTION 'job_rate_admit: the arrays of a batch must have one element per start'
            USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT FROM unnest(p_namespace, p_key, p_limit, p_period, p_at, p_job_id) AS u(ns, k, l, p, a, j)
                WHERE u.ns IS NULL OR u.k IS NULL OR u.l IS NULL OR u.l < 1
                   OR u.p IS NULL OR u.p <= interval '0' OR (u.a IS NULL AND u.j IS NULL)) THEN
        RAISE EXCEPTION 'job_rate_admit: every start needs a namespace, a key, a limit of at least 1 per a positive period, and a time or a job'
            USING ERRCODE = '22023';
    END IF;

    -- Every key of the batch has a row, and is locked, in one order in
    -- every process: two batches that share keys never deadlock, and the
    -- decisions of one key are taken one at a time across every process.
    INSERT INTO job_rate_limits (namespace, rate_key, max_starts, period)
    SELECT DISTINCT ON (u.ns, u.k) u.ns, u.k, u.l, u.p
      FROM unnest(p_namespace, p_key, p_limit, p_period) AS u(ns, k, l, p)
     ORDER BY u.ns, u.k
    ON CONFLICT (namespace, rate_key) DO NOTHING;
    PERFORM 1 FROM job_rate_limits r
      WHERE (r.namespace, r.rate_key) IN (SELECT u.ns, u.k FROM unnest(p_namespace, p_key) AS u(ns, k))
      ORDER BY r.namespace, r.rate_key
        FOR UPDATE;
    -- After the locks: a decision that waited for another batch is taken at
    -- the time it is taken.
    v_now := clock_timestamp();

    -- Each key's starts, oldest first: most are later than every logged
    -- start, and only need the p_limit-th latest one checked.
    FOR v_req IN
        SELECT u.ns, u.k, u.i::integer AS i, u.l, u.p, coalesce(u.a, v_now) AS a, u.a IS NULL AS at_now, u.j AS job_id,
               coalesce(u.w, false) AS waited,
               r.starts, r.next_slot,
               max(u.p) OVER (PARTITION BY u.ns, u.k) AS max_period,
               row_number() OVER (PARTITION BY u.ns, u.k ORDER BY coalesce(u.a, v_now), u.i) = 1 AS first_of_key,
               row_number() OVER (PARTITION BY u.ns, u.k ORDER BY coalesce(u.a, v_now) DESC, u.i DESC) = 1 AS last_of_key
          FROM unnest(p_namespace, p_key, p_limit, p_period, p_at, p_job_id, p_waited) WITH ORDINALITY AS u(ns, k, l, p, a, j, w, i)
          JOIN job_rate_limits r ON r.namespace = u.ns AND r.rate_key = u.k
         ORDER BY u.ns, u.k, coalesce(u.a, v_now), u.i
    LOOP
        IF v_req.first_of_key THEN
            -- The log keeps two periods: a start up to one period old is
            -- still decided against every window holding it.
            v_starts := ARRAY(SELECT u.s FROM unnest(v_req.starts) AS u(s) WHERE u.s > v_now - 2 * v_req.max_period ORDER BY u.s);
            v_next := v_req.next_slot;
            v_admitted := 0;
            v_delayed := 0;
        END IF;

        v_n := cardinality(v_starts);
        IF v_req.a <= v_now - v_req.p THEN
            -- Older than one period: it could fall into windows the pruned
            -- log no longer shows.
            v_ok := false;
        ELSIF v_n = 0 OR v_req.a >= v_starts[v_n] THEN
            v_ok := v_n < v_req.l OR v_req.a - v_starts[v_n - v_req.l + 1] > v_req.p;
            IF v_ok THEN
                v_starts := v_starts || v_req.a;
            END IF;
        ELSE
            -- Out of order (fetches of several processes): every window
            -- holding the start is checked.
            SELECT coalesce(bool_and(w.nx IS NULL OR w.nx - w.s > v_req.p), true) INTO v_ok
              FROM (SELECT u.s, lead(u.s, v_req.l) OVER (ORDER BY u.s) AS nx
                      FROM unnest(v_starts || v_req.a) AS u(s)) AS w;
            IF v_ok THEN
                v_starts := ARRAY(SELECT u.s FROM unnest(v_starts || v_req.a) AS u(s) ORDER BY u.s);
            END IF;
        END IF;

        ord := v_req.i;
        admitted := v_ok;
        wait_us := 0;
        started_at := NULL;
        IF v_ok THEN
            v_admitted := v_admitted + 1;
            started_at := v_req.a;
            IF v_req.at_now THEN
                v_now_jobs := v_now_jobs || v_req.job_id;
            END IF;
        ELSE
            v_delayed := v_delayed + 1;
            IF v_req.a <= v_now - v_req.p THEN
                v_wake := v_now; -- refused for its stale start only: again at once
            ELSE
                -- The first time a start after every logged one is
                -- admitted: once the p_limit-th latest start is more than a
                -- period old.
                v_due := v_now;
                IF v_n >= v_req.l THEN
                    v_due := greatest(v_now, v_starts[v_n - v_req.l + 1] + v_req.p + interval '1 microsecond');
                END IF;
                IF v_req.waited AND v_due - v_now <= interval '500 ms' THEN
                    -- It waited for its slot, and the start p_limit before
                    -- it came late: it waits for that start to leave the
                    -- window, a moment, in its worker (jobs' middleware
                    -- waits there up to 500 ms), keeping its turn; behind
                    -- the other waiting jobs its slot would go unused.
                    v_wake := v_due;
                ELSE
                    -- The next free slot. Slots are a period / p_limit
                    -- apart, plus a margin (a 200th of the period, at least
                    -- 5 ms): a job starts a few milliseconds after its slot,
                    -- and without the margin it would find the start p_limit
                    -- before it late by as much, half the time.
                    v_wake := greatest(v_due, v_next);
                    v_next := v_wake + (v_req.p + greatest(v_req.p / 200, interval '5 ms')) / v_req.l;
                END IF;
            END IF;
            wait_us := greatest(1, ceil(extract(epoch FROM v_wake - v_now) * 1000000))::bigint;
        END IF;
        RETURN NEXT;

        IF v_req.last_of_key THEN
            v_out_ns := v_out_ns || v_req.ns;
            v_out_k := v_out_k || v_req.k;
            v_out_starts := v_out_starts || to_jsonb(v_starts);
            v_out_next := v_out_next || v_next;
            v_out_limit := v_out_limit || v_req.l;
            v_out_period := v_out_period || v_req.p;
            v_out_admitted := v_out_admitted || v_admitted;
            v_out_delayed := v_out_delayed || v_delayed;
        END IF;
    END LOOP;

    -- A start decided at the time of the decision (no p_at) is the job's
    -- attempt from now on: its attempted_at says so, so that the limit can
    -- still be checked from river_job alone.
    UPDATE river_job j SET attempted_at = v_now
     WHERE j.id = ANY (v_now_jobs) AND j.state = 'running';

    -- Every key's row in one statement.
    UPDATE job_rate_limits r
       SET starts = ARRAY(SELECT e::timestamptz FROM jsonb_array_elements_text(u.st) WITH ORDINALITY AS x(e, n) ORDER BY x.n),
           next_slot = u.nx, max_starts = u.l, period = u.p,
           admitted = r.admitted + u.ad, delayed = r.delayed + u.de, updated_at = v_now
      FROM unnest(v_out_ns, v_out_k, v_out_starts, v_out_next, v_out_limit, v_out_period, v_out_admitted, v_out_delayed)
           AS u(ns, k, st, nx, l, p, ad, de)
     WHERE r.namespace = u.ns AND r.rate_key = u.k;
END
$fn$;

COMMENT ON FUNCTION job_rate_admit_many(text[], text[], integer[], interval[], timestamptz[], bigint[], boolean[]) IS
'Admits or refuses a batch of starts, the i-th at p_at[i] (a job''s attempted_at) of (p_namespace[i], p_key[i]) under at most p_limit[i] starts in any window of p_period[i]; a refused start gets how long to wait (wait_us). Used by jobs.RateLimiter''s middleware.';

-- job_rate_admit decides one start: job_rate_admit_many of one.
CREATE FUNCTION job_rate_admit(
    p_namespace text,
    p_key       text,
    p_limit     integer,
    p_period    interval,
    p_at        timestamptz
) RETURNS TABLE (admitted boolean, wait_us bigint)
    LANGUAGE sql
    SET search_path FROM CURRENT
AS $fn$
    SELECT m.admitted, m.wait_us
      FROM job_rate_admit_many(ARRAY[p_namespace], ARRAY[p_key], ARRAY[p_limit], ARRAY[p_period], ARRAY[p_at]::timestamptz[]) AS m;
$fn$;

COMMENT ON FUNCTION job_rate_admit(text, text, integer, interval, timestamptz) IS
'Admits or refuses one start at p_at (a job''s attempted_at) of (namespace, key) under at most p_limit starts in any window of p_period; a refused start gets how long to wait (wait_us). See job_rate_admit_many.';

-- job_rate_limit_status: each key's limit, its starts in the last period,
-- and how far ahead its waiting jobs are booked (0 when none wait).
CREATE VIEW job_rate_limit_status AS
SELECT r.namespace, r.rate_key, r.max_starts, r.period,
       (SELECT count(*) FROM unnest(r.starts) AS u(s) WHERE u.s > now() - r.period) AS starts_in_period,
       (SELECT max(u.s) FROM unnest(r.starts) AS u(s)) AS last_start,
       CASE WHEN r.next_slot > now() THEN r.next_slot - now() ELSE interval '0' END AS booked_ahead,
       r.admitted, r.delayed, r.updated_at
  FROM job_rate_limits r;

COMMENT ON VIEW job_rate_limit_status IS
'Per rate-limited key: the limit (max_starts per period), starts in the last period, the latest start, how far ahead refused jobs are booked (booked_ahead, 0 when none wait), and the counts of admitted and delayed decisions.';

INSERT INTO aftercommit_role_grants (role_kind, on_object, privileges) VALUES
    ('app', 'TABLE job_rate_limit_status', 'SELECT'),
    ('worker', 'TABLE job_rate_limits', 'SELECT, INSERT, UPDATE'),
    ('worker', 'TABLE job_rate_limit_status', 'SELECT'),
    -- job_rate_admit_many is executed through PUBLIC's default EXECUTE
    -- (aftercommit_role_grants names no array types); it runs with its
    -- caller's rights, so only the table grant above lets it write.
    ('worker', 'FUNCTION job_rate_admit(text, text, integer, interval, timestamptz)', 'EXECUTE');

SELECT aftercommit_apply_grants();
