DELETE FROM aftercommit_role_grants
 WHERE on_object IN ('TABLE job_sequence_inbox', 'TABLE job_sequences', 'TABLE job_sequence_members',
                     'TABLE job_sequence_status', 'FUNCTION job_sequence_append(integer)');

DROP VIEW job_sequence_status;
DROP TRIGGER river_job_sequence_leave ON river_job;
DROP TRIGGER river_job_sequence_advance ON river_job;
DROP FUNCTION aftercommit_sequence_advance();
DROP FUNCTION job_sequence_append(integer);
DROP FUNCTION aftercommit_sequence_release(job_sequences);
DROP TABLE job_sequence_members;
DROP TABLE job_sequences;
DROP TABLE job_sequence_inbox;

SELECT aftercommit_apply_grants();
