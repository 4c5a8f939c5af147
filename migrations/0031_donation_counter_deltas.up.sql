-- Counter caches in O(new donations) (issue 21). A fundraiser's
-- donations_count and donations_total_cents, and a user's donations_count,
-- were recomputed from every succeeded donation by each recount job: a
-- fundraiser with a million donations read a million index entries per
-- recount. Now every change of a succeeded donation writes a delta row, in
-- the donation's own transaction (triggers, so any writer counts: Go, SQL,
-- Python), and a queue-locked fold job per fundraiser and per user moves its
-- pending deltas into the counters and deletes them, in one statement.
--
-- The invariant, in every snapshot: counter + sum(pending deltas) =
-- count (sum) of the succeeded donations. A recount (the repair) writes
-- the source and deletes the pending deltas it saw, in one statement of the
-- same snapshot; folds and recounts lock the counter's row before they
-- touch its deltas, so neither waits for the other's deltas.
--
-- No foreign keys: a delta is a derived row, its insert should not lock the
-- fundraiser or the user, and a fold of a row that no longer exists deletes
-- the deltas and changes nothing.
CREATE TABLE fundraiser_counter_deltas (
    id            bigserial   PRIMARY KEY,
    fundraiser_id bigint      NOT NULL,
    donations     integer     NOT NULL,
    cents         bigint      NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX fundraiser_counter_deltas_fundraiser_idx ON fundraiser_counter_deltas (fundraiser_id, id);

CREATE TABLE user_counter_deltas (
    id         bigserial   PRIMARY KEY,
    user_id    bigint      NOT NULL,
    donations  integer     NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX user_counter_deltas_user_idx ON user_counter_deltas (user_id, id);

COMMENT ON TABLE fundraiser_counter_deltas IS
'Pending changes of fundraisers.donations_count and donations_total_cents, written by triggers on donations and folded in by donations.fold_fundraiser_counters jobs.';
COMMENT ON TABLE user_counter_deltas IS
'Pending changes of users.donations_count, written by triggers on donations and folded in by donations.fold_user_counters jobs.';

-- donations_counter_deltas writes the deltas of one row change: the old
-- row's succeeded donation leaves the counters, the new row's enters.
CREATE FUNCTION donations_counter_deltas() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path FROM CURRENT
AS $fn$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.status = 'succeeded' THEN
        INSERT INTO fundraiser_counter_deltas (fundraiser_id, donations, cents)
        VALUES (OLD.fundraiser_id, -1, -OLD.amount_cents);
        IF OLD.user_id IS NOT NULL THEN
            INSERT INTO user_counter_deltas (user_id, donations) VALUES (OLD.user_id, -1);
        END IF;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.status = 'succeeded' THEN
        INSERT INTO fundraiser_counter_deltas (fundraiser_id, donations, cents)
        VALUES (NEW.fundraiser_id, 1, NEW.amount_cents);
        IF NEW.user_id IS NOT NULL THEN
            INSERT INTO user_counter_deltas (user_id, donations) VALUES (NEW.user_id, 1);
        END IF;
    END IF;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER donations_counter_deltas_insert
    AFTER INSERT ON donations
    FOR EACH ROW WHEN (NEW.status = 'succeeded')
    EXECUTE FUNCTION donations_counter_deltas();
CREATE TRIGGER donations_counter_deltas_delete
    AFTER DELETE ON donations
    FOR EACH ROW WHEN (OLD.status = 'succeeded')
    EXECUTE FUNCTION donations_counter_deltas();
CREATE TRIGGER donations_counter_deltas_update
    AFTER UPDATE OF status, amount_cents, fundraiser_id, user_id ON donations
    FOR EACH ROW WHEN ((OLD.status = 'succeeded' OR NEW.status = 'succeeded')
                       AND (OLD.status, OLD.amount_cents, OLD.fundraiser_id, OLD.user_id)
                           IS DISTINCT FROM (NEW.status, NEW.amount_cents, NEW.fundraiser_id, NEW.user_id))
    EXECUTE FUNCTION donations_counter_deltas();

-- When each row's counters were last checked against the donations (the
-- reconciliation job checks the oldest first).
ALTER TABLE fundraisers ADD COLUMN counters_checked_at timestamptz;
ALTER TABLE users ADD COLUMN counters_checked_at timestamptz;
CREATE INDEX fundraisers_counters_checked_idx ON fundraisers (counters_checked_at NULLS FIRST, id);
CREATE INDEX users_counters_checked_idx ON users (counters_checked_at NULLS FIRST, id);

INSERT INTO aftercommit_role_grants (role_kind, on_object, privileges)
SELECT k.kind, g.on_object, g.privileges
  FROM (VALUES ('app'), ('worker')) AS k (kind)
 CROSS JOIN (VALUES
    ('TABLE fundraiser_counter_deltas', 'SELECT, INSERT, UPDATE, DELETE'),
    ('TABLE user_counter_deltas', 'SELECT, INSERT, UPDATE, DELETE'),
    ('SEQUENCE fundraiser_counter_deltas_id_seq', 'USAGE'),
    ('SEQUENCE user_counter_deltas_id_seq', 'USAGE')
 ) AS g (on_object, privileges);

SELECT aftercommit_apply_grants();
