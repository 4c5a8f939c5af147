DELETE FROM aftercommit_role_grants
 WHERE on_object IN ('TABLE job_rate_limits', 'TABLE job_rate_limit_status',
                     'FUNCTION job_rate_admit(text, text, integer, interval, timestamptz)');

DROP VIEW job_rate_limit_status;
DROP FUNCTION job_rate_admit(text, text, integer, interval, timestamptz);
DROP FUNCTION job_rate_admit_many(text[], text[], integer[], interval[], timestamptz[], bigint[], boolean[]);
DROP TABLE job_rate_limits;

SELECT aftercommit_apply_grants();
