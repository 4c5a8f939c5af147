package donations

// Every SQL statement of the donations domain, as named constants. Table
// names are unqualified: they resolve through the connection's search_path,
// like every aftercommit table.

// Donations and the email flag (donate.go, emailflag.go).

// donateInsertSQL checks the fundraiser, finds or creates the donor's user
// and inserts the donation, in one statement. No row comes back when the
// fundraiser does not exist, and then nothing was written. A user_id of NULL
// means another transaction created the donor's user after this statement's
// snapshot was taken (ON CONFLICT did nothing, and the row is not visible
// yet); Donate then looks it up again with donateFindUserSQL, whose new
// snapshot sees it. An email_id that names no email is stored as NULL: the
// link is a hint, the worker falls back to the donor's address.
//
// $1 fundraiser_id, $2 donor_email, $3 name of a new user, $4 email_id (0:
// none), $5 amount_cents, $6 currency, $7 status, $8 note.
const donateInsertSQL = `
WITH fundraiser AS (
    SELECT id FROM fundraisers WHERE id = $1
), found AS (
    SELECT id FROM users WHERE lower(email) = lower($2)
), created AS (
    INSERT INTO users (name, email)
    SELECT $3, $2 FROM fundraiser
     WHERE NOT EXISTS (SELECT 1 FROM found)
    ON CONFLICT ((lower(email))) DO NOTHING
    RETURNING id
)
INSERT INTO donations (user_id, fundraiser_id, email_id, donor_email, amount_cents, currency, status, note)
SELECT coalesce((SELECT id FROM found), (SELECT id FROM created)),
       fundraiser.id,
       (SELECT id FROM emails WHERE id = $4),
       $2, $5, $6, $7, $8
  FROM fundraiser
RETURNING id, user_id, coalesce(email_id, 0), created_at`

// donateFindUserSQL finds a user by address, whatever its case.
const donateFindUserSQL = `SELECT id FROM users WHERE lower(email) = lower($1)`

// donateSetUserSQL sets the user of a donation inserted without one.
const donateSetUserSQL = `UPDATE donations SET user_id = $2 WHERE id = $1`

// emailFlagStatusSQL reads what the needed-check needs: the donation's
// status.
const emailFlagStatusSQL = `SELECT status FROM donations WHERE id = $1`

// emailFlagLoadSQL loads the donation the worker flags an email for.
const emailFlagLoadSQL = `
SELECT fundraiser_id, coalesce(email_id, 0), donor_email, status
  FROM donations
 WHERE id = $1`

// emailFlagFindSQL finds the email that led to a donation: the one the link
// named ($1, 0 for none) when it was sent for the donation's fundraiser
// ($2); else the most recent email of that fundraiser to the user with the
// donor's address ($3). The second column says which rule matched.
const emailFlagFindSQL = `
SELECT id, matched_by
  FROM (
        SELECT e.id, 'email_id' AS matched_by, 1 AS rank
          FROM emails e
         WHERE e.id = $1 AND e.fundraiser_id = $2
        UNION ALL
        (SELECT e.id, 'address', 2
           FROM users u
           JOIN emails e ON e.user_id = u.id AND e.fundraiser_id = $2
          WHERE lower(u.email) = lower($3)
          ORDER BY e.sent_at DESC, e.id DESC
          LIMIT 1)
       ) candidates
 ORDER BY rank
 LIMIT 1`

// emailFlagSetSQL flags an email; no row is affected when it already was.
const emailFlagSetSQL = `UPDATE emails SET donated = true WHERE id = $1 AND NOT donated`

// The open/click counters (tracking.go) and the counter caches (counters.go).

