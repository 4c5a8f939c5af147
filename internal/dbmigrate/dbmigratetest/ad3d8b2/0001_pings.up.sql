-- pings are the smallest domain row there is: the ping job (jobs.PingArgs)
-- marks one as pinged. Tests, benchmarks and health checks use them to prove a
-- write and its job committed together and the job ran exactly once.
CREATE TABLE pings (
    id         bigserial   PRIMARY KEY,
    note       text        NOT NULL DEFAULT '' CHECK (length(note) <= 1024),
    created_at timestamptz NOT NULL DEFAULT now(),
    pinged_at  timestamptz,
    ping_count integer     NOT NULL DEFAULT 0 CHECK (ping_count >= 0)
);
