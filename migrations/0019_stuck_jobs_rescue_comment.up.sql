-- stuck_jobs' comment (0015_job_views) said River's rescuer acts after an
-- hour, River's own default; cmd/worker rescues after --rescue-after, 5
-- minutes by default.
COMMENT ON VIEW stuck_jobs IS
'Jobs in state running whose attempt started more than timeout ago (attempted_at < now() - timeout): a worker that ignores its cancelled context, or a process that died. River''s rescuer retries or discards them once they have been running for RescueStuckJobsAfter: cmd/worker''s --rescue-after (AFTERCOMMIT_RESCUE_AFTER), 5 minutes by default; River''s own default of 1 hour applies only to a client built without setting it. '
'River stores no per-job timeout, so timeout is the setting aftercommit.job_timeout (SET aftercommit.job_timeout = ''5 min'', ALTER DATABASE … SET …, or jobs.StatsOpts.JobTimeout), else River''s default JobTimeout of 1 minute. Jobs of workers whose Timeout() is longer than that show up here early. '
'attempted_by is the client of the current attempt; running_for is now() - attempted_at.';
