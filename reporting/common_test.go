package reporting_test

import (
	"context"
	"log/slog"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/jobstest"
	"github.com/aftercommit/aftercommit/internal/testtrace"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/relay"
	"github.com/aftercommit/aftercommit/reporting"
)

// donationsDomain declares the donation.created topic in the tests, as the
// donations domain does in the application (reporting must not import it).
const donationsDomain = "donations"

// bundle is a schema with the reporting domain registered, a River client
// built from that registry, an outbox and a Service.
type bundle struct {
	schema *dbtest.Schema
	client *river.Client[pgx.Tx]
	ob     *outbox.Outbox
	svc    *reporting.Service
	// events receives the client's job events; nil unless it works.
	events <-chan *river.Event
	// trace records the statements of the traced pool (see setupOpts).
	trace  *testtrace.Tracer
	inject *jobstest.FailureInjector
	reg    *jobs.Registry
	// relay moves the outbox table's rows when drain runs it (not started).
	relay *relay.Relay
}

// setupOpts are the options of setup. The zero value is an insert-only
// client, nothing traced.
type setupOpts struct {
	// work starts the client on queues (every queue when nil: jobs.AllQueues).
	work   bool
	queues []string
	// traceWorkers gives the workers a pool of their own whose statements
	// are recorded in bundle.trace; traceService does the same for the
	// Service (and its outbox).
	traceWorkers bool
	traceService bool
	// fail, when set, picks the report and rollup jobs that fail after
	// their write.
	fail func(job *rivertype.JobRow) bool
	// maxConns caps the schema's pool. Defaults to 6.
	maxConns int32
	// outboxTable builds the Service on the outbox table, as production
	// does, instead of DirectInsert: a bulk job is in its car's fair share,
	// which DirectInsert refuses. drain moves what committed.
	outboxTable bool
}

func setup(ctx context.Context, t testing.TB, opts *setupOpts) *bundle {
	t.Helper()
	if opts == nil {
		opts = &setupOpts{}
	}
	if opts.maxConns == 0 {
		opts.maxConns = 6
	}
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: opts.maxConns})
	b := &bundle{schema: s, trace: &testtrace.Tracer{}, inject: jobstest.NewFailureInjector(ctx, t, s, opts.fail)}

	var traced *pgxpool.Pool
	if opts.traceWorkers || opts.traceService {
		pcfg, err := pgxpool.ParseConfig(s.URL)
		require.NoError(t, err)
		pcfg.MaxConns = 2
		pcfg.ConnConfig.Tracer = b.trace
		traced, err = pgxpool.NewWithConfig(ctx, pcfg)
		require.NoError(t, err)
		t.Cleanup(traced.Close)
	}
	pick := func(trace bool) *pgxpool.Pool {
		if trace {
			return traced
		}
		return s.Pool
	}

	reg := jobs.NewRegistry()
	reg.AddTopic(donationsDomain, reporting.TopicDonationCreated)
	reporting.Register(reg, pick(opts.traceWorkers))

	b.reg = reg
	var err error
	b.client, err = jobs.NewClient(s.Pool, reg, b.clientConfig([]string{})) // insert-only
	require.NoError(t, err)
	if opts.work {
		queues := opts.queues
		if queues == nil {
			queues = []string{jobs.AllQueues}
		}
		b.start(ctx, t, queues)
	}

	svcPool := pick(opts.traceService)
	obCfg := directInsert
	if opts.outboxTable {
		obCfg = nil
	}
	b.ob, err = jobs.NewOutbox(svcPool, b.client, reg, obCfg)
	require.NoError(t, err)
	b.relay = jobstest.Relay(t, s, b.client, reg)
	b.svc = reporting.NewService(svcPool, b.ob)
	return b
}

// clientConfig is the tests' River client configuration, working queues
// (none when empty), with middleware mw inside the failure injector.
func (b *bundle) clientConfig(queues []string, mw ...rivertype.Middleware) *jobs.ClientConfig {
	return &jobs.ClientConfig{
		Queues: queues,
		Schema: b.schema.Name,
		Logger: slog.New(slog.DiscardHandler),
		River: &river.Config{
			FetchCooldown:     10 * time.Millisecond,
			FetchPollInterval: 50 * time.Millisecond,
			RetryPolicy:       fastRetryPolicy{},
			Middleware:        append([]rivertype.Middleware{b.inject}, mw...),
		},
	}
}

// start starts a second client, a worker process working queues (every
// queue when nil) with middleware mw, whose job events go to b.events. It is
// stopped when t ends.
func (b *bundle) start(ctx context.Context, t testing.TB, queues []string, mw ...rivertype.Middleware) {
	t.Helper()
	client, err := jobs.NewClient(b.schema.Pool, b.reg, b.clientConfig(queues, mw...))
	require.NoError(t, err)
	events, cancel := client.SubscribeConfig(&river.SubscribeConfig{
		ChanSize: 10_000,
		Kinds: []river.EventKind{
			river.EventKindJobCompleted, river.EventKindJobFailed,
			river.EventKindJobCancelled, river.EventKindJobSnoozed,
		},
	})
	t.Cleanup(cancel)
	b.events = events
	require.NoError(t, client.Start(ctx))
	t.Cleanup(func() { require.NoError(t, client.Stop(context.WithoutCancel(ctx))) })
	// The bulk job enqueues its report through the outbox table: a relay
	// moves it, and stops before the client.
	rl := jobstest.Relay(t, b.schema, client, b.reg)
	require.NoError(t, rl.Start(ctx))
	t.Cleanup(func() { require.NoError(t, rl.Stop(context.WithoutCancel(ctx))) })
}

