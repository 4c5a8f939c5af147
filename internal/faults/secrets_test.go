//go:build long

package faults_test

import (
	"context"
	"fmt"
	"log/slog"
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
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/donations"
	"github.com/aftercommit/aftercommit/internal/app"
	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/jobstest"
	"github.com/aftercommit/aftercommit/internal/testlog"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
)

// secretPassword is the password of the DSNs of TestSecretsNotInLogsOrErrors.
// The test server's trust authentication ignores it; any code that logs or
// records a connection string would show it.
const secretPassword = "S3cr3t-xyz-9f1c"

// secretsRetry retries a failed job after 100 ms.
type secretsRetry struct{}

func (secretsRetry) NextRetry(*rivertype.JobRow) time.Time {
	return time.Now().Add(100 * time.Millisecond)
}

// secretURL returns s.URL with the password and application_name set.
func secretURL(t *testing.T, s *dbtest.Schema, appName string) string {
	t.Helper()
	u, err := url.Parse(s.URL)
	require.NoError(t, err, "the test database must be given as a URL")
	u.User = url.UserPassword(u.User.Username(), secretPassword)
	q := u.Query()
	q.Set("application_name", appName)
	u.RawQuery = q.Encode()
	require.Contains(t, u.String(), secretPassword)
	return u.String()
}

// secretsFixture is a fundraiser with emails to donors, and donations to
// it from those addresses and others, written as the application would,
// with their jobs and events.
func secretsFixture(ctx context.Context, t *testing.T, pool *pgxpool.Pool, ob *outbox.Outbox) (emailIDs []int64) {
	t.Helper()
	svc := donations.NewService(pool, ob)
	var fundraiserID int64
	require.NoError(t, pool.QueryRow(ctx, `INSERT INTO fundraisers (name) VALUES ('Engines') RETURNING id`).Scan(&fundraiserID))
	for i := range 10 {
		var emailID int64
		require.NoError(t, pool.QueryRow(ctx, `
WITH u AS (INSERT INTO users (name, email) VALUES ($1, $2) RETURNING id)
INSERT INTO emails (user_id, fundraiser_id) SELECT u.id, $3 FROM u RETURNING id`,
			fmt.Sprintf("Donor %d", i), fmt.Sprintf("donor.%d@privacy-test.example", i), fundraiserID).Scan(&emailID))
		emailIDs = append(emailIDs, emailID)
		in := donations.DonateInput{FundraiserID: fundraiserID, DonorEmail: fmt.Sprintf("Donor.%d@privacy-test.example", i),
			AmountCents: 500, Currency: "USD", Succeeded: true}
		if i%2 == 0 {
			in.EmailID = emailID // the others are matched by address
		}
		_, err := svc.Donate(ctx, in)
		require.NoError(t, err)
		// A donor without an email, whose user is created by Donate.
		_, err = svc.Donate(ctx, donations.DonateInput{FundraiserID: fundraiserID, DonorEmail: fmt.Sprintf("walk-in.%d@privacy-test.example", i),
			AmountCents: 700, Currency: "USD", Succeeded: i%3 != 0})
		require.NoError(t, err)
		require.NoError(t, svc.TrackOpen(ctx, emailID))
		require.NoError(t, svc.TrackClick(ctx, emailID))
	}
	return emailIDs
}

// secretsBadJobs inserts jobs no worker can run: a donations kind with args
// of the wrong shape and a kind nobody knows.
func secretsBadJobs(ctx context.Context, t *testing.T, s *dbtest.Schema) {
	t.Helper()
	_, err := s.Pool.Exec(ctx, `
INSERT INTO river_job (args, kind, max_attempts, priority, queue, state) VALUES
 ('{"donation_id": "not-a-number"}', $1, 2, 1, $2, 'available'),
 ('{"user_id": 1}', 'nobody.knows_this_kind', 2, 1, 'default', 'available')`,
		donations.UpdateEmailDonationKind, donations.QueueDefault)
	require.NoError(t, err)
}

// secretsTerminate ends every connection of appName and returns how many it
// ended. Postgres keeps the first 63 bytes of an application_name.
func secretsTerminate(ctx context.Context, t *testing.T, s *dbtest.Schema, appName string) int {
	t.Helper()
	var killed int
	require.NoError(t, s.Pool.QueryRow(ctx, `
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = left($1, 63)`, appName).Scan(&killed))
	return killed
}

