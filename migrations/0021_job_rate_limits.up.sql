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
-- processes arrive out of order). next_slot spreads the jobs that wait: each
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

-- job_rate_admit decides one start of (p_namespace, p_key) at p_at (the
-- job's attempted_at) under at most p_limit starts per p_period. It returns
-- admitted, and for a refused start how long the job should wait (wait_us,
-- in microseconds of the database's clock): until the next free slot.
CREATE FUNCTION job_rate_admit(
    p_namespace text,
    p_key       text,
    p_limit     integer,
    p_period    interval,
    p_at        timestamptz
) RETURNS TABLE (admitted boolean, wait_us bigint)
    LANGUAGE plpgsql
    SET search_path FROM CURRENT
AS $fn$
DECLARE
    v_now    timestamptz;
    v_starts timestamptz[];
    v_next   timestamptz;
    v_n      integer;
    v_ok     boolean;
    v_due    timestamptz;
    v_wake   timestamptz;
BEGIN
    IF p_limit IS NULL OR p_limit < 1 OR p_period IS NULL OR p_period <= interval '0' OR p_at IS NULL THEN
        RAISE EXCEPTION 'job_rate_admit: limit % per % at %: the limit must be at least 1 per a positive period, at a time', p_limit, p_period, p_at
            USING ERRCODE = '22023';
    END IF;
    -- The key's row, locked: decisions of one key are taken one at a time.
    SELECT r.starts, r.next_slot INTO v_starts, v_next
      FROM job_rate_limits r WHERE r.namespace = p_namespace AND r.rate_key = p_key
       FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO job_rate_limits (namespace, rate_key, max_starts, period)
        VALUES (p_namespace, p_key, p_limit, p_period)
        ON CONFLICT (namespace, rate_key) DO NOTHING;
        SELECT r.starts, r.next_slot INTO v_starts, v_next
          FROM job_rate_limits r WHERE r.namespace = p_namespace AND r.rate_key = p_key
           FOR UPDATE;
    END IF;
    -- After the lock: a decision that waited for another is taken at the
    -- time it is taken.
    v_now := clock_timestamp();
    v_starts := ARRAY(SELECT u.s FROM unnest(v_starts) AS u(s) WHERE u.s > v_now - 2 * p_period ORDER BY u.s);

    -- A start older than one period could fall into windows the pruned log
    -- no longer shows: refused, the job is fetched again at once.
    IF p_at > v_now - p_period THEN
        SELECT coalesce(bool_and(w.nx IS NULL OR w.nx - w.s > p_period), true) INTO v_ok
          FROM (SELECT u.s, lead(u.s, p_limit) OVER (ORDER BY u.s) AS nx
                  FROM unnest(v_starts || p_at) AS u(s)) AS w;
    ELSE
        v_ok := false;
    END IF;

    IF v_ok THEN
        UPDATE job_rate_limits r
           SET starts = ARRAY(SELECT u.s FROM unnest(v_starts || p_at) AS u(s) ORDER BY u.s),
               max_starts = p_limit, period = p_period,
               admitted = r.admitted + 1, updated_at = v_now
         WHERE r.namespace = p_namespace AND r.rate_key = p_key;
        RETURN QUERY SELECT true, 0::bigint;
        RETURN;
    END IF;

    -- The first time a start after every logged one is admitted: once the
    -- p_limit-th latest start is more than a period old.
    v_n := cardinality(v_starts);
    v_due := v_now;
    IF v_n >= p_limit THEN
        v_due := greatest(v_now, v_starts[v_n - p_limit + 1] + p_period + interval '1 microsecond');
    END IF;
    IF p_at <= v_now - p_period THEN
        v_wake := v_now; -- refused for its stale start only: again at once
    ELSE
        -- The next free slot, whether the job waited before or not: a job
        -- that missed its slot waits behind the others instead of racing
        -- the next slot's job for the same start. Slots are a period /
        -- p_limit apart, plus a margin (a 200th of the period, at least
        -- 5 ms): a job starts a few milliseconds after its slot, and
        -- without the margin it would find the start p_limit before it late
        -- by as much, half the time.
        v_wake := greatest(v_due, v_next);
        v_next := v_wake + (p_period + greatest(p_period / 200, interval '5 ms')) / p_limit;
    END IF;
    UPDATE job_rate_limits r
       SET starts = v_starts, next_slot = v_next,
           max_starts = p_limit, period = p_period,
           delayed = r.delayed + 1, updated_at = v_now
     WHERE r.namespace = p_namespace AND r.rate_key = p_key;
    RETURN QUERY SELECT false, greatest(1, ceil(extract(epoch FROM v_wake - v_now) * 1000000))::bigint;
END
$fn$;

COMMENT ON FUNCTION job_rate_admit(text, text, integer, interval, timestamptz) IS
'Admits or refuses one start at p_at (a job''s attempted_at) of (namespace, key) under at most p_limit starts in any window of p_period; a refused start gets how long to wait (wait_us). Used by jobs.RateLimiter''s middleware.';

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
    ('worker', 'FUNCTION job_rate_admit(text, text, integer, interval, timestamptz)', 'EXECUTE');

SELECT aftercommit_apply_grants();
