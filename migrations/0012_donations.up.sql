-- The fundraising domain (package donations). Money is integer minor units
-- (cents), never floats. Counter caches (donations_count,
-- donations_total_cents) are kept by jobs and can be recomputed from
-- donations at any time.
CREATE TABLE users (
    id              bigserial   PRIMARY KEY,
    name            text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    email           text        NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    donations_count integer     NOT NULL DEFAULT 0 CHECK (donations_count >= 0),
    created_at      timestamptz NOT NULL DEFAULT now()
);
-- Addresses are unique whatever their case; the worker's fallback looks a
-- donor up by lower(email).
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));

CREATE TABLE fundraisers (
    id                    bigserial   PRIMARY KEY,
    name                  text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    donations_count       integer     NOT NULL DEFAULT 0 CHECK (donations_count >= 0),
    donations_total_cents bigint      NOT NULL DEFAULT 0 CHECK (donations_total_cents >= 0),
    created_at            timestamptz NOT NULL DEFAULT now()
);

-- An email sent to a user on behalf of a fundraiser. opens and clicks are
-- folded in from email_counter_deltas by jobs.
CREATE TABLE emails (
    id            bigserial   PRIMARY KEY,
    user_id       bigint      NOT NULL REFERENCES users (id),
    fundraiser_id bigint      NOT NULL REFERENCES fundraisers (id),
    opens         bigint      NOT NULL DEFAULT 0 CHECK (opens >= 0),
    clicks        bigint      NOT NULL DEFAULT 0 CHECK (clicks >= 0),
    donated       boolean     NOT NULL DEFAULT false,
    sent_at       timestamptz NOT NULL DEFAULT now()
);
-- The fallback look-up: the most recent email of a user for a fundraiser.
CREATE INDEX emails_user_fundraiser_sent_idx ON emails (user_id, fundraiser_id, sent_at DESC, id DESC);
CREATE INDEX emails_fundraiser_idx ON emails (fundraiser_id);

CREATE TABLE donations (
    id            bigserial   PRIMARY KEY,
    user_id       bigint      REFERENCES users (id),
    fundraiser_id bigint      NOT NULL REFERENCES fundraisers (id),
    email_id      bigint      REFERENCES emails (id),
    donor_email   text        NOT NULL CHECK (length(donor_email) BETWEEN 3 AND 254),
    amount_cents  bigint      NOT NULL CHECK (amount_cents > 0),
    currency      text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status        text        NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    note          text        NOT NULL DEFAULT '' CHECK (length(note) <= 2000),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX donations_fundraiser_idx ON donations (fundraiser_id) INCLUDE (amount_cents, status);
CREATE INDEX donations_user_idx ON donations (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX donations_email_idx ON donations (email_id) WHERE email_id IS NOT NULL;

-- Pending open/click increments, one tiny row per tracked event, folded into
-- emails by a queue-locked job per email and deleted in the same statement.
CREATE TABLE email_counter_deltas (
    id         bigserial   PRIMARY KEY,
    email_id   bigint      NOT NULL REFERENCES emails (id) ON DELETE CASCADE,
    opens      integer     NOT NULL DEFAULT 0 CHECK (opens >= 0),
    clicks     integer     NOT NULL DEFAULT 0 CHECK (clicks >= 0),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX email_counter_deltas_email_idx ON email_counter_deltas (email_id, id);