// secretsRequireNone checks that neither the password nor any email address
// stored in the schema (users.email, donations.donor_email, in any case)
// appears in the captured log nor in river_job.errors of any job, and
// returns the errors' text.
func secretsRequireNone(ctx context.Context, t *testing.T, s *dbtest.Schema, log string) (errorsText string, addresses int) {
	t.Helper()
	rows, err := s.Pool.Query(ctx, `SELECT email FROM users UNION SELECT donor_email FROM donations ORDER BY 1`)
	require.NoError(t, err)
	emails, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(emails), 20, "the fixture's addresses")
	require.NoError(t, s.Pool.QueryRow(ctx, `
SELECT coalesce(string_agg(e::text, E'\n' ORDER BY j.id), '') FROM river_job j, unnest(j.errors) e`).Scan(&errorsText))

	lowerLog, lowerErrs := strings.ToLower(log), strings.ToLower(errorsText)
	for where, text := range map[string]string{"the log": lowerLog, "river_job.errors": lowerErrs} {
		require.NotContains(t, text, strings.ToLower(secretPassword), "the DSN password is in %s", where)
		for _, e := range emails {
			require.NotContains(t, text, strings.ToLower(e), "an email address is in %s", where)
		}
		// Any address at all, also one the test did not think of.
		require.NotContains(t, text, "@privacy-test.example", "an email address is in %s", where)
	}
	return errorsText, len(emails)
}

