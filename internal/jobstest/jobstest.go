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
	"github.com/jackc/pgx/v5/pgxpool"
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

// FailureInjector is a River worker middleware that makes the attempts Fail
// picks fail at their completion: the job's UPDATE to completed, which
// jobs.CompleteTx runs inside the worker's transaction after its write,
// raises "injected failure after the write", so the write and the
// completion roll back together and River retries the job. It works from
// outside, with a trigger on river_job, as a failed COMMIT would: no
// production code knows of it. Injected counts the attempts picked.
//
// Fail must pick only jobs whose worker completes with jobs.CompleteTx: a
// job completed by River's own completer would make its batch fail.
type FailureInjector struct {
	river.MiddlewareDefaults

	fail func(job *rivertype.JobRow) bool
	pool *pgxpool.Pool
	// Injected counts the attempts picked.
	Injected atomic.Int64
}

// injectFailureSQL installs the trigger in the schema of the connection's
// search_path; dropInjectorSQL removes it again, so that dbtest can reuse
// the schema.
const injectFailureSQL = `
CREATE TABLE test_injected_failures (job_id bigint NOT NULL, attempt smallint NOT NULL, PRIMARY KEY (job_id, attempt));
CREATE FUNCTION test_inject_failure() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF EXISTS (SELECT FROM test_injected_failures WHERE job_id = NEW.id AND attempt = NEW.attempt) THEN
		RAISE EXCEPTION 'injected failure after the write (job %, attempt %)', NEW.id, NEW.attempt;
	END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER test_inject_failure BEFORE UPDATE ON river_job FOR EACH ROW
	WHEN (OLD.state = 'running' AND NEW.state = 'completed') EXECUTE FUNCTION test_inject_failure();`

const dropInjectorSQL = `
DROP TRIGGER test_inject_failure ON river_job;
DROP FUNCTION test_inject_failure();
DROP TABLE test_injected_failures;`

// NewFailureInjector installs the trigger in s, until t ends, and returns
// the middleware that picks attempts with fail. With a nil fail it installs
// nothing and picks none. Call it before starting the client that uses it,
// so that the trigger outlives the client's last job.
func NewFailureInjector(ctx context.Context, t testing.TB, s *dbtest.Schema, fail func(job *rivertype.JobRow) bool) *FailureInjector {
	t.Helper()
	if fail != nil {
		s.Scratch(ctx, t, injectFailureSQL, dropInjectorSQL)
	}
	return &FailureInjector{fail: fail, pool: s.Pool}
}

// Work implements rivertype.WorkerMiddleware.
func (m *FailureInjector) Work(ctx context.Context, job *rivertype.JobRow, doInner func(context.Context) error) error {
	if m.fail != nil && m.fail(job) {
		if _, err := m.pool.Exec(ctx, `INSERT INTO test_injected_failures (job_id, attempt) VALUES ($1, $2) ON CONFLICT DO NOTHING`, job.ID, job.Attempt); err != nil {
			return err
		}
		m.Injected.Add(1)
	}
	return doInner(ctx)
}
