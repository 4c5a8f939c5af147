-- A fast path for job_rate_admit_many: the common case of a rate limit is a
-- key far from its limit, and there the window-by-window loop of 0021 (one
-- plpgsql iteration, array rebuild and jsonb round trip per start) cost as
-- much as the job it guards. job_rate_admit_many now decides every key of a
-- batch in one INSERT … ON CONFLICT DO UPDATE, which admits all of a key's
-- starts at once when a simple sufficient condition holds:
--
--   * every start of the key in the batch has a time (p_at), no older than
--     one period, and the batch agrees on the key's limit and period;
--   * no refused job of the key is booked for a slot (next_slot has passed);
--   * the logged starts later than (the batch's earliest start - period),
--     plus the batch's starts, are at most the limit.
--
-- The last condition bounds every window that can hold one of the batch's
-- starts, wherever the logged starts fall (fetches of several processes
-- arrive out of order), so the promise of 0021 — at most max_starts starts
-- in ANY window of period — still holds. Every other key (near its limit,
-- waiting jobs booked, starts decided at the time of the decision) goes to
-- the window-by-window decision of 0021, now job_rate_admit_window, in the
-- same transaction. The INSERT locks every key of the batch in (namespace,
-- key) order, the order 0021 locks in, so batches still never deadlock.
--
-- Leases. A process that starts many jobs of a key asks (p_lease[i], the
-- tokens it would like) for a lease: up to K starts of the key at any time
-- in [t0, t0 + L], t0 the decision's time and L = least(period / 2, 1 s),
-- which it then admits itself, without the database, for jobs whose
-- attempted_at falls in it. Only a key the fast path admitted gets one, of
-- K = least(asked, (max_starts / 2 - c) / 2) tokens, c the logged starts
-- after t0 - period, and only when K >= 2. The lease is logged as K starts at t0
-- and K more at t0 + L: since L <= period, every window that meets
-- [t0, t0 + L] holds t0 or t0 + L, so each such window counts at least the
-- K starts the lease may make in it, and the promise holds whatever the
-- process does with its tokens. Leases fill at most half of a key's
-- limit, so starts decided one by one (jobs fetched before a lease, other
-- processes) always find the other half; unused tokens are wasted, which
-- is why a process asks for about twice what it used.
ALTER FUNCTION job_rate_admit_many(text[], text[], integer[], interval[], timestamptz[], bigint[], boolean[])
    RENAME TO job_rate_admit_window;

-- leased counts the tokens leased to processes (see Leases above).
ALTER TABLE job_rate_limits ADD COLUMN leased bigint NOT NULL DEFAULT 0;

COMMENT ON FUNCTION job_rate_admit_window(text[], text[], integer[], interval[], timestamptz[], bigint[], boolean[]) IS
'Decides a batch of starts window by window (see migration 0021); job_rate_admit_many sends it the keys its fast path does not admit.';

CREATE FUNCTION job_rate_admit_many(
    p_namespace text[],
    p_key       text[],
    p_limit     integer[],
    p_period    interval[],
    p_at        timestamptz[],
    p_job_id    bigint[] DEFAULT NULL,
    p_waited    boolean[] DEFAULT NULL,
    p_lease     integer[] DEFAULT NULL
) RETURNS TABLE (ord integer, admitted boolean, wait_us bigint, started_at timestamptz,
                 lease_tokens integer, lease_from timestamptz, lease_until timestamptz)
    LANGUAGE plpgsql
    SET search_path FROM CURRENT
AS $fn$
#variable_conflict use_column
DECLARE
    v_now    timestamptz := clock_timestamp();
    v_fast_ns text[];
    v_fast_k  text[];
    v_rest   integer[];
    v_lease_i integer[] := '{}';
    v_lease_k integer[] := '{}';
    v_lease_u timestamptz[] := '{}';
BEGIN
    IF cardinality(p_namespace) IS DISTINCT FROM cardinality(p_at)
       OR cardinality(p_key) IS DISTINCT FROM cardinality(p_at)
       OR cardinality(p_limit) IS DISTINCT FROM cardinality(p_at)
       OR cardinality(p_period) IS DISTINCT FROM cardinality(p_at)
       OR (p_job_id IS NOT NULL AND cardinality(p_job_id) IS DISTINCT FROM cardinality(p_at))
       OR (p_waited IS NOT NULL AND cardinality(p_waited) IS DISTINCT FROM cardinality(p_at))
       OR (p_lease IS NOT NULL AND cardinality(p_lease) IS DISTINCT FROM cardinality(p_at)) THEN
        RAISE EXCEPTION 'job_rate_admit: the arrays of a batch must have one element per start'
            USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT FROM unnest(p_namespace, p_key, p_limit, p_period, p_at, p_job_id) AS u(ns, k, l, p, a, j)
                WHERE u.ns IS NULL OR u.k IS NULL OR u.l IS NULL OR u.l < 1
                   OR u.p IS NULL OR u.p <= interval '0' OR (u.a IS NULL AND u.j IS NULL)) THEN
        RAISE EXCEPTION 'job_rate_admit: every start needs a namespace, a key, a limit of at least 1 per a positive period, and a time or a job'
            USING ERRCODE = '22023';
    END IF;

    -- Every key once, in (namespace, key) order. A key the fast path may
    -- not decide is still inserted (with no start) and locked, so that the
    -- window-by-window decision below locks no row out of order. A row
    -- comes back with starts only when the fast path admitted its key.
    WITH req AS (
        SELECT u.ns, u.k, min(u.l) AS l, min(u.p) AS p, array_agg(u.a ORDER BY u.a) AS ats,
               count(*) <= min(u.l) AND min(u.l) = max(u.l) AND min(u.p) = max(u.p)
                 AND bool_and(u.a IS NOT NULL) AND min(u.a) > v_now - min(u.p) AS fast
          FROM unnest(p_namespace, p_key, p_limit, p_period, p_at) AS u(ns, k, l, p, a)
         GROUP BY u.ns, u.k
    ), decided AS (
        INSERT INTO job_rate_limits AS r (namespace, rate_key, max_starts, period, starts, admitted, updated_at)
        SELECT q.ns, q.k, q.l, q.p,
               CASE WHEN q.fast THEN q.ats ELSE '{}' END,
               CASE WHEN q.fast THEN cardinality(q.ats) ELSE 0 END,
               v_now
          FROM req q
         ORDER BY q.ns, q.k
        ON CONFLICT (namespace, rate_key) DO UPDATE
           SET starts = ARRAY(SELECT x.s FROM unnest(r.starts || excluded.starts) AS x(s)
                               WHERE x.s > excluded.updated_at - 2 * excluded.period ORDER BY x.s),
               max_starts = excluded.max_starts,
               period = excluded.period,
               admitted = r.admitted + excluded.admitted,
               updated_at = excluded.updated_at
         WHERE excluded.admitted > 0
           AND r.next_slot <= excluded.updated_at
           AND (SELECT count(*) FROM unnest(r.starts) AS x(s) WHERE x.s > excluded.starts[1] - excluded.period)
               + cardinality(excluded.starts) <= excluded.max_starts
        RETURNING r.namespace, r.rate_key, cardinality(r.starts) > 0 AS fast
    )
    SELECT coalesce(array_agg(d.namespace) FILTER (WHERE d.fast), '{}'), coalesce(array_agg(d.rate_key) FILTER (WHERE d.fast), '{}')
      INTO v_fast_ns, v_fast_k
      FROM decided d;

    -- Leases, for keys the fast path admitted (their rows are this
    -- transaction's, locked above), on the first start of the key that
    -- asked for one.
    IF p_lease IS NOT NULL AND cardinality(v_fast_ns) > 0 THEN
        WITH wanted AS (
            SELECT u.ns, u.k, max(u.w) AS w, min(u.l) AS l, min(u.p) AS p, min(u.i)::integer AS first_i
              FROM unnest(p_namespace, p_key, p_limit, p_period, p_lease) WITH ORDINALITY AS u(ns, k, l, p, w, i)
             WHERE u.w > 0
               AND (u.ns, u.k) IN (SELECT f.ns, f.k FROM unnest(v_fast_ns, v_fast_k) AS f(ns, k))
             GROUP BY u.ns, u.k
        ), sized AS (
            SELECT w.ns, w.k, w.first_i, v_now + least(w.p / 2, interval '1 s') AS until,
                   least(w.w, (w.l / 2 - (SELECT count(*) FROM unnest(r.starts) AS x(s) WHERE x.s > v_now - w.p))::integer / 2) AS tokens
              FROM wanted w
              JOIN job_rate_limits r ON r.namespace = w.ns AND r.rate_key = w.k
        ), leased AS (
            UPDATE job_rate_limits r
               SET starts = r.starts || array_fill(v_now, ARRAY[z.tokens]) || array_fill(z.until, ARRAY[z.tokens]),
                   leased = r.leased + z.tokens
              FROM sized z
             WHERE z.tokens >= 2 AND r.namespace = z.ns AND r.rate_key = z.k
            RETURNING z.first_i, z.tokens, z.until
        )
        SELECT coalesce(array_agg(l.first_i), '{}'), coalesce(array_agg(l.tokens), '{}'), coalesce(array_agg(l.until), '{}')
          INTO v_lease_i, v_lease_k, v_lease_u
          FROM leased l;
    END IF;

    RETURN QUERY
        SELECT u.i::integer, true, 0::bigint, u.a, g.tokens, CASE WHEN g.tokens IS NOT NULL THEN v_now END, g.until
          FROM unnest(p_namespace, p_key, p_at) WITH ORDINALITY AS u(ns, k, a, i)
          LEFT JOIN unnest(v_lease_i, v_lease_k, v_lease_u) AS g(i, tokens, until) ON g.i = u.i
         WHERE (u.ns, u.k) IN (SELECT f.ns, f.k FROM unnest(v_fast_ns, v_fast_k) AS f(ns, k));

    SELECT array_agg(u.i::integer ORDER BY u.i) INTO v_rest
      FROM unnest(p_namespace, p_key) WITH ORDINALITY AS u(ns, k, i)
     WHERE (u.ns, u.k) NOT IN (SELECT f.ns, f.k FROM unnest(v_fast_ns, v_fast_k) AS f(ns, k));
    IF v_rest IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
        SELECT v_rest[w.ord], w.admitted, w.wait_us, w.started_at, NULL::integer, NULL::timestamptz, NULL::timestamptz
          FROM job_rate_admit_window(
                   ARRAY(SELECT p_namespace[x] FROM unnest(v_rest) WITH ORDINALITY AS r(x, n) ORDER BY r.n),
                   ARRAY(SELECT p_key[x] FROM unnest(v_rest) WITH ORDINALITY AS r(x, n) ORDER BY r.n),
                   ARRAY(SELECT p_limit[x] FROM unnest(v_rest) WITH ORDINALITY AS r(x, n) ORDER BY r.n),
                   ARRAY(SELECT p_period[x] FROM unnest(v_rest) WITH ORDINALITY AS r(x, n) ORDER BY r.n),
                   ARRAY(SELECT p_at[x] FROM unnest(v_rest) WITH ORDINALITY AS r(x, n) ORDER BY r.n),
                   CASE WHEN p_job_id IS NULL THEN NULL
                        ELSE ARRAY(SELECT p_job_id[x] FROM unnest(v_rest) WITH ORDINALITY AS r(x, n) ORDER BY r.n) END,
                   CASE WHEN p_waited IS NULL THEN NULL
                        ELSE ARRAY(SELECT p_waited[x] FROM unnest(v_rest) WITH ORDINALITY AS r(x, n) ORDER BY r.n) END) AS w;
END
$fn$;

COMMENT ON FUNCTION job_rate_admit_many(text[], text[], integer[], interval[], timestamptz[], bigint[], boolean[], integer[]) IS
'Admits or refuses a batch of starts, the i-th at p_at[i] (a job''s attempted_at) of (p_namespace[i], p_key[i]) under at most p_limit[i] starts in any window of p_period[i]; a refused start gets how long to wait (wait_us). Keys far from their limit are admitted in one statement, and get a lease of tokens (lease_tokens starts in [lease_from, lease_until]) when p_lease asks; the rest are decided by job_rate_admit_window. Used by jobs.RateLimiter''s middleware.';

CREATE OR REPLACE VIEW job_rate_limit_status AS
SELECT r.namespace, r.rate_key, r.max_starts, r.period,
       (SELECT count(*) FROM unnest(r.starts) AS u(s) WHERE u.s > now() - r.period) AS starts_in_period,
       (SELECT max(u.s) FROM unnest(r.starts) AS u(s)) AS last_start,
       CASE WHEN r.next_slot > now() THEN r.next_slot - now() ELSE interval '0' END AS booked_ahead,
       r.admitted, r.delayed, r.updated_at, r.leased
  FROM job_rate_limits r;

COMMENT ON VIEW job_rate_limit_status IS
'Per rate-limited key: the limit (max_starts per period), starts in the last period (a lease of K tokens counts as K starts at its start and K at its end, used or not), the latest start (or a lease''s end), how far ahead refused jobs are booked (booked_ahead, 0 when none wait), the counts of admitted and delayed decisions, and the tokens leased to processes (leased), which they start jobs with without a decision each.';
