DROP FUNCTION job_rate_admit_many(text[], text[], integer[], interval[], timestamptz[], bigint[], boolean[]);

ALTER FUNCTION job_rate_admit_window(text[], text[], integer[], interval[], timestamptz[], bigint[], boolean[])
    RENAME TO job_rate_admit_many;

COMMENT ON FUNCTION job_rate_admit_many(text[], text[], integer[], interval[], timestamptz[], bigint[], boolean[]) IS
'Admits or refuses a batch of starts, the i-th at p_at[i] (a job''s attempted_at) of (p_namespace[i], p_key[i]) under at most p_limit[i] starts in any window of p_period[i]; a refused start gets how long to wait (wait_us). Used by jobs.RateLimiter''s middleware.';