// TestSecretsNotInLogsOrErrors runs workers whose DSN holds a password
// over donations from 30 addresses while their jobs fail in every way the
// test can cause — a constraint violation on the donor's row (whose
// Postgres DETAIL holds the address), row locks held past the job timeout,
// connections terminated, args of the wrong shape, an unknown kind,
// unreachable and unknown databases at startup — and checks that neither the
// password nor any address reaches the log (debug level) or
// river_job.errors.
func TestSecretsNotInLogsOrErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("in_process", func(t *testing.T) {
		t.Parallel()
		s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 4})
		appName := "aftercommit-secrets-" + s.Name
		var logs testlog.Buffer
		logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))

		cfg, err := pgxpool.ParseConfig(secretURL(t, s, appName))
		require.NoError(t, err)
		cfg.MaxConns = 6
		pool, err := pgxpool.NewWithConfig(ctx, cfg)
		require.NoError(t, err)
		defer pool.Close()

		// The application's own pool, with the password too, whose
		// connections are not the ones terminated.
		appCfg, err := pgxpool.ParseConfig(secretURL(t, s, appName+"-app"))
		require.NoError(t, err)
		appCfg.MaxConns = 2
		appPool, err := pgxpool.NewWithConfig(ctx, appCfg)
		require.NoError(t, err)
		defer appPool.Close()

		reg := app.Registry(pool, nil)
		client, err := jobs.NewClient(pool, reg, &jobs.ClientConfig{
			Queues: []string{jobs.AllQueues},
			Schema: s.Name, Logger: logger, MaxWorkers: 4,
			River: &river.Config{RetryPolicy: secretsRetry{}, JobTimeout: 500 * time.Millisecond},
		})
		require.NoError(t, err)
		ob, err := jobs.NewOutbox(appPool, client, reg, &outbox.Config{Logger: logger})
		require.NoError(t, err)
		emailIDs := secretsFixture(ctx, t, appPool, ob)
		secretsBadJobs(ctx, t, s)

		// Fault 1: every write of a donor's counter or an email's flag
		// violates a constraint; Postgres' DETAIL ("Failing row contains
		// (…, donor.0@…, …)") holds the address.
		_, err = s.Pool.Exec(ctx, `
ALTER TABLE users ADD CONSTRAINT secrets_block_users CHECK (donations_count = 0) NOT VALID;
ALTER TABLE emails ADD CONSTRAINT secrets_block_emails CHECK (NOT donated AND opens = 0) NOT VALID`)
		require.NoError(t, err)
		// The control: the address is one DETAIL away from every such
		// error, so the test can see a leak of it.
		_, err = s.Pool.Exec(ctx, `UPDATE users SET donations_count = 1 WHERE email = 'donor.0@privacy-test.example'`)
		var pgErr *pgconn.PgError
		require.ErrorAs(t, err, &pgErr)
		require.Contains(t, pgErr.Detail, "donor.0@privacy-test.example")
		require.NotContains(t, err.Error(), "@", "pgconn's error text leaves the DETAIL out")
		require.NoError(t, client.Start(ctx))
		defer func() { require.NoError(t, client.Stop(context.WithoutCancel(ctx))) }()
		rl := jobstest.Relay(t, s, client, reg)
		require.NoError(t, rl.Start(ctx))
		defer func() { require.NoError(t, rl.Stop(context.WithoutCancel(ctx))) }()
		jobErrors := func(like string) int {
			var n int
			require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FROM river_job j, unnest(j.errors) e WHERE e->>'error' LIKE $1`, like).Scan(&n))
			return n
		}
		require.Eventually(t, func() bool { return jobErrors("%check constraint%") >= 10 }, 30*time.Second, 20*time.Millisecond)
		_, err = s.Pool.Exec(ctx, `ALTER TABLE users DROP CONSTRAINT secrets_block_users; ALTER TABLE emails DROP CONSTRAINT secrets_block_emails`)
		require.NoError(t, err)

		// Fault 2: the donors', emails' and fundraisers' rows locked (FOR
		// NO KEY UPDATE: the app's inserts that reference them still
		// pass) past the job timeout (500 ms), then released.
		lockTx, err := s.Pool.Begin(ctx)
		require.NoError(t, err)
		_, err = lockTx.Exec(ctx, `SELECT 1 FROM users FOR NO KEY UPDATE; SELECT 1 FROM emails FOR NO KEY UPDATE; SELECT 1 FROM fundraisers FOR NO KEY UPDATE`)
		require.NoError(t, err)
		require.NoError(t, secretsService(appPool, ob).TrackOpens(ctx, emailIDs))
		require.Eventually(t, func() bool { return jobErrors("%deadline%") > 0 }, 30*time.Second, 20*time.Millisecond)
		require.NoError(t, lockTx.Rollback(ctx))

		// Fault 3: every connection of the worker terminated, twice, while
		// new jobs arrive.
		killed := 0
		for range 2 {
			require.NoError(t, secretsService(appPool, ob).TrackClicks(ctx, emailIDs))
			require.Eventually(t, func() bool { n := secretsTerminate(ctx, t, s, appName); killed += n; return n > 0 },
				10*time.Second, 20*time.Millisecond)
		}

		secretsSettled(ctx, t, s, &logs)
		log := logs.String()
		errorsText, addresses := secretsRequireNone(ctx, t, s, log)
		require.Positive(t, strings.Count(errorsText, "check constraint"), "the constraint violations were recorded")
		require.Contains(t, errorsText, "nobody.knows_this_kind")
		t.Logf("in process: %d log lines (debug), %d recorded job errors (%d constraint violations, %d timeouts), %d connections terminated; "+
			"neither the password nor any of %d addresses in either",
			strings.Count(log, "\n"), strings.Count(errorsText, "\n")+1, jobErrors("%check constraint%"), jobErrors("%deadline%"), killed, addresses)
	})

	t.Run("cmd_worker", func(t *testing.T) {
		t.Parallel()
		bin := workerBinary(t)
		s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 4})
		appName := "aftercommit-secrets-w-" + s.Name
		dsn := secretURL(t, s, appName)

		// Startup failures: a database that does not exist, a port nobody
		// listens on. Both exit non-zero with the reason, not the password.
		var startLogs strings.Builder
		for _, bad := range []string{
			secretsWithURL(t, dsn, func(u *url.URL) { u.Path = "/no_such_db_secrets" }),
			secretsWithURL(t, dsn, func(u *url.URL) { u.Host = "127.0.0.1:1" }),
		} {
			require.Contains(t, bad, secretPassword)
			cmd := exec.Command(bin, "--schema", s.Name, "--http", "off", "--log-level", "debug")
			cmd.Env = append(os.Environ(), "DATABASE_URL="+bad)
			out, err := cmd.CombinedOutput()
			require.Error(t, err, "the worker started with %s", out)
			require.NotEmpty(t, out)
			startLogs.Write(out)
		}

		// The application, as the owner, with the password too.
		cfg, err := pgxpool.ParseConfig(dsn)
		require.NoError(t, err)
		cfg.MaxConns = 2
		pool, err := pgxpool.NewWithConfig(ctx, cfg)
		require.NoError(t, err)
		defer pool.Close()
		ob := secretsOutbox(t, pool)
		emailIDs := secretsFixture(ctx, t, pool, ob)
		secretsBadJobs(ctx, t, s)

		u := secretsMustURL(t, dsn)
		q := u.Query()
		q.Set("application_name", appName+"-worker")
		q.Set("pool_max_conns", "6")
		u.RawQuery = q.Encode()
		cmd := exec.Command(bin, "--schema", s.Name, "--http", "off", "--log-level", "debug", "--max-workers", "4")
		cmd.Env = append(os.Environ(), "DATABASE_URL="+u.String())
		var stderr testlog.Buffer
		cmd.Stderr = &stderr
		cmd.Stdout = &stderr
		require.NoError(t, cmd.Start())
		defer func() { _ = cmd.Process.Kill() }()

		// Cut its connections once it works, and again once it is back:
		// each time, new jobs arrive and one completes first.
		// A cut while River's client starts stops the process (its Start
		// fails): wait until it has started.
		require.Eventually(t, func() bool { return strings.Contains(stderr.String(), `msg="worker: started"`) },
			30*time.Second, 20*time.Millisecond, "the worker started; log:\n%s", &stderr)
		killed := 0
		for range 2 {
			var since time.Time
			require.NoError(t, s.Pool.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&since))
			require.NoError(t, secretsService(pool, ob).TrackClicks(ctx, emailIDs))
			require.Eventually(t, func() bool {
				var working bool
				err := s.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM river_job WHERE state = 'completed' AND finalized_at > $1)`, since).Scan(&working)
				return err == nil && working
			}, 30*time.Second, 20*time.Millisecond, "the worker completes jobs; log:\n%s", &stderr)
			require.Eventually(t, func() bool { n := secretsTerminate(ctx, t, s, appName+"-worker"); killed += n; return n > 0 },
				10*time.Second, 20*time.Millisecond, "the worker has connections to cut; log:\n%s", &stderr)
		}
		secretsSettled(ctx, t, s, &stderr)
		require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
		require.NoError(t, cmd.Wait(), "log:\n%s", stderr.String())

		t.Logf("failed starts:\n%s", startLogs.String())
		log := startLogs.String() + stderr.String()
		require.Contains(t, log, "level=DEBUG", "the log is at debug level")
		errorsText, addresses := secretsRequireNone(ctx, t, s, log)
		require.Contains(t, errorsText, "nobody.knows_this_kind")
		t.Logf("cmd/worker: 2 failed starts and a run with %d connections terminated, %d log lines (debug), %d recorded job errors; "+
			"neither the password nor any of %d addresses in either",
			killed, strings.Count(log, "\n"), strings.Count(errorsText, "\n")+1, addresses)
	})
}

