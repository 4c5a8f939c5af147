DELETE FROM aftercommit_role_grants
 WHERE on_object IN ('TABLE fundraiser_counter_deltas', 'TABLE user_counter_deltas',
                     'SEQUENCE fundraiser_counter_deltas_id_seq', 'SEQUENCE user_counter_deltas_id_seq');

-- The pending deltas go into the counters first: the recounts of before
-- this migration take over from an exact state.
UPDATE fundraisers AS f
   SET donations_count = f.donations_count + d.donations, donations_total_cents = f.donations_total_cents + d.cents
  FROM (SELECT fundraiser_id, sum(donations) AS donations, sum(cents) AS cents
          FROM fundraiser_counter_deltas GROUP BY fundraiser_id) AS d
 WHERE f.id = d.fundraiser_id;
UPDATE users AS u
   SET donations_count = u.donations_count + d.donations
  FROM (SELECT user_id, sum(donations) AS donations FROM user_counter_deltas GROUP BY user_id) AS d
 WHERE u.id = d.user_id;

DROP TRIGGER donations_counter_deltas_update ON donations;
DROP TRIGGER donations_counter_deltas_delete ON donations;
DROP TRIGGER donations_counter_deltas_insert ON donations;
DROP FUNCTION donations_counter_deltas();
DROP INDEX users_counters_checked_idx;
DROP INDEX fundraisers_counters_checked_idx;
ALTER TABLE users DROP COLUMN counters_checked_at;
ALTER TABLE fundraisers DROP COLUMN counters_checked_at;
DROP TABLE user_counter_deltas;
DROP TABLE fundraiser_counter_deltas;

SELECT aftercommit_apply_grants();
