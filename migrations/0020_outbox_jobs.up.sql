-- outbox_jobs: the lean, append-only outbox a business transaction writes
-- its follow-up jobs to. It holds the least a transaction must write — the
-- kind and its args — plus nullable columns a caller fills only for what it
-- chose; everything else (the kind's queue, priority and attempts, queue
-- locks, payload limits) is applied by the relay when it moves committed
-- rows into river_job. A writer only ever INSERTs: no update, no upsert, no
-- row another writer needs, so writers of one key never wait for each other.
--
-- Any producer that can run an INSERT can enqueue: aftercommit's Go outbox
-- (the default path of InTx, Tx.Enqueue, Outbox.Enqueue, Batch.Flush and
-- Publish's subscriptions), psql, a trigger, or another language:
--
--   INSERT INTO outbox_jobs (kind, args) VALUES ('ping', '{"ping_id": 42}');
--   SELECT aftercommit_enqueue('ping', '{"ping_id": 42}');
--
-- The relay (every cmd/worker process, any in-process relay) takes committed
-- rows oldest first with FOR UPDATE SKIP LOCKED, inserts them into river_job
-- through River's insert path and deletes them in ONE transaction: a row
-- becomes a job exactly once, however many relays run and whenever one dies.
-- A row the relay cannot accept (unknown kind, args that do not decode for
-- the kind, a bad option, too large) moves to outbox_dead_jobs with the
-- reason, and never holds up the rows behind it.
--
-- options holds River's rarer insert options as JSON, each optional:
--   {"tags": ["a", "b"], "pending": true,
--    "unique": {"by_args": true, "by_period": 3600, "by_queue": true,
--               "by_state": ["available", "running"], "exclude_kind": true}}
-- by_period is in seconds.
--
-- tx_id is the writing transaction (xid8), as in outbox_events: reading in
-- (tx_id, id) order below the oldest running transaction gives commit order.
CREATE TABLE outbox_jobs (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind         text        NOT NULL,
    args         jsonb       NOT NULL,
    queue        text,
    priority     integer,
    max_attempts integer,
    scheduled_at timestamptz,
    metadata     jsonb,
    options      jsonb,
    tx_id        xid8        NOT NULL DEFAULT pg_current_xact_id(),
    created_at   timestamptz NOT NULL DEFAULT now()
) WITH (
    -- A queue table: every row is inserted once and deleted within
    -- milliseconds. Vacuum it after a fixed number of dead rows, whatever
    -- its size, and without the cost-based pauses, so the dead tuples at
    -- the head the relay reads stay few (RELIABILITY.md, "The outbox table").
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 20000,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 20000
);

COMMENT ON TABLE outbox_jobs IS
'The append-only job outbox: business transactions INSERT (kind, args[, queue, priority, max_attempts, scheduled_at, metadata, options]); the relay moves committed rows into river_job and deletes them in one transaction. Never UPDATE these rows. See aftercommit_enqueue() and outbox_depth.';

-- outbox_dead_jobs: the rows the relay could not turn into a job, kept with
-- the reason until an operator fixes and re-enqueues them:
--
--   INSERT INTO outbox_jobs (kind, args, queue, priority, max_attempts, scheduled_at, metadata, options)
--   SELECT kind, args, queue, priority, max_attempts, scheduled_at, metadata, options
--     FROM outbox_dead_jobs WHERE id = $1;
--   DELETE FROM outbox_dead_jobs WHERE id = $1;
CREATE TABLE outbox_dead_jobs (
    id           bigint      PRIMARY KEY, -- the outbox_jobs id it had
    kind         text        NOT NULL,
    args         jsonb       NOT NULL,
    queue        text,
    priority     integer,
    max_attempts integer,
    scheduled_at timestamptz,
    metadata     jsonb,
    options      jsonb,
    tx_id        xid8        NOT NULL,
    created_at   timestamptz NOT NULL,
    dead_at      timestamptz NOT NULL DEFAULT now(),
    reason       text        NOT NULL
);

CREATE INDEX outbox_dead_jobs_dead_at_idx ON outbox_dead_jobs (dead_at);

COMMENT ON TABLE outbox_dead_jobs IS
'Outbox rows the relay refused (unknown kind, args that do not decode, a bad option, too large), with the reason; nothing is dropped. Fix and INSERT them into outbox_jobs again, then delete them here.';

-- outbox_depth: one row, what waits in the outbox and what died there.
CREATE VIEW outbox_depth AS
SELECT o.depth,
       o.oldest_created_at,
       coalesce(now() - o.oldest_created_at, interval '0') AS oldest_age,
       d.dead,
       d.last_dead_at
  FROM (SELECT count(*) AS depth, min(created_at) AS oldest_created_at FROM outbox_jobs) AS o,
       (SELECT count(*) AS dead, max(dead_at) AS last_dead_at FROM outbox_dead_jobs) AS d;

COMMENT ON VIEW outbox_depth IS
'depth: outbox rows not yet relayed into river_job (committed or not: an uncommitted row is counted by its own transaction only); oldest_age: how long the oldest has waited (now() - its transaction''s start); dead: rows the relay refused (outbox_dead_jobs), last_dead_at the latest.';

-- aftercommit_enqueue: the SQL producer's enqueue, one outbox row. The
-- table it writes is the one of the schema this migration ran in, whatever
-- the caller's search_path.
CREATE FUNCTION aftercommit_enqueue(
    kind         text,
    args         jsonb       DEFAULT '{}',
    queue        text        DEFAULT NULL,
    priority     integer     DEFAULT NULL,
    max_attempts integer     DEFAULT NULL,
    scheduled_at timestamptz DEFAULT NULL,
    metadata     jsonb       DEFAULT NULL,
    options      jsonb       DEFAULT NULL
) RETURNS bigint
    LANGUAGE sql
    SET search_path FROM CURRENT
AS $fn$
    INSERT INTO outbox_jobs (kind, args, queue, priority, max_attempts, scheduled_at, metadata, options)
    VALUES (kind, args, queue, priority, max_attempts, scheduled_at, metadata, options)
    RETURNING id;
$fn$;

COMMENT ON FUNCTION aftercommit_enqueue(text, jsonb, text, integer, integer, timestamptz, jsonb, jsonb) IS
'Enqueues a job in the current transaction: one outbox_jobs row, relayed into river_job once the transaction commits (nothing if it rolls back). NULL options take the kind''s registered defaults. Returns the outbox row id (not a river_job id).';

INSERT INTO aftercommit_role_grants (role_kind, on_object, privileges) VALUES
    ('app', 'TABLE outbox_jobs', 'SELECT, INSERT'),
    ('app', 'TABLE outbox_dead_jobs', 'SELECT'),
    ('app', 'TABLE outbox_depth', 'SELECT'),
    ('app', 'FUNCTION aftercommit_enqueue(text, jsonb, text, integer, integer, timestamptz, jsonb, jsonb)', 'EXECUTE'),
    -- The relay: read and delete what it moves, write dead rows. Its
    -- SELECT … FOR UPDATE SKIP LOCKED needs the UPDATE privilege of one
    -- column: id's. An identity column GENERATED ALWAYS refuses any value
    -- but "SET id = DEFAULT" (a new number, which nothing does), so the
    -- worker can change no kind, args or option.
    ('worker', 'TABLE outbox_jobs', 'SELECT, INSERT, DELETE, UPDATE (id)'),
    ('worker', 'TABLE outbox_dead_jobs', 'SELECT, INSERT, DELETE'),
    ('worker', 'TABLE outbox_depth', 'SELECT'),
    ('worker', 'FUNCTION aftercommit_enqueue(text, jsonb, text, integer, integer, timestamptz, jsonb, jsonb)', 'EXECUTE');

SELECT aftercommit_apply_grants();
