// Package jobstest builds the River client of a domain's tests from its
// registry: insert-only, or started with a subscription to job events. It is
// a test fixture; production code never imports it.
package jobstest

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

// Opts choose how the client runs.
type Opts struct {
	// Work starts the client on every declared queue and subscribes to job
	// events; otherwise the client is insert-only and never started.
	Work bool
	// MaxWorkers per queue (jobs.ClientConfig.MaxWorkers).
	MaxWorkers int
	// River is the base River configuration (fetch settings, middleware).
	River *river.Config
}

// Client builds reg's client on s and, with Work, starts it and returns a
// channel of completed, failed, cancelled and snoozed job events. The
// client is stopped and the subscription closed when t ends.
func Client(ctx context.Context, t testing.TB, s *dbtest.Schema, reg *jobs.Registry, opts Opts) (*river.Client[pgx.Tx], <-chan *river.Event) {
	t.Helper()
	cfg := &jobs.ClientConfig{
		Schema:     s.Name,
		Logger:     slog.New(slog.DiscardHandler),
		MaxWorkers: opts.MaxWorkers,
		River:      opts.River,
	}
	if opts.Work {
		cfg.Queues = []string{jobs.AllQueues}
	}
	client, err := jobs.NewClient(s.Pool, reg, cfg)
	require.NoError(t, err)
	if !opts.Work {
		return client, nil
	}
	events, cancel := client.SubscribeConfig(&river.SubscribeConfig{
		ChanSize: 10_000,
		Kinds: []river.EventKind{
			river.EventKindJobCompleted, river.EventKindJobFailed,
			river.EventKindJobCancelled, river.EventKindJobSnoozed,
		},
	})
	t.Cleanup(cancel)
	require.NoError(t, client.Start(ctx))
	t.Cleanup(func() { require.NoError(t, client.Stop(context.WithoutCancel(ctx))) })
	// The relay moves what the domain's transactions write to the outbox
	// table; it stops before the client (cleanups run last first).
	rl := Relay(t, s, client, reg)
	require.NoError(t, rl.Start(ctx))
	t.Cleanup(func() { require.NoError(t, rl.Stop(context.WithoutCancel(ctx))) })
	return client, events
}

// Relay returns reg's relay on s, not started: a test that enqueues through
// the outbox calls its Drain to move what committed into river_job now, or
// Start to run it. It polls the table often (PollMax 20 ms), and logs
// nothing.
func Relay(t testing.TB, s *dbtest.Schema, client *river.Client[pgx.Tx], reg *jobs.Registry) *relay.Relay {
	t.Helper()
	rl, err := jobs.NewRelay(s.Pool, client, reg, &relay.Config{
		Schema: s.Name, PollMax: 20 * time.Millisecond, Logger: slog.New(slog.DiscardHandler),
	})
	require.NoError(t, err)
	return rl
}

// FailureInjector is a River worker middleware that marks a job's context
// with Inject whenever Fail says so, so that the domain's worker fails after
// its write, inside its transaction (the write rolls back), and River
// retries the job. Injected counts the marked attempts.
type FailureInjector struct {
	river.MiddlewareDefaults

	// Fail chooses the attempts to fail; nil fails none.
	Fail func(job *rivertype.JobRow) bool
	// Inject returns ctx marked for failure (the domain's
	// WithInjectedFailure).
	Inject func(ctx context.Context) context.Context
	// Injected counts the attempts marked.
	Injected atomic.Int64
}

// Work implements rivertype.WorkerMiddleware.
func (m *FailureInjector) Work(ctx context.Context, job *rivertype.JobRow, doInner func(context.Context) error) error {
	if m.Fail != nil && m.Fail(job) {
		m.Injected.Add(1)
		ctx = m.Inject(ctx)
	}
	return doInner(ctx)
}
