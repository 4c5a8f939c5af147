-- The reporting domain (package reporting): cars and the users who drive
-- them, a per-car report recomputed from car_users by jobs, and daily
-- donation totals per fundraiser recomputed from donations by jobs.
--
-- users, fundraisers and donations belong to the donations domain
-- (0004_donations). Reporting reads them by SQL only and never writes them:
-- car_users references the shared users table (one identity per person in
-- the application), and the rollups are recomputed from donations, their
-- source of truth. The two partial indexes on donations at the end are
-- reporting's read paths; they are dropped with this migration.

CREATE TABLE cars (
    id         bigserial   PRIMARY KEY,
    name       text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The source of truth of a car's users: one row per (car, user) pair.
-- Deleting a car removes its pairs; a user who drives a car cannot be
-- deleted (NO ACTION), so no pair disappears without a report job.
CREATE TABLE car_users (
    car_id     bigint      NOT NULL REFERENCES cars (id) ON DELETE CASCADE,
    user_id    bigint      NOT NULL REFERENCES users (id),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (car_id, user_id)
);
-- The foreign key's check when a user is deleted.
CREATE INDEX car_users_user_idx ON car_users (user_id);

-- A car's report, recomputed from car_users by a CarReport job (never
-- incremented). A car without a row has had no report yet.
CREATE TABLE car_reports (
    car_id             bigint      PRIMARY KEY REFERENCES cars (id) ON DELETE CASCADE,
    users_count        integer     NOT NULL CHECK (users_count >= 0),
    -- The created_at of the car's newest pair; NULL when it has none.
    last_user_added_at timestamptz,
    computed_at        timestamptz NOT NULL DEFAULT now()
);

-- Succeeded donations per fundraiser and UTC day, recomputed from donations
-- by small jobs (and by Backfill). A (fundraiser, day) without succeeded
-- donations has no row, so the table equals
--   SELECT fundraiser_id, (created_at AT TIME ZONE 'UTC')::date, count(*), sum(amount_cents)
--     FROM donations WHERE status = 'succeeded' GROUP BY 1, 2
-- once the queue has drained. No foreign key: it is derived data, and a
-- key check would lock the fundraiser's row on every recount.
CREATE TABLE fundraiser_daily_totals (
    fundraiser_id   bigint      NOT NULL,
    day             date        NOT NULL,
    donations_count integer     NOT NULL CHECK (donations_count >= 0),
    total_cents     bigint      NOT NULL CHECK (total_cents >= 0),
    computed_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (fundraiser_id, day)
);

-- A rollup job reads one fundraiser's succeeded donations over three days;
-- Backfill reads every succeeded donation of a day.
CREATE INDEX donations_reporting_fundraiser_day_idx ON donations (fundraiser_id, created_at)
    INCLUDE (amount_cents) WHERE status = 'succeeded';
CREATE INDEX donations_reporting_day_idx ON donations (created_at)
    INCLUDE (fundraiser_id) WHERE status = 'succeeded';
