//go:build long

package faults_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/donations"
	"github.com/aftercommit/aftercommit/internal/app"
	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/testlog"
	"github.com/aftercommit/aftercommit/inventory"
	"github.com/aftercommit/aftercommit/jobs"
)

// workerProc is one cmd/worker process of the fault build.
type workerProc struct {
	name string
	cmd  *exec.Cmd
	log  *testlog.Buffer
	done chan struct{}
	err  error // Wait's error, once done is closed
}

// startWorker starts the fault build of cmd/worker on s with env added to
// the environment (AFTERCOMMIT_FAULT_… hooks) and args added to the flags.
// It is killed when the test ends.
func startWorker(t *testing.T, s *dbtest.Schema, name string, env []string, args ...string) *workerProc {
	t.Helper()
	return startWorkerConns(t, s, name, 8, env, args...)
}

// startWorkerConns is startWorker with a pool of at most conns connections,
// for tests that start several processes beside the rest of the suite.
func startWorkerConns(t *testing.T, s *dbtest.Schema, name string, conns int, env []string, args ...string) *workerProc {
	t.Helper()
	u, err := url.Parse(s.URL)
	require.NoError(t, err, "the test database must be given as a URL")
	q := u.Query()
	q.Set("pool_max_conns", strconv.Itoa(conns))
	u.RawQuery = q.Encode()
	return startWorkerAt(t, name, u.String(), env, append([]string{"--schema", s.Name}, args...)...)
}

// startWorkerAt starts the fault build of cmd/worker with DATABASE_URL
// dbURL (its application_name set to the worker's name), env added to the
// environment and args to the flags. It is killed when the test ends.
func startWorkerAt(t *testing.T, name, dbURL string, env []string, args ...string) *workerProc {
	t.Helper()
	u, err := url.Parse(dbURL)
	require.NoError(t, err, "the worker's database must be given as a URL")
	q := u.Query()
	q.Set("application_name", "aftercommit-faults-"+name)
	u.RawQuery = q.Encode()

	p := &workerProc{name: name, log: &testlog.Buffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(workerBinary(t), append([]string{"--http", "off"}, args...)...)
	p.cmd.Env = append(append(os.Environ(), "DATABASE_URL="+u.String()), env...)
	p.cmd.Stderr = p.log
	require.NoError(t, p.cmd.Start())
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("log of worker %s:\n%s", p.name, p.log)
		}
	})
	return p
}

var clientIDRE = regexp.MustCompile(`client_id=(\S+)`)

// clientID waits for the process to log its River client ID.
func (p *workerProc) clientID(t *testing.T) string {
	t.Helper()
	var id string
	require.Eventually(t, func() bool {
		if m := clientIDRE.FindStringSubmatch(p.log.String()); m != nil {
			id = m[1]
			return true
		}
		return false
	}, 30*time.Second, 10*time.Millisecond, "worker %s started", p.name)
	return id
}

// kill sends SIGKILL and waits for the process to end.
func (p *workerProc) kill(t *testing.T) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGKILL))
	<-p.done
}

// wait waits up to 30 s for the process to end and returns its exit code.
func (p *workerProc) wait(t *testing.T) int {
	t.Helper()
	const d = 30 * time.Second
	select {
	case <-p.done:
	case <-time.After(d):
		t.Fatalf("worker %s still running after %s; log:\n%s", p.name, d, p.log)
	}
	return p.cmd.ProcessState.ExitCode()
}

// running reports whether the process is still alive.
func (p *workerProc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// fixture holds the domains' services over one schema, an insert-only River
// client, and triggers that log every effect a job applies, so a doubled
// effect is seen even where the domain's own guard would hide it.
type fixture struct {
	s         *dbtest.Schema
	donations *donations.Service
	inventory *inventory.Service
	productID int64
	sku       string
	stock0    int
}

// effectsSQL logs each email flagged and each checkout completed.
const effectsSQL = `
CREATE TABLE fault_effects (
    what text        NOT NULL,
    id   bigint      NOT NULL,
    at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION fault_log_flag() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fault_effects (what, id) VALUES ('email_flagged', NEW.id);
    RETURN NULL;
END $$;
CREATE TRIGGER fault_log_flag AFTER UPDATE OF donated ON emails
    FOR EACH ROW WHEN (NEW.donated) EXECUTE FUNCTION fault_log_flag();
CREATE FUNCTION fault_log_sale() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fault_effects (what, id) VALUES ('checkout_completed', NEW.id);
    RETURN NULL;
END $$;
CREATE TRIGGER fault_log_sale AFTER UPDATE OF state ON checkouts
    FOR EACH ROW WHEN (NEW.state = 'completed') EXECUTE FUNCTION fault_log_sale();
`

func newFixture(ctx context.Context, t *testing.T, s *dbtest.Schema, stock int) *fixture {
	t.Helper()
	_, err := s.Pool.Exec(ctx, effectsSQL)
	require.NoError(t, err)
	reg := app.Registry(s.Pool, nil)
	require.NoError(t, reg.Err())
	client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{Schema: s.Name, Queues: []string{}})
	require.NoError(t, err)
	ob, err := jobs.NewOutbox(s.Pool, client, reg, nil)
	require.NoError(t, err)
	inv, err := inventory.NewService(s.Pool, ob, nil)
	require.NoError(t, err)
	f := &fixture{s: s, donations: donations.NewService(s.Pool, ob), inventory: inv, sku: "FAULT-1", stock0: stock}
	require.NoError(t, s.Pool.QueryRow(ctx,
		`INSERT INTO products (sku, stock) VALUES ($1, $2) RETURNING id`, f.sku, stock).Scan(&f.productID))
	return f
}

