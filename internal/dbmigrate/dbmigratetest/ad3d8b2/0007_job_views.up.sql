-- Job reports from SQL: four read-only views over River's river_job table,
-- which jobs.Stats reads for the CLI and the UI. Every duration is an
-- interval (microseconds, like the timestamps it comes from); every window
-- is relative to now(), the start of the reading transaction, so views read
-- in one transaction agree with each other.
--
-- River keeps the times of the last attempt only: scheduled_at is when it
-- was due (a retry or a snooze moves it), attempted_at when it started,
-- finalized_at when the job reached completed, discarded or cancelled. Each
-- failed attempt appends {"at", "attempt", "error", "trace"} to errors.
-- River's job cleaner deletes completed and cancelled jobs after 24 hours
-- and discarded ones after 7 days by default, which bounds what the views
-- scan and what they can see.

-- job_kind_stats: what each kind did in the last hour and the last 24 hours.
CREATE VIEW job_kind_stats AS
WITH periods (period, since) AS (
    VALUES ('hour', now() - interval '1 hour'),
           ('day',  now() - interval '24 hours')
), finalized AS (
    SELECT p.period, j.kind,
           count(*) FILTER (WHERE j.state = 'completed') AS completed,
           count(*) FILTER (WHERE j.state = 'discarded') AS discarded,
           count(*) FILTER (WHERE j.state = 'cancelled') AS cancelled,
           percentile_disc(0.50) WITHIN GROUP (ORDER BY j.finalized_at - j.attempted_at) FILTER (WHERE j.state = 'completed') AS run_time_p50,
           percentile_disc(0.95) WITHIN GROUP (ORDER BY j.finalized_at - j.attempted_at) FILTER (WHERE j.state = 'completed') AS run_time_p95,
           percentile_disc(0.99) WITHIN GROUP (ORDER BY j.finalized_at - j.attempted_at) FILTER (WHERE j.state = 'completed') AS run_time_p99,
           percentile_disc(0.50) WITHIN GROUP (ORDER BY j.attempted_at - j.scheduled_at) FILTER (WHERE j.state = 'completed') AS queue_latency_p50,
           percentile_disc(0.95) WITHIN GROUP (ORDER BY j.attempted_at - j.scheduled_at) FILTER (WHERE j.state = 'completed') AS queue_latency_p95,
           percentile_disc(0.99) WITHIN GROUP (ORDER BY j.attempted_at - j.scheduled_at) FILTER (WHERE j.state = 'completed') AS queue_latency_p99
      FROM periods p
      JOIN river_job j
        ON j.state IN ('completed', 'discarded', 'cancelled') AND j.finalized_at >= p.since
     GROUP BY p.period, j.kind
), errored AS (
    SELECT p.period, j.kind, count(*) AS failed
      FROM river_job j
     CROSS JOIN LATERAL unnest(j.errors) AS e (err)
      JOIN periods p ON (e.err ->> 'at')::timestamptz >= p.since
     WHERE j.errors IS NOT NULL
     GROUP BY p.period, j.kind
)
SELECT kind, period, p.since,
       coalesce(f.completed, 0) AS completed,
       coalesce(e.failed, 0)    AS failed,
       coalesce(f.discarded, 0) AS discarded,
       coalesce(f.cancelled, 0) AS cancelled,
       f.run_time_p50, f.run_time_p95, f.run_time_p99,
       f.queue_latency_p50, f.queue_latency_p95, f.queue_latency_p99
  FROM finalized f
  FULL JOIN errored e USING (period, kind)
  JOIN periods p USING (period)
 ORDER BY kind, p.since DESC;

