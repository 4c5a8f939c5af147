DELETE FROM aftercommit_role_grants
 WHERE on_object IN ('TABLE outbox_jobs', 'TABLE outbox_dead_jobs', 'TABLE outbox_depth',
                     'FUNCTION aftercommit_enqueue(text, jsonb, text, integer, integer, timestamptz, jsonb, jsonb)');

DROP FUNCTION aftercommit_enqueue(text, jsonb, text, integer, integer, timestamptz, jsonb, jsonb);
DROP VIEW outbox_depth;
DROP TABLE outbox_dead_jobs;
DROP TABLE outbox_jobs;

SELECT aftercommit_apply_grants();
