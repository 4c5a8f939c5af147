DROP VIEW IF EXISTS failing_jobs;
DROP VIEW IF EXISTS stuck_jobs;
DROP VIEW IF EXISTS queue_depth;
DROP VIEW IF EXISTS job_kind_stats;
