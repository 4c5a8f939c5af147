-- Two edges of job_rate_admit_many where the limit of at most max_starts
-- starts in ANY window of period (both ends included: the window-by-window
-- decision of 0021 refuses a start exactly a period after the max_starts-th
-- latest) did not hold exactly.
--
--   * The fast path counted the logged starts later than (the batch's
--     earliest start - period). A start logged exactly then is in a window
--     with the batch's earliest start, both ends included, and was left out:
--     a key could get max_starts + 1 starts within one period, its first and
--     last exactly a period apart. It now counts the logged starts at or
--     after that time, as leases count theirs.
--
--   * A lease began at the clock read when the statement began, before the
--     wait for the key's row. A batch whose start was later than that clock
--     (a time given ahead of the database's) could be admitted after a wait
--     of more than a period, and then be leased tokens for starts of before
--     the wait, counted against a log that the decision that held the row
--     had pruned by its own, later, clock: once its tokens were spent,
--     windows around the lease held more than max_starts starts. A lease now
--     begins at the clock read once every row of the batch is locked, like
--     the decisions of 0021 and 0028.

CREATE OR REPLACE FUNCTION job_rate_admit_many(
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
    v_lease_at timestamptz;
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
           -- Decided at the time it is taken, once the row is locked: a
           -- batch that waited for another one may have become stale, and
           -- that one pruned the log by its own, later, clock.
           AND excluded.starts[1] > clock_timestamp() - excluded.period
           AND r.next_slot <= excluded.updated_at
           AND (SELECT count(*) FROM unnest(r.starts) AS x(s) WHERE x.s >= excluded.starts[1] - excluded.period)
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
        -- A lease begins now that the rows are locked: every start of the
        -- windows it meets is in the log (a log is pruned of starts two
        -- periods older than the clock of the decision that wrote it).
        v_lease_at := clock_timestamp();
        WITH wanted AS (
            SELECT u.ns, u.k, max(u.w) AS w, min(u.l) AS l, min(u.p) AS p, min(u.i)::integer AS first_i
              FROM unnest(p_namespace, p_key, p_limit, p_period, p_lease) WITH ORDINALITY AS u(ns, k, l, p, w, i)
             WHERE u.w > 0
               AND (u.ns, u.k) IN (SELECT f.ns, f.k FROM unnest(v_fast_ns, v_fast_k) AS f(ns, k))
             GROUP BY u.ns, u.k
        ), sized AS (
            SELECT w.ns, w.k, w.first_i, v_lease_at + least(w.p / 2, interval '1 s') AS until,
                   least(w.w, (w.l / 2 - (SELECT count(*) FROM unnest(r.starts) AS x(s) WHERE x.s >= v_lease_at - w.p))::integer / 2) AS tokens
              FROM wanted w
              JOIN job_rate_limits r ON r.namespace = w.ns AND r.rate_key = w.k
        ), leased AS (
            UPDATE job_rate_limits r
               SET starts = r.starts || array_fill(v_lease_at, ARRAY[z.tokens]) || array_fill(z.until, ARRAY[z.tokens]),
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
        SELECT u.i::integer, true, 0::bigint, u.a, g.tokens, CASE WHEN g.tokens IS NOT NULL THEN v_lease_at END, g.until
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