// donate makes n succeeded donations, each following its own email, and
// returns the emails; each donation enqueued one email flag job.
func (f *fixture) donate(ctx context.Context, t *testing.T, n int) []int64 {
	t.Helper()
	var fundraiserID int64
	require.NoError(t, f.s.Pool.QueryRow(ctx, `INSERT INTO fundraisers (name) VALUES ('Faults') RETURNING id`).Scan(&fundraiserID))
	rows, err := f.s.Pool.Query(ctx, `
WITH u AS (
    INSERT INTO users (name, email)
    SELECT 'Donor ' || i, 'donor' || i || '@faults.example' FROM generate_series(1, $1) AS i
    RETURNING id, email
), e AS (
    INSERT INTO emails (user_id, fundraiser_id, sent_at)
    SELECT id, $2, now() - interval '1 day' FROM u
    RETURNING id, user_id
)
SELECT e.id, u.email FROM e JOIN u ON u.id = e.user_id ORDER BY e.id`, n, fundraiserID)
	require.NoError(t, err)
	type sent struct {
		ID   int64
		Addr string
	}
	emails, err := pgx.CollectRows(rows, pgx.RowToStructByPos[sent])
	require.NoError(t, err)
	require.Len(t, emails, n)
	ids := make([]int64, n)
	for i, e := range emails {
		_, err := f.donations.Donate(ctx, donations.DonateInput{
			FundraiserID: fundraiserID, EmailID: e.ID, DonorEmail: e.Addr,
			AmountCents: 1000, Currency: "USD", Succeeded: true,
		})
		require.NoError(t, err)
		ids[i] = e.ID
	}
	return ids
}

// paidCheckouts makes n checkouts of one unit and pays them; each payment
// enqueued one completion job.
func (f *fixture) paidCheckouts(ctx context.Context, t *testing.T, n int) []int64 {
	t.Helper()
	ids := make([]int64, n)
	for i := range n {
		c, err := f.inventory.BeginCheckout(ctx, f.sku, 1)
		require.NoError(t, err)
		_, err = f.inventory.PaymentAuthorized(ctx, c.ID)
		require.NoError(t, err)
		ids[i] = c.ID
	}
	return ids
}

// count runs a query returning one integer.
func count(ctx context.Context, t *testing.T, s *dbtest.Schema, sql string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, s.Pool.QueryRow(ctx, sql, args...).Scan(&n))
	return n
}

// effectsOnce checks that every email of emailIDs was flagged exactly once,
// every checkout of checkoutIDs completed exactly once, and that the stock
// went down by exactly one unit per checkout. It returns the numbers of
// effects applied and applied more than once.
func (f *fixture) effectsOnce(ctx context.Context, t *testing.T, emailIDs, checkoutIDs []int64) (applied, doubled int) {
	t.Helper()
	var once, twice, missing int
	require.NoError(t, f.s.Pool.QueryRow(ctx, `
WITH want (what, id) AS (
    SELECT 'email_flagged', unnest($1::bigint[])
    UNION ALL
    SELECT 'checkout_completed', unnest($2::bigint[])
), got AS (
    SELECT w.what, w.id, count(e.*) AS n
      FROM want w LEFT JOIN fault_effects e ON e.what = w.what AND e.id = w.id
     GROUP BY w.what, w.id
)
SELECT count(*) FILTER (WHERE n = 1), count(*) FILTER (WHERE n > 1), count(*) FILTER (WHERE n = 0) FROM got`,
		emailIDs, checkoutIDs).Scan(&once, &twice, &missing))
	require.Zero(t, missing, "every effect applied")
	require.Zero(t, twice, "no effect applied twice")
	require.Equal(t, len(emailIDs)+len(checkoutIDs), once)
	require.Equal(t, len(emailIDs), count(ctx, t, f.s, `SELECT count(*) FROM emails WHERE donated AND id = ANY($1)`, emailIDs))
	require.Equal(t, f.stock0-len(checkoutIDs), count(ctx, t, f.s, `SELECT stock FROM products WHERE id = $1`, f.productID),
		"one unit sold per checkout")
	return once, twice
}

// jobStates counts the jobs of kinds by state, as "state=n" sorted.
func jobStates(ctx context.Context, t *testing.T, s *dbtest.Schema, kinds ...string) string {
	t.Helper()
	rows, err := s.Pool.Query(ctx, `
SELECT state::text || '=' || count(*) FROM river_job WHERE kind = ANY($1) GROUP BY state ORDER BY state`, kinds)
	require.NoError(t, err)
	parts, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return strings.Join(parts, " ")
}

// leader returns the current leader's client ID, or "" when none is elected.
func leader(ctx context.Context, s *dbtest.Schema) (string, error) {
	rows, err := s.Pool.Query(ctx, `SELECT leader_id FROM river_leader WHERE expires_at > now()`)
	if err != nil {
		return "", err
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return "", err
	}
	if len(ids) == 0 {
		return "", nil
	}
	return ids[0], nil
}

func fmtDur(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }

// discardLogger drops the log of an in-process client.
func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