// Tracking: one tiny row per tracked event (or per email of a batch).
const (
	// insertOpenDeltaSQL and insertClickDeltaSQL record one event. The
	// foreign key rejects an unknown email (23503, see fkDeltasEmail).
	insertOpenDeltaSQL  = `INSERT INTO email_counter_deltas (email_id, opens) VALUES ($1, 1)`
	insertClickDeltaSQL = `INSERT INTO email_counter_deltas (email_id, clicks) VALUES ($1, 1)`

	// insertDeltasSQL records a batch already summed per email: one row per
	// email.
	insertDeltasSQL = `
INSERT INTO email_counter_deltas (email_id, opens, clicks)
SELECT * FROM unnest($1::bigint[], $2::integer[], $3::integer[])`

	// fkDeltasEmail is the constraint that rejects a delta of an unknown
	// email.
	fkDeltasEmail = "email_counter_deltas_email_id_fkey"

	// foldEmailCountersSQL moves every pending delta of an email into the
	// email's counters in one statement: the rows it deletes are exactly the
	// rows it adds. A delta committed after the statement's snapshot is not
	// seen and stays for the next fold; a delta another fold is deleting
	// makes this DELETE wait for that transaction and then skip the row if
	// it was deleted. The email's row is not touched when there was nothing
	// to fold. No row comes back then.
	foldEmailCountersSQL = `
WITH d AS (
    DELETE FROM email_counter_deltas WHERE email_id = $1
    RETURNING opens, clicks
), s AS (
    SELECT count(*) AS n, coalesce(sum(opens), 0) AS opens, coalesce(sum(clicks), 0) AS clicks FROM d
)
UPDATE emails e
   SET opens = e.opens + s.opens, clicks = e.clicks + s.clicks
  FROM s
 WHERE e.id = $1 AND s.n > 0
RETURNING s.n, s.opens, s.clicks`

	// pendingDeltaEmailsSQL pages through the emails that have pending
	// deltas, for RefoldPending.
	pendingDeltaEmailsSQL = `
SELECT DISTINCT email_id FROM email_counter_deltas
 WHERE email_id > $1 ORDER BY email_id LIMIT $2`
)

