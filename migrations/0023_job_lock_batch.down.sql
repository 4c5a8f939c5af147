DROP FUNCTION job_lock_batch(text[], text[], integer[], bigint[], text[], bigint[], boolean[], integer[]);
