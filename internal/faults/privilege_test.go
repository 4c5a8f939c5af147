//go:build long

package faults_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/donations"
	"github.com/aftercommit/aftercommit/internal/app"
	"github.com/aftercommit/aftercommit/internal/dbroles/dbrolestest"
	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/testlog"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
)

// privilegeCase is one line of the allow/deny table: a statement run as a
// role, in a transaction that is rolled back, and whether the role may run
// it. A denied statement must fail with SQLSTATE 42501
// (insufficient_privilege), nothing else.
type privilegeCase struct {
	role    string // "app" or "worker"
	what    string // the table's wording
	sql     string // {schema} is the schema, quoted
	allowed bool
	noTx    bool // cannot run in a transaction block (REINDEX CONCURRENTLY); must be denied
}

// privilegeCases is the allow/deny table of RELIABILITY.md. Job ids come
// from the test's own jobs: $job is a completed job.
func privilegeCases() []privilegeCase {
	const (
		insertJob   = `INSERT INTO river_job (args, kind, max_attempts, priority, queue, state) VALUES ('{}', 'ping', 25, 1, 'default', 'available')`
		aJob        = `(SELECT min(id) FROM river_job WHERE state = 'completed')`
		insertEvent = `INSERT INTO outbox_events (topic, payload) VALUES ('donation.created', '{}')`
		insertLock  = `INSERT INTO job_locks (namespace, lock_key, slot, holder_job_id, expires_at) VALUES ('t', 'k', 0, 1, now())`
	)
	var cases []privilegeCase
	add := func(role, what, sql string, allowed bool) {
		cases = append(cases, privilegeCase{role: role, what: what, sql: sql, allowed: allowed})
	}
	for _, role := range []string{"app", "worker"} {
		worker := role == "worker"
		add(role, "INSERT a job (river_job)", insertJob, true)
		add(role, "SELECT jobs", `SELECT count(*) FROM river_job`, true)
		add(role, "UPDATE a job's state (finish, retry, cancel)", `UPDATE river_job SET state = 'available', finalized_at = NULL WHERE id = `+aJob, worker)
		add(role, "UPDATE a job's args", `UPDATE river_job SET args = '{"x": 1}' WHERE id = `+aJob, worker)
		add(role, "UPDATE a job's kind to another kind", `UPDATE river_job SET kind = 'other' WHERE id = `+aJob, false)
		add(role, "UPDATE river_job SET kind = kind (River's ON CONFLICT no-op)", `UPDATE river_job SET kind = kind WHERE id = `+aJob, true)
		add(role, "SELECT jobs FOR UPDATE", `SELECT id FROM river_job WHERE id = `+aJob+` FOR UPDATE`, true)
		add(role, "DELETE a job", `DELETE FROM river_job WHERE id = `+aJob, worker)
		add(role, "TRUNCATE river_job", `TRUNCATE river_job`, false)
		add(role, "DROP TABLE river_job", `DROP TABLE river_job`, false)
		add(role, "ALTER TABLE river_job (disable the kind guard)", `ALTER TABLE river_job DISABLE TRIGGER river_job_kind_guard`, false)
		add(role, "REINDEX INDEX river_job_args_index", `REINDEX INDEX river_job_args_index`, false)
		cases = append(cases, privilegeCase{role: role, what: "REINDEX INDEX CONCURRENTLY (River's reindexer)",
			sql: `REINDEX INDEX CONCURRENTLY river_job_args_index`, noTx: true})
		add(role, "INSERT a job into the outbox (outbox_jobs)", `INSERT INTO outbox_jobs (kind, args) VALUES ('aftercommit.ping', '{"ping_id": 0}')`, true)
		add(role, "SELECT aftercommit_enqueue(…)", `SELECT aftercommit_enqueue('aftercommit.ping', '{"ping_id": 0}')`, true)
		add(role, "SELECT outbox rows, dead rows, outbox_depth", `SELECT (SELECT count(*) FROM outbox_jobs) + (SELECT count(*) FROM outbox_dead_jobs) + (SELECT depth FROM outbox_depth)`, true)
		add(role, "DELETE outbox rows (the relay)", `DELETE FROM outbox_jobs`, worker)
		add(role, "UPDATE an outbox row", `UPDATE outbox_jobs SET kind = 'x'`, false)
		add(role, "INSERT a dead row (the relay)", `INSERT INTO outbox_dead_jobs (id, kind, args, tx_id, created_at, reason) VALUES (1, 'k', '{}', '1', now(), 'r')`, worker)
		add(role, "INSERT an event (outbox_events)", insertEvent, true)
		add(role, "SELECT events", `SELECT count(*) FROM outbox_events`, true)
		add(role, "UPDATE an event", `UPDATE outbox_events SET topic = 'x'`, false)
		add(role, "DELETE events (the pruner)", `DELETE FROM outbox_events`, worker)
		add(role, "SELECT job_locks", `SELECT count(*) FROM job_locks`, worker)
		add(role, "INSERT a lease (job_locks)", insertLock, worker)
		add(role, "SELECT river_leader", `SELECT count(*) FROM river_leader`, worker)
		add(role, "UPDATE river_queue (pause a queue)", `UPDATE river_queue SET paused_at = now()`, worker)
		add(role, "SELECT river_migration, schema_migrations", `SELECT (SELECT count(*) FROM river_migration) + (SELECT count(*) FROM schema_migrations)`, worker)
		add(role, "INSERT INTO schema_migrations", `INSERT INTO schema_migrations (version, dirty) VALUES (999, false)`, false)
		add(role, "SELECT the job views", `SELECT (SELECT count(*) FROM job_kind_stats) + (SELECT count(*) FROM queue_depth) + (SELECT count(*) FROM stuck_jobs) + (SELECT count(*) FROM failing_jobs)`, true)
		add(role, "UPDATE, DELETE domain rows", `UPDATE emails SET opens = opens; DELETE FROM email_counter_deltas`, true)
		add(role, "CREATE TABLE in the schema", `CREATE TABLE {schema}.intruder (id int)`, false)
	}
	return cases
}