// Counter caches: folded from the deltas the triggers on donations write,
// and recomputed from donations (counting succeeded donations only) to
// repair and to check them.
const (
	// lockFundraiserSQL and lockUserSQL serialize the recounts and folds of
	// one row:
	// the recount's UPDATE runs as a later statement, so its snapshot is
	// taken after every earlier recount of the row committed (see
	// recountFundraiserSQL).
	lockFundraiserSQL = `SELECT id FROM fundraisers WHERE id = $1 FOR NO KEY UPDATE`
	lockUserSQL       = `SELECT id FROM users WHERE id = $1 FOR NO KEY UPDATE`

	// recountFundraiserSQL recomputes a fundraiser's counter cache from its
	// succeeded donations and deletes the pending deltas it saw (they are
	// in the recount: counter + pending deltas = source, migration 0031),
	// marks the row checked, and returns what it wrote and what the row and
	// its deltas held before (the drift is the difference). Its subqueries
	// read the statement's snapshot even when the UPDATE has to wait for
	// the row, which is why the row is locked by an earlier statement
	// first: otherwise a recount with an older snapshot could commit last
	// and leave a stale count. Folds lock the row first too, so no fold
	// holds deltas this DELETE would wait for.
	recountFundraiserSQL = `
WITH folded AS (
    DELETE FROM fundraiser_counter_deltas WHERE fundraiser_id = $1
    RETURNING donations, cents
), pending AS (
    SELECT coalesce(sum(donations), 0) AS n, coalesce(sum(cents), 0) AS cents FROM folded
), src AS (
    SELECT count(*) AS n, coalesce(sum(amount_cents), 0) AS cents
      FROM donations WHERE fundraiser_id = $1 AND status = 'succeeded'
), before AS (
    SELECT donations_count, donations_total_cents FROM fundraisers WHERE id = $1
)
UPDATE fundraisers f
   SET donations_count = src.n, donations_total_cents = src.cents, counters_checked_at = now()
  FROM src, pending, before
 WHERE f.id = $1
RETURNING f.donations_count, f.donations_total_cents,
          before.donations_count + pending.n, before.donations_total_cents + pending.cents`

	// recountUserSQL is recountFundraiserSQL for a user's donations_count.
	recountUserSQL = `
WITH folded AS (
    DELETE FROM user_counter_deltas WHERE user_id = $1
    RETURNING donations
), pending AS (
    SELECT coalesce(sum(donations), 0) AS n FROM folded
), src AS (
    SELECT count(*) AS n FROM donations WHERE user_id = $1 AND status = 'succeeded'
), before AS (
    SELECT donations_count FROM users WHERE id = $1
)
UPDATE users u
   SET donations_count = src.n, counters_checked_at = now()
  FROM src, pending, before
 WHERE u.id = $1
RETURNING u.donations_count, before.donations_count + pending.n`

	// foldFundraiserCountersSQL moves every pending delta of a fundraiser
	// into its counter cache, like foldEmailCountersSQL: the rows it
	// deletes are exactly the rows it adds, and nothing comes back (the
	// row untouched) when there was nothing to fold. It runs after
	// lockFundraiserSQL, in the same transaction (see recountFundraiserSQL).
	foldFundraiserCountersSQL = `
WITH d AS (
    DELETE FROM fundraiser_counter_deltas WHERE fundraiser_id = $1
    RETURNING donations, cents
), s AS (
    SELECT count(*) AS n, coalesce(sum(donations), 0) AS donations, coalesce(sum(cents), 0) AS cents FROM d
)
UPDATE fundraisers f
   SET donations_count = f.donations_count + s.donations, donations_total_cents = f.donations_total_cents + s.cents
  FROM s
 WHERE f.id = $1 AND s.n > 0
RETURNING s.n, s.donations, s.cents`

	// foldUserCountersSQL is foldFundraiserCountersSQL for a user.
	foldUserCountersSQL = `
WITH d AS (
    DELETE FROM user_counter_deltas WHERE user_id = $1
    RETURNING donations
), s AS (
    SELECT count(*) AS n, coalesce(sum(donations), 0) AS donations FROM d
)
UPDATE users u
   SET donations_count = u.donations_count + s.donations
  FROM s
 WHERE u.id = $1 AND s.n > 0
RETURNING s.n, s.donations, 0::bigint`

	// pendingDeltaFundraisersSQL and pendingDeltaUsersSQL page through the
	// rows that have pending counter deltas, for RefoldPendingCounters.
	pendingDeltaFundraisersSQL = `
SELECT DISTINCT fundraiser_id FROM fundraiser_counter_deltas
 WHERE fundraiser_id > $1 ORDER BY fundraiser_id LIMIT $2`
	pendingDeltaUsersSQL = `
SELECT DISTINCT user_id FROM user_counter_deltas
 WHERE user_id > $1 ORDER BY user_id LIMIT $2`

	// oldestCheckedFundraisersSQL and oldestCheckedUsersSQL choose the
	// rows a reconciliation checks: never checked first, then checked
	// longest ago (fundraisers_counters_checked_idx, users_…).
	oldestCheckedFundraisersSQL = `SELECT id FROM fundraisers ORDER BY counters_checked_at NULLS FIRST, id LIMIT $1`
	oldestCheckedUsersSQL       = `SELECT id FROM users ORDER BY counters_checked_at NULLS FIRST, id LIMIT $1`

	// fundraiserExistsSQL and userExistsSQL check a repair request.
	fundraiserExistsSQL = `SELECT EXISTS (SELECT 1 FROM fundraisers WHERE id = $1)`
	userExistsSQL       = `SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)`

	// fundraiserIDsSQL and userIDsSQL page through every row, for the
	// RecountAll repairs.
	fundraiserIDsSQL = `SELECT id FROM fundraisers WHERE id > $1 ORDER BY id LIMIT $2`
	userIDsSQL       = `SELECT id FROM users WHERE id > $1 ORDER BY id LIMIT $2`
)