// drain moves what committed to the outbox table into river_job now, and
// places the bulk jobs in their cars' fair shares, as a relay does.
func (b *bundle) drain(ctx context.Context, t testing.TB) {
	t.Helper()
	_, err := b.relay.Drain(ctx)
	require.NoError(t, err)
}

// failOneInFive fails one in five attempts of the given kinds, the first
// one included, counted across the test's jobs.
func failOneInFive(kinds ...string) func(job *rivertype.JobRow) bool {
	// By count, not by a hash of the job: the first matching attempt
	// always fails, so a test whose jobs coalesce into a few still sees
	// an injected failure (a hash of five report jobs missed them all).
	var n atomic.Int64
	return func(job *rivertype.JobRow) bool {
		if !slices.Contains(kinds, job.Kind) {
			return false
		}
		return n.Add(1)%5 == 1
	}
}

// fastRetryPolicy retries a failed job 10 ms later (River's default waits
// attempt⁴ seconds).
type fastRetryPolicy struct{}

func (fastRetryPolicy) NextRetry(*rivertype.JobRow) time.Time {
	return time.Now().Add(10 * time.Millisecond)
}

// count runs a SELECT count(*) … and returns the count.
func (b *bundle) count(ctx context.Context, t testing.TB, sql string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, b.schema.Pool.QueryRow(ctx, sql, args...).Scan(&n))
	return n
}

// strings runs a query of one text column and returns its rows.
func (b *bundle) strings(ctx context.Context, t testing.TB, sql string, args ...any) []string {
	t.Helper()
	rows, err := b.schema.Pool.Query(ctx, sql, args...)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return out
}

// car creates a car.
func (b *bundle) car(ctx context.Context, t testing.TB, name string) int64 {
	t.Helper()
	var id int64
	require.NoError(t, b.schema.Pool.QueryRow(ctx, `INSERT INTO cars (name) VALUES ($1) RETURNING id`, name).Scan(&id))
	return id
}

// users creates n users and returns their IDs, in order.
func (b *bundle) users(ctx context.Context, t testing.TB, n int) []int64 {
	t.Helper()
	rows, err := b.schema.Pool.Query(ctx, `
		INSERT INTO users (name, email)
		SELECT 'User ' || i, 'user' || i || '-' || gen_random_uuid() || '@example.com' FROM generate_series(1, $1) AS i
		RETURNING id`, n)
	require.NoError(t, err)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	require.Len(t, ids, n)
	return ids
}

// fundraisers creates n fundraisers and returns their IDs.
func (b *bundle) fundraisers(ctx context.Context, t testing.TB, n int) []int64 {
	t.Helper()
	rows, err := b.schema.Pool.Query(ctx, `INSERT INTO fundraisers (name) SELECT 'Fundraiser ' || i FROM generate_series(1, $1) AS i RETURNING id`, n)
	require.NoError(t, err)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	require.NoError(t, err)
	require.Len(t, ids, n)
	return ids
}

// waitDrained waits until no job is left to run, and checks that none was
// discarded or cancelled.
func (b *bundle) waitDrained(ctx context.Context, t testing.TB) {
	t.Helper()
	require.Eventually(t, func() bool {
		var n int64
		err := b.schema.Pool.QueryRow(ctx,
			// One snapshot: a job's completion and the outbox row it
			// enqueued commit together.
			`SELECT (SELECT count(*) FROM river_job WHERE state NOT IN ('completed', 'discarded', 'cancelled'))
			      + (SELECT count(*) FROM outbox_jobs)`).Scan(&n)
		return err == nil && n == 0
	}, 2*time.Minute, 20*time.Millisecond, "jobs still pending")
	require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM river_job WHERE state IN ('discarded', 'cancelled')`),
		"discarded or cancelled jobs")
}

// waitJob waits for the first event of a job of kind and returns it.
func (b *bundle) waitJob(t testing.TB, kind string) *river.Event {
	t.Helper()
	timeout := time.After(time.Minute)
	for {
		select {
		case ev := <-b.events:
			if ev.Job.Kind == kind {
				return ev
			}
		case <-timeout:
			t.Fatalf("no event of a %s job within a minute", kind)
		}
	}
}

// roundTrips returns the traced round trips, without River's one-time read
// of a new connection's server version.
func (b *bundle) roundTrips() [][]string {
	var out [][]string
	for _, trip := range b.trace.RoundTrips() {
		if len(trip) == 1 && testtrace.Matches(trip[0], "PGGetProductAndVersion") {
			continue
		}
		out = append(out, trip)
	}
	return out
}

// allQueues works every queue.
var allQueues = []string{jobs.AllQueues}
