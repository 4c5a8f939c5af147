-- What holds back vacuum, and what it costs River's and aftercommit's
-- tables. A transaction (or a prepared transaction, or a replication slot)
-- whose snapshot is old keeps every row version deleted since then: the
-- finished jobs River deletes, the outbox rows the relay moves, the lock
-- rows the workers release. Their dead tuples pile up, River's fetch scans
-- them, and throughput falls while latency climbs, until that snapshot ends.
--
--   SELECT * FROM db_vacuum_holdback;   -- who holds it back, oldest first
--   SELECT * FROM db_table_health;      -- dead tuples of the job tables
--
-- Seeing other roles' sessions in pg_stat_activity needs pg_read_all_stats
-- (or pg_monitor): without it Postgres hides their snapshots, and only the
-- role's own sessions (and prepared transactions and slots) show here.

CREATE VIEW db_vacuum_holdback AS
SELECT 'session'::text                        AS holder,
       a.pid,
       a.usename::text                        AS usename,
       a.application_name,
       a.client_addr::text                    AS client_addr,
       a.backend_type,
       a.state,
       age(a.backend_xmin)                    AS xmin_age,
       now() - a.xact_start                   AS held_for,
       left(a.query, 200)                     AS query
  FROM pg_stat_activity a
 WHERE a.pid <> pg_backend_pid()
   AND (a.datname = current_database() OR a.backend_type = 'walsender')
   AND a.backend_xmin IS NOT NULL
UNION ALL
SELECT 'prepared transaction', NULL, p.owner::text, p.gid, NULL, NULL, 'prepared',
       age(p.transaction), now() - p.prepared, NULL
  FROM pg_prepared_xacts p
 WHERE p.database = current_database()
UNION ALL
SELECT 'replication slot', NULL, NULL, s.slot_name::text, NULL, s.slot_type, CASE WHEN s.active THEN 'active' ELSE 'inactive' END,
       greatest(age(s.xmin), age(s.catalog_xmin)), NULL, NULL
  FROM pg_replication_slots s
 WHERE s.xmin IS NOT NULL OR s.catalog_xmin IS NOT NULL;

COMMENT ON VIEW db_vacuum_holdback IS
'Sessions, prepared transactions and replication slots whose snapshot holds back vacuum in this database: xmin_age in transactions, held_for since the transaction began. Oldest first: ORDER BY xmin_age DESC NULLS LAST.';

CREATE VIEW db_table_health AS
SELECT s.relname::text              AS table_name,
       s.n_live_tup                 AS live_tuples,
       s.n_dead_tup                 AS dead_tuples,
       s.last_autovacuum,
       s.last_vacuum,
       s.autovacuum_count,
       pg_total_relation_size(s.relid) AS total_bytes
  FROM pg_stat_user_tables s
 WHERE s.schemaname = current_schema()
   AND s.relname IN ('river_job', 'river_leader', 'river_queue', 'river_client', 'river_client_queue',
                     'outbox_jobs', 'outbox_events', 'outbox_dead_jobs', 'job_locks', 'job_rate_limits',
                     'job_batches', 'job_batch_members', 'job_refs', 'job_waits');

COMMENT ON VIEW db_table_health IS
'Live and dead tuples, last vacuums and size of River''s and aftercommit''s tables in the current schema (pg_stat_user_tables).';

INSERT INTO aftercommit_role_grants (role_kind, on_object, privileges) VALUES
    ('app', 'TABLE db_vacuum_holdback', 'SELECT'),
    ('app', 'TABLE db_table_health', 'SELECT'),
    ('worker', 'TABLE db_vacuum_holdback', 'SELECT'),
    ('worker', 'TABLE db_table_health', 'SELECT');

SELECT aftercommit_apply_grants();