func secretsService(pool *pgxpool.Pool, ob *outbox.Outbox) *donations.Service {
	return donations.NewService(pool, ob)
}

func secretsMustURL(t *testing.T, raw string) *url.URL {
	t.Helper()
	u, err := url.Parse(raw)
	require.NoError(t, err)
	return u
}

// secretsWithURL returns raw changed by change.
func secretsWithURL(t *testing.T, raw string, change func(*url.URL)) string {
	t.Helper()
	u := secretsMustURL(t, raw)
	change(u)
	return u.String()
}

// secretsOutbox returns the application's outbox on pool: every domain's
// kinds, an insert-only client.
func secretsOutbox(t *testing.T, pool *pgxpool.Pool) *outbox.Outbox {
	t.Helper()
	reg := app.Registry(pool, nil)
	client, err := jobs.NewClient(pool, reg, &jobs.ClientConfig{Queues: []string{}})
	require.NoError(t, err)
	ob, err := jobs.NewOutbox(pool, client, reg, nil)
	require.NoError(t, err)
	return ob
}

// secretsSettled waits until no job is left to run: every job of a known
// kind completed; of the bad ones, the args of the wrong shape cancelled at
// their first attempt, the unknown kind discarded after its two.
func secretsSettled(ctx context.Context, t *testing.T, s *dbtest.Schema, log fmt.Stringer) {
	t.Helper()
	require.Eventually(t, func() bool {
		var left int
		err := s.Pool.QueryRow(ctx, `
SELECT count(*) FROM river_job
 WHERE state IN ('available', 'running', 'retryable', 'pending') OR state = 'scheduled' AND scheduled_at <= now()`).Scan(&left)
		return err == nil && left == 0
	}, 90*time.Second, 50*time.Millisecond, "every job settled; log:\n%s", log)
	var discarded, cancelled, completed int
	require.NoError(t, s.Pool.QueryRow(ctx, `
SELECT count(*) FILTER (WHERE state = 'discarded'), count(*) FILTER (WHERE state = 'cancelled'), count(*) FILTER (WHERE state = 'completed')
  FROM river_job`).Scan(&discarded, &cancelled, &completed))
	require.Equal(t, [2]int{1, 1}, [2]int{cancelled, discarded}, "only the two bad jobs end without completing: the bad args cancelled, the unknown kind discarded")
	require.Positive(t, completed)
}
