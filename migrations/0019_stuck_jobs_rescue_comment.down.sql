COMMENT ON VIEW stuck_jobs IS
'Jobs in state running whose attempt started more than timeout ago (attempted_at < now() - timeout): a worker that ignores its cancelled context, or a process that died; River''s rescuer retries or discards them after RescueStuckJobsAfter (default 1 hour). '
'River stores no per-job timeout, so timeout is the setting aftercommit.job_timeout (SET aftercommit.job_timeout = ''5 min'', ALTER DATABASE … SET …, or jobs.StatsOpts.JobTimeout), else River''s default JobTimeout of 1 minute. Jobs of workers whose Timeout() is longer than that show up here early. '
'attempted_by is the client of the current attempt; running_for is now() - attempted_at.';
