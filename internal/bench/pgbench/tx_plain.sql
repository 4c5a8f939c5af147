-- One domain row per transaction: the baseline of BenchmarkTxOneJob.
BEGIN;
INSERT INTO pings (note) VALUES ('bench') RETURNING id;
COMMIT;