// TestPrivilegeRoles creates an app role and a worker role with dbroles
// (LOGIN, nothing else), connects as each and shows:
//
//   - as app: donations (their UpdateEmailDonation job and donation.created
//     event), tracked opens whose queue-locked fold job is matched by
//     River's INSERT … ON CONFLICT DO UPDATE the second time, a River
//     unique job enqueued twice, 600 ping jobs written with COPY and a job
//     scheduled a second ahead all commit, and the app reads them back;
//   - a real cmd/worker process connected as the worker role (reindexer
//     off) becomes leader and completes every job with its effects, with no
//     permission error in its log;
//   - the allow/deny table: each statement as each role is allowed, or
//     fails with SQLSTATE 42501 exactly.
func TestPrivilegeRoles(t *testing.T) {
	t.Parallel()
	bin := workerBinary(t)
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
	appRole, workerRole := dbrolestest.Roles(ctx, t, s)
	appPool := dbrolestest.Pool(ctx, t, appRole, 3)

	// The application, entirely as the app role.
	reg := app.Registry(appPool, nil)
	client, err := jobs.NewClient(appPool, reg, &jobs.ClientConfig{Queues: []string{}, Schema: s.Name})
	require.NoError(t, err)
	ob, err := jobs.NewOutbox(appPool, client, reg, directInsert)
	require.NoError(t, err)
	svc := donations.NewService(appPool, ob)

	var fundraiserID, emailID int64
	require.NoError(t, appPool.QueryRow(ctx, `
WITH f AS (INSERT INTO fundraisers (name) VALUES ('Engines') RETURNING id),
     u AS (INSERT INTO users (name, email) VALUES ('Ada', 'ada@example.com') RETURNING id)
INSERT INTO emails (user_id, fundraiser_id) SELECT u.id, f.id FROM u, f RETURNING fundraiser_id, id`).Scan(&fundraiserID, &emailID))
	const nDonations = 5
	for i := range nDonations {
		_, err := svc.Donate(ctx, donations.DonateInput{
			FundraiserID: fundraiserID, EmailID: emailID, DonorEmail: fmt.Sprintf("donor%d@example.com", i),
			AmountCents: 100 + int64(i), Currency: "EUR", Succeeded: true,
		})
		require.NoError(t, err, "Donate as the app role")
	}

	// Two opens: the second fold job meets the first one's queue lock
	// (River's INSERT … ON CONFLICT DO UPDATE SET kind = river_job.kind).
	require.NoError(t, svc.TrackOpen(ctx, emailID))
	require.NoError(t, svc.TrackOpen(ctx, emailID))

	// A River unique job, twice: inserted, then matched.
	var pingID int64
	require.NoError(t, appPool.QueryRow(ctx, `INSERT INTO pings (note) VALUES ('unique') RETURNING id`).Scan(&pingID))
	uniqueOpts := &river.InsertOpts{UniqueOpts: river.UniqueOpts{ByArgs: true}}
	var uniqueRes [2]outbox.FlushResult
	for i := range uniqueRes {
		uniqueRes[i], err = ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			return tx.Enqueue(jobs.PingArgs{PingID: pingID}, uniqueOpts)
		})
		require.NoError(t, err, "unique insert %d as the app role", i)
	}
	require.Equal(t, 1, uniqueRes[0].Inserted)
	require.Equal(t, 1, uniqueRes[1].UniqueSkipped, "matched the first job")

	// 600 pings and their jobs in one transaction: the COPY path.
	const nCopy = 600
	copyRes, err := ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
		rows, err := tx.Query(ctx, `INSERT INTO pings (note) SELECT 'copy' FROM generate_series(1, $1) RETURNING id`, nCopy)
		if err != nil {
			return err
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return err
		}
		for _, id := range ids {
			if err := tx.Enqueue(jobs.PingArgs{PingID: id}, nil); err != nil {
				return err
			}
		}
		return nil
	})
	require.NoError(t, err, "COPY as the app role")
	require.Equal(t, nCopy, copyRes.Inserted)
	require.Equal(t, int64(1), ob.Stats().Copied)

	// Five pings through the outbox table (the default path): the worker
	// role's relay moves them.
	const nOutboxed = 5
	obTable, err := jobs.NewOutbox(appPool, client, reg, nil)
	require.NoError(t, err)
	_, err = obTable.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
		for range nOutboxed {
			var id int64
			if err := tx.QueryRow(ctx, `INSERT INTO pings (note) VALUES ('outboxed') RETURNING id`).Scan(&id); err != nil {
				return err
			}
			if err := tx.Enqueue(jobs.PingArgs{PingID: id}, nil); err != nil {
				return err
			}
		}
		return nil
	})
	require.NoError(t, err, "the outbox table as the app role")

	// A job due in a second: River's scheduler (the leader) makes it
	// available.
	var laterID int64
	require.NoError(t, appPool.QueryRow(ctx, `INSERT INTO pings (note) VALUES ('later') RETURNING id`).Scan(&laterID))
	_, err = client.Insert(ctx, jobs.PingArgs{PingID: laterID}, &river.InsertOpts{ScheduledAt: time.Now().Add(time.Second)})
	require.NoError(t, err)

	// The app reads what it wrote.
	var jobCount, eventCount, foldJobs int
	require.NoError(t, appPool.QueryRow(ctx, `
SELECT (SELECT count(*) FROM river_job), (SELECT count(*) FROM outbox_events),
       (SELECT count(*) FROM river_job WHERE kind = $1)`, donations.FoldEmailCountersKind).Scan(&jobCount, &eventCount, &foldJobs))
	require.Equal(t, nDonations, eventCount, "one donation.created event per donation")
	require.Equal(t, 1, foldJobs, "the second open met the first fold job's queue lock")
	require.GreaterOrEqual(t, jobCount, nDonations+1+1+nCopy+1)

	// The worker, as the worker role, in its own process.
	u, err := url.Parse(workerRole.URL)
	require.NoError(t, err)
	q := u.Query()
	q.Set("pool_max_conns", "6")
	u.RawQuery = q.Encode()
	cmd := exec.Command(bin, "--schema", s.Name, "--http", "off", "--reindexer", "off", "--max-workers", "10")
	cmd.Env = append(os.Environ(), "DATABASE_URL="+u.String())
	var stderr testlog.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	defer func() { _ = cmd.Process.Kill() }()

	// A job is left while it is to run: due or not, the job scheduled a
	// second ahead counts (a worker that drains the rest within that
	// second must still wait for it), and any other job once it is due.
	start := time.Now()
	var left, failed int
	require.Eventually(t, func() bool {
		err := s.Pool.QueryRow(ctx, `
SELECT count(*) FILTER (WHERE state IN ('available', 'running', 'retryable', 'pending')
                           OR state = 'scheduled' AND (scheduled_at <= now() OR kind = $1))
         + (SELECT count(*) FROM outbox_jobs),
       count(*) FILTER (WHERE state IN ('discarded', 'cancelled') OR cardinality(errors) > 0)
  FROM river_job`, jobs.PingKind).Scan(&left, &failed)
		return err == nil && (left == 0 || failed > 0)
	}, 60*time.Second, 50*time.Millisecond, "jobs done; worker log:\n%s", &stderr)
	require.Zero(t, failed, "no job failed; worker log:\n%s", &stderr)
	drained := time.Since(start)

	var pingsDone, emailDonated, opens int
	var leader string
	require.NoError(t, s.Pool.QueryRow(ctx, `
SELECT (SELECT count(*) FROM pings WHERE ping_count = 1),
       (SELECT count(*) FROM emails WHERE donated),
       (SELECT opens FROM emails WHERE id = $1)`, emailID).Scan(&pingsDone, &emailDonated, &opens))
	require.Equal(t, 1+nCopy+nOutboxed+1, pingsDone, "every ping marked once, the relayed ones too")
	require.Equal(t, 1, emailDonated, "the email flagged donated")
	require.Equal(t, 2, opens, "both opens folded by one job")
	require.Eventually(t, func() bool {
		return s.Pool.QueryRow(ctx, `SELECT leader_id FROM river_leader`).Scan(&leader) == nil
	}, 30*time.Second, 50*time.Millisecond, "the worker role elected itself leader; log:\n%s", &stderr)

	// The allow/deny table, as each role, after the worker's run.
	workerPool := dbrolestest.Pool(ctx, t, workerRole, 2)
	pools := map[string]*pgxpool.Pool{"app": appPool, "worker": workerPool}
	var table strings.Builder
	table.WriteString("| statement | app | worker |\n|---|---|---|\n")
	results := map[string]map[string]string{}
	var order []string
	for _, c := range privilegeCases() {
		sql := strings.ReplaceAll(c.sql, "{schema}", pgx.Identifier{s.Name}.Sanitize())
		var err error
		if c.noTx {
			_, err = pools[c.role].Exec(ctx, sql)
		} else {
			err = privRolledBack(ctx, pools[c.role], sql)
		}
		got := "allowed"
		if err != nil {
			var pgErr *pgconn.PgError
			require.ErrorAs(t, err, &pgErr, "%s: %s", c.role, c.what)
			require.Equal(t, "42501", pgErr.Code, "%s: %s: %s", c.role, c.what, pgErr.Message)
			got = "denied (42501)"
		}
		require.Equal(t, c.allowed, err == nil, "%s: %s: %v", c.role, c.what, err)
		if results[c.what] == nil {
			results[c.what] = map[string]string{}
			order = append(order, c.what)
		}
		results[c.what][c.role] = got
	}
	for _, what := range order {
		fmt.Fprintf(&table, "| %s | %s | %s |\n", what, results[what]["app"], results[what]["worker"])
	}
	t.Logf("allow/deny table (%d statements per role):\n%s", len(order), table.String())

	// Still the same process, never short of a privilege; it stops cleanly.
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, cmd.Wait(), "log:\n%s", &stderr)
	log := stderr.String()
	require.NotContains(t, log, "42501", "the worker role lacked a privilege")
	require.NotContains(t, log, "permission denied", "the worker role lacked a privilege")
	require.NotContains(t, log, "must be owner", "the worker role lacked a privilege")
	t.Logf("as the app role: %d donations with their jobs and events, 2 opens (1 fold job), 1 unique job enqueued twice (1 row), "+
		"%d jobs with COPY, 1 scheduled job; as the worker role (reindexer off): every job completed in %s, leader %s",
		nDonations, nCopy, drained.Round(10*time.Millisecond), leader)
}

