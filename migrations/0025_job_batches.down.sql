DELETE FROM aftercommit_role_grants
 WHERE on_object IN ('TABLE job_batch_status', 'TABLE job_batches', 'TABLE job_batch_members');

DROP VIEW job_batch_status;
DROP TRIGGER river_job_batch_leave ON river_job;
DROP TRIGGER river_job_batch_finish ON river_job;
DROP FUNCTION aftercommit_batch_member_finished();
DROP FUNCTION aftercommit_batch_count(river_job, text);
DROP FUNCTION job_batch_add_many(uuid[], integer[], boolean[], boolean[], jsonb[], jsonb[]);
DROP FUNCTION aftercommit_batch_fire(job_batches);
DROP TABLE job_batch_members;
DROP TABLE job_batches;

SELECT aftercommit_apply_grants();
