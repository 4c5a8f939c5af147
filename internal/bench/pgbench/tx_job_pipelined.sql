-- The same transaction plus one river_job row, sent with the COMMIT in one
-- pipeline: the round trips of outbox.InTx, with the least SQL a job needs.
BEGIN;
INSERT INTO pings (note) VALUES ('bench') RETURNING id;
\startpipeline
INSERT INTO river_job (args, kind, max_attempts, priority, queue, state, scheduled_at)
  VALUES ('{"ping_id": 1}', 'aftercommit.ping', 25, 1, 'default', 'available', now()) RETURNING id;
COMMIT;
\endpipeline