// errPrivRolledBack ends privRolledBack's transaction.
var errPrivRolledBack = errors.New("roll back")

// privRolledBack runs sql in a transaction on pool and rolls it back; it
// returns sql's error, if any.
func privRolledBack(ctx context.Context, pool *pgxpool.Pool, sql string) error {
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, sql); err != nil {
			return err
		}
		return errPrivRolledBack
	})
	if errors.Is(err, errPrivRolledBack) {
		return nil
	}
	return err
}

// TestPrivilegeInsertNeedsUpdateOfKind shows why the app role holds UPDATE
// on river_job.kind: without it, every River insert that is not a COPY —
// unique or not — fails with 42501, because River's INSERT always ends in
// ON CONFLICT (unique_key) … DO UPDATE SET kind = river_job.kind, whose
// UPDATE privilege Postgres checks whether a row conflicts or not. COPY
// (600 jobs) has no ON CONFLICT and needs only INSERT.
func TestPrivilegeInsertNeedsUpdateOfKind(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
	appRole, _ := dbrolestest.Roles(ctx, t, s)
	appPool := dbrolestest.Pool(ctx, t, appRole, 2)
	ob := newOutbox(t, appPool, directInsert) // River's insert is what this test is about

	enqueue := func(n int, opts *river.InsertOpts) (outbox.FlushResult, error) {
		return ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			for i := range n {
				if err := tx.Enqueue(jobs.PingArgs{PingID: int64(i + 1)}, opts); err != nil {
					return err
				}
			}
			return nil
		})
	}
	unique := &river.InsertOpts{UniqueOpts: river.UniqueOpts{ByArgs: true}}
	requireDenied := func(err error, what string) {
		t.Helper()
		var pgErr *pgconn.PgError
		require.ErrorAs(t, err, &pgErr, what)
		require.Equal(t, "42501", pgErr.Code, what)
		require.Equal(t, "permission denied for table river_job", pgErr.Message, what)
	}

	revoke := "REVOKE UPDATE (kind) ON river_job FROM " + pgx.Identifier{appRole.Name}.Sanitize()
	_, err := s.Pool.Exec(ctx, revoke)
	require.NoError(t, err)
	_, err = enqueue(1, nil)
	requireDenied(err, "a plain job without UPDATE (kind)")
	_, err = enqueue(1, unique)
	requireDenied(err, "a unique job without UPDATE (kind)")
	res, err := enqueue(600, nil)
	require.NoError(t, err, "COPY needs INSERT only")
	require.Equal(t, 600, res.Inserted)
	require.Equal(t, int64(1), ob.Stats().Copied)

	_, err = s.Pool.Exec(ctx, "GRANT UPDATE (kind) ON river_job TO "+pgx.Identifier{appRole.Name}.Sanitize())
	require.NoError(t, err)
	res, err = enqueue(1, unique)
	require.NoError(t, err)
	require.Equal(t, 1, res.Inserted)
	res, err = enqueue(1, unique)
	require.NoError(t, err)
	require.Equal(t, 1, res.UniqueSkipped, "the conflict's DO UPDATE ran as the app role; the kind guard let the no-op through")
	rows, err := s.Pool.Query(ctx, `SELECT DISTINCT kind FROM river_job`)
	require.NoError(t, err)
	kinds, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Equal(t, []string{jobs.PingKind}, kinds)
}
