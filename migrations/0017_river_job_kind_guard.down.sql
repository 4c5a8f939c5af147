DROP TRIGGER IF EXISTS river_job_kind_guard ON river_job;
DROP FUNCTION IF EXISTS aftercommit_river_job_kind_guard();