COMMENT ON VIEW job_kind_stats IS
'One row per kind and period (''hour'': the last hour, ''day'': the last 24 hours) in which the kind finalized a job or recorded a failed attempt; a row counts what happened at or after since = now() - period. '
'completed, discarded, cancelled: jobs in that state whose finalized_at is in the window. '
'failed: failed attempts (entries of river_job.errors whose "at" is in the window), as River''s job_failed event counts them: a job retried twice counts 2, and the last error of a discarded job counts in failed and in discarded. '
'run_time_p*: percentile_disc (an observed value, never an interpolation) of finalized_at - attempted_at over the completed jobs of the window; queue_latency_p*: the same of attempted_at - scheduled_at (how long the successful attempt waited after it was due). Both are intervals, NULL when completed is 0.';
COMMENT ON COLUMN job_kind_stats.failed IS
'Failed attempts in the window: entries of river_job.errors whose "at" is at or after since.';
COMMENT ON COLUMN job_kind_stats.run_time_p50 IS
'percentile_disc(0.50) of finalized_at - attempted_at over the completed jobs of the window.';
COMMENT ON COLUMN job_kind_stats.queue_latency_p50 IS
'percentile_disc(0.50) of attempted_at - scheduled_at over the completed jobs of the window.';

-- queue_depth: how many jobs each queue holds, by state.
CREATE VIEW queue_depth AS
SELECT queue, state, count(*) AS jobs, min(scheduled_at) AS oldest_scheduled_at
  FROM river_job
 GROUP BY queue, state
 ORDER BY queue, state;

COMMENT ON VIEW queue_depth IS
'One row per queue and state that has jobs: their number, and the earliest scheduled_at among them (for available jobs, how long the head of the queue has been due). Finalized states (completed, discarded, cancelled) count the jobs River''s cleaner has not deleted yet.';

-- stuck_jobs: running jobs older than the job timeout.
CREATE VIEW stuck_jobs AS
WITH settings AS (
    SELECT coalesce(nullif(current_setting('aftercommit.job_timeout', true), '')::interval,
                    interval '1 minute') AS timeout
)
SELECT j.id, j.kind, j.queue, j.attempt, j.max_attempts, j.attempted_at,
       j.attempted_by[array_upper(j.attempted_by, 1)] AS attempted_by,
       now() - j.attempted_at AS running_for,
       s.timeout
  FROM river_job j
 CROSS JOIN settings s
 WHERE j.state = 'running'
   AND j.attempted_at < now() - s.timeout
 ORDER BY j.attempted_at, j.id;

COMMENT ON VIEW stuck_jobs IS
'Jobs in state running whose attempt started more than timeout ago (attempted_at < now() - timeout): a worker that ignores its cancelled context, or a process that died; River''s rescuer retries or discards them after RescueStuckJobsAfter (default 1 hour). '
'River stores no per-job timeout, so timeout is the setting aftercommit.job_timeout (SET aftercommit.job_timeout = ''5 min'', ALTER DATABASE … SET …, or jobs.StatsOpts.JobTimeout), else River''s default JobTimeout of 1 minute. Jobs of workers whose Timeout() is longer than that show up here early. '
'attempted_by is the client of the current attempt; running_for is now() - attempted_at.';

-- failing_jobs: the most recent error of each kind.
CREATE VIEW failing_jobs AS
SELECT DISTINCT ON (j.kind)
       j.kind,
       j.id AS job_id,
       j.state,
       (e.err ->> 'attempt')::integer AS attempt,
       j.max_attempts,
       (e.err ->> 'at')::timestamptz AS error_at,
       e.err ->> 'error' AS error,
       e.err ->> 'trace' AS trace
  FROM river_job j
 CROSS JOIN LATERAL (SELECT j.errors[array_upper(j.errors, 1)] AS err) e
 WHERE cardinality(j.errors) > 0
 ORDER BY j.kind, error_at DESC, j.id DESC;

COMMENT ON VIEW failing_jobs IS
'One row per kind with a recorded error: the last element of river_job.errors (each job''s newest error) with the latest "at" among the kind''s jobs (ties: the highest job id), with that job''s id, current state and max_attempts, and the error''s attempt, at, message and trace. '
'An error stays here until its job is deleted (River''s cleaner: 24 hours after completion, 7 days after discard), so compare error_at with job_kind_stats to tell a kind that fails now from one that recovered.';
