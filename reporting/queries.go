package reporting

// Every SQL statement of the reporting domain, as named constants. Table
// names are unqualified: they resolve through the connection's search_path,
// like every aftercommit table. users, fundraisers and donations are the
// donations domain's tables, read here and never written.

// Cars and their users (cars.go, carusers.go).
const (
	// insertCarSQL creates a car.
	insertCarSQL = `INSERT INTO cars (name) VALUES ($1) RETURNING id`

	// carExistsSQL is the first check of a bulk creation.
	carExistsSQL = `SELECT EXISTS (SELECT 1 FROM cars WHERE id = $1)`

	// unknownUsersSQL is the second: of the IDs $1, those that name no
	// user, smallest first, at most $2 of them, each with the count of all
	// of them.
	unknownUsersSQL = `
SELECT count(*) OVER (), u.id
  FROM unnest($1::bigint[]) AS u(id)
 WHERE NOT EXISTS (SELECT 1 FROM users WHERE users.id = u.id)
 ORDER BY u.id
 LIMIT $2`

	// insertCarUsersSQL inserts the pairs of car $1 with every user of $2
	// that it does not have yet, in one statement. $2 is sorted, so two
	// transactions adding overlapping users to a car take the rows' locks
	// in the same order and never deadlock; a pair another transaction is
	// inserting makes this one wait for it, then skip the pair.
	insertCarUsersSQL = `
INSERT INTO car_users (car_id, user_id)
SELECT $1, u.id FROM unnest($2::bigint[]) AS u(id)
ON CONFLICT (car_id, user_id) DO NOTHING`

	// insertCarUserSQL is insertCarUsersSQL for one user. The foreign keys
	// reject an unknown car or user (fkCarUsersCar, fkCarUsersUser).
	insertCarUserSQL = `
INSERT INTO car_users (car_id, user_id) VALUES ($1, $2)
ON CONFLICT (car_id, user_id) DO NOTHING`

	// The constraints that reject a pair of an unknown car or user.
	fkCarUsersCar  = "car_users_car_id_fkey"
	fkCarUsersUser = "car_users_user_id_fkey"
)

// The car report (carreport.go).
const (
	// lockCarSQL serializes the reports of one car: the recount runs as a
	// later statement, so its snapshot is taken after every earlier report
	// of the car committed. FOR NO KEY UPDATE does not conflict with the
	// key-share lock that inserting a pair takes, so additions never wait
	// for a report.
	lockCarSQL = `SELECT id FROM cars WHERE id = $1 FOR NO KEY UPDATE`

	// recountCarSQL recomputes a car's report from car_users and writes
	// it.
	recountCarSQL = `
INSERT INTO car_reports (car_id, users_count, last_user_added_at, computed_at)
SELECT $1, count(*), max(created_at), now() FROM car_users WHERE car_id = $1
ON CONFLICT (car_id) DO UPDATE
   SET users_count = excluded.users_count,
       last_user_added_at = excluded.last_user_added_at,
       computed_at = excluded.computed_at
RETURNING users_count, last_user_added_at`

	// carReportSQL reads a car's report; the second column is false when
	// the car exists but has had no report yet, and no row comes back for
	// an unknown car.
	carReportSQL = `
SELECT r.car_id IS NOT NULL, coalesce(r.users_count, 0), r.last_user_added_at, r.computed_at
  FROM cars c LEFT JOIN car_reports r ON r.car_id = c.id
 WHERE c.id = $1`
)

// Daily donation totals (rollups.go). A day is a UTC day; a donation counts
// when its status is 'succeeded', as in the donations domain's own counter
// caches.
//
// Every statement that recomputes rows of fundraiser_daily_totals first
// locks them (creating the missing ones) in (fundraiser_id, day) order, then
// recomputes them in a later statement of the same read-committed
// transaction, whose snapshot therefore follows the commit of every earlier
// recount of those rows. Since every locker takes its rows in that one
// order, two recounts never deadlock.
const (
	// lockRollupWindowSQL locks the rows of fundraiser $1 for the days
	// around $2: the day before, the day, the day after.
	lockRollupWindowSQL = `
INSERT INTO fundraiser_daily_totals AS t (fundraiser_id, day, donations_count, total_cents)
SELECT $1, $2::date + o, 0, 0 FROM generate_series(-1, 1) AS o
 ORDER BY o
ON CONFLICT (fundraiser_id, day) DO UPDATE SET computed_at = now()
RETURNING t.fundraiser_id, t.day`

	// lockRollupDaySQL locks, for Backfill, the rows of day $1 of every
	// fundraiser that has succeeded donations that day or a row already.
	lockRollupDaySQL = `
INSERT INTO fundraiser_daily_totals AS t (fundraiser_id, day, donations_count, total_cents)
SELECT f.fundraiser_id, $1::date, 0, 0
  FROM (SELECT fundraiser_id FROM donations
         WHERE status = 'succeeded'
           AND created_at >= $1::date::timestamp AT TIME ZONE 'UTC'
           AND created_at < ($1::date + 1)::timestamp AT TIME ZONE 'UTC'
        UNION
        SELECT fundraiser_id FROM fundraiser_daily_totals WHERE day = $1::date) AS f
 ORDER BY f.fundraiser_id
ON CONFLICT (fundraiser_id, day) DO UPDATE SET computed_at = now()
RETURNING t.fundraiser_id, t.day`

	// recountRollupsSQL recomputes the rows (fundraiser_id $1[i], day
	// $2[i]), all locked by this transaction, from the succeeded donations:
	// a row with donations gets their count and sum, a row without is
	// deleted. It returns the rows written, the rows deleted and the
	// donations counted.
	recountRollupsSQL = `
WITH k AS (
    SELECT * FROM unnest($1::bigint[], $2::date[]) AS k(fundraiser_id, day)
), actual AS (
    SELECT k.fundraiser_id, k.day, count(d.amount_cents) AS n, coalesce(sum(d.amount_cents), 0) AS total
      FROM k
      LEFT JOIN donations d
        ON d.fundraiser_id = k.fundraiser_id
       AND d.status = 'succeeded'
       AND d.created_at >= k.day::timestamp AT TIME ZONE 'UTC'
       AND d.created_at < (k.day + 1)::timestamp AT TIME ZONE 'UTC'
     GROUP BY k.fundraiser_id, k.day
), written AS (
    UPDATE fundraiser_daily_totals t
       SET donations_count = a.n, total_cents = a.total, computed_at = now()
      FROM actual a
     WHERE t.fundraiser_id = a.fundraiser_id AND t.day = a.day AND a.n > 0
    RETURNING t.donations_count
), deleted AS (
    DELETE FROM fundraiser_daily_totals t
     USING actual a
     WHERE t.fundraiser_id = a.fundraiser_id AND t.day = a.day AND a.n = 0
    RETURNING 1
)
SELECT (SELECT count(*) FROM written), (SELECT count(*) FROM deleted),
       (SELECT coalesce(sum(donations_count), 0) FROM written)`
)
