-- The lean outbox insert's floor: the transaction of tx_plain.sql plus one
-- outbox_jobs row (kind and args only, as outbox.InTx writes it by default),
-- sent with the COMMIT in one pipeline, as tx_job_pipelined.sql sends its
-- river_job row.
BEGIN;
INSERT INTO pings (note) VALUES ('bench') RETURNING id;
\startpipeline
INSERT INTO outbox_jobs (kind, args) VALUES ('ping', '{"ping_id":1}');
COMMIT;
\endpipeline
