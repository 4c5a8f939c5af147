DELETE FROM aftercommit_role_grants
 WHERE on_object IN ('TABLE job_dependency_status', 'TABLE job_refs', 'TABLE job_waits', 'FUNCTION job_fan_in_prune(interval, integer)');

DROP FUNCTION job_fan_in_prune(interval, integer);
DROP VIEW job_dependency_status;
DROP TRIGGER river_job_ref_leave ON river_job;
DROP TRIGGER river_job_ref_finish ON river_job;
DROP TRIGGER river_job_ref_insert ON river_job;
DROP FUNCTION aftercommit_job_ref_finished();
DROP FUNCTION aftercommit_job_ref_insert();
DROP FUNCTION aftercommit_dependency_error(uuid, text);
DROP TABLE job_waits;
DROP TABLE job_refs;

SELECT aftercommit_apply_grants();
