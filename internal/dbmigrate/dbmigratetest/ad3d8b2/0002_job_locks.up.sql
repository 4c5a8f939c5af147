-- job_locks holds the leases of the worker lock and the global semaphore
-- (jobs.LockMiddleware). A key admits as many holders as it has permits:
-- each holder owns one slot 0..permits-1 of (namespace, lock_key), so the
-- primary key itself is what keeps a key from having more holders than
-- permits. A lease ends when its job returns (the row is deleted) or, when
-- the holder's process died, at expires_at, after which the next job takes
-- the slot over. Who holds what:
--
--   SELECT l.namespace, l.lock_key, l.slot, l.holder_job_id, j.kind, j.state,
--          l.holder_client, l.acquired_at, l.expires_at, l.expires_at < now() AS expired
--     FROM job_locks l LEFT JOIN river_job j ON j.id = l.holder_job_id
--    ORDER BY l.namespace, l.lock_key, l.slot;
--
-- Renewals rewrite only expires_at, which no index covers, so with room left
-- on each page (fillfactor) they are HOT updates.
CREATE TABLE job_locks (
    namespace     text        NOT NULL CHECK (namespace <> ''),
    lock_key      text        NOT NULL CHECK (lock_key <> ''),
    slot          integer     NOT NULL CHECK (slot >= 0),
    holder_job_id bigint      NOT NULL,
    holder_client text        NOT NULL DEFAULT '',
    acquired_at   timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (namespace, lock_key, slot)
) WITH (fillfactor = 70);

-- What a job holds, to release or inspect by job id.
CREATE INDEX job_locks_holder_job_id_idx ON job_locks (holder_job_id);
