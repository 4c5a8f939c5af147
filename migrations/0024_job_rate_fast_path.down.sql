DROP FUNCTION job_rate_admit_many(text[], text[], integer[], interval[], timestamptz[], bigint[], boolean[], integer[]);

ALTER FUNCTION job_rate_admit_window(text[], text[], integer[], interval[], timestamptz[], bigint[], boolean[])
    RENAME TO job_rate_admit_many;

COMMENT ON FUNCTION job_rate_admit_many(text[], text[], integer[], interval[], timestamptz[], bigint[], boolean[]) IS
'Admits or refuses a batch of starts, the i-th at p_at[i] (a job''s attempted_at) of (p_namespace[i], p_key[i]) under at most p_limit[i] starts in any window of p_period[i]; a refused start gets how long to wait (wait_us). Used by jobs.RateLimiter''s middleware.';

DROP VIEW job_rate_limit_status;
ALTER TABLE job_rate_limits DROP COLUMN leased;
CREATE VIEW job_rate_limit_status AS
SELECT r.namespace, r.rate_key, r.max_starts, r.period,
       (SELECT count(*) FROM unnest(r.starts) AS u(s) WHERE u.s > now() - r.period) AS starts_in_period,
       (SELECT max(u.s) FROM unnest(r.starts) AS u(s)) AS last_start,
       CASE WHEN r.next_slot > now() THEN r.next_slot - now() ELSE interval '0' END AS booked_ahead,
       r.admitted, r.delayed, r.updated_at
  FROM job_rate_limits r;

COMMENT ON VIEW job_rate_limit_status IS
'Per rate-limited key: the limit (max_starts per period), starts in the last period, the latest start, how far ahead refused jobs are booked (booked_ahead, 0 when none wait), and the counts of admitted and delayed decisions.';

SELECT aftercommit_apply_grants();
