package jobs_test

import (
	"context"
	"encoding/json"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
)

// invoiceArgs is a job of a test domain. Reason was added after jobs were
// already queued without it: an absent reason means "scheduled".
type invoiceArgs struct {
	InvoiceID int64  `json:"invoice_id"`
	Reason    string `json:"reason,omitempty"`
}

func (invoiceArgs) Kind() string { return "test.invoice" }

// invoiceWorker records what it worked; Needed says no for invoices that
// are no longer pending in the pings table (used as the source of truth:
// a row with note 'pending').
type invoiceWorker struct {
	river.WorkerDefaults[invoiceArgs]
	schema  *dbtest.Schema
	worked  chan invoiceArgs
	checked atomic.Int64
}

func (w *invoiceWorker) Needed(ctx context.Context, job *river.Job[invoiceArgs]) (bool, error) {
	w.checked.Add(1)
	var pending bool
	err := w.schema.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pings WHERE id = $1 AND note = 'pending')`, job.Args.InvoiceID).Scan(&pending)
	return pending, err
}

func (w *invoiceWorker) Work(_ context.Context, job *river.Job[invoiceArgs]) error {
	args := job.Args
	if args.Reason == "" {
		args.Reason = "scheduled" // the default of a field older jobs lack
	}
	w.worked <- args
	return nil
}

type otherArgs struct{}

func (otherArgs) Kind() string { return "test.other" }

type otherWorker struct {
	river.WorkerDefaults[otherArgs]
}

func (otherWorker) Work(context.Context, *river.Job[otherArgs]) error { return nil }

// pinnedArgs names its own queue in InsertOpts.
type pinnedArgs struct{}

func (pinnedArgs) Kind() string                 { return "test.pinned" }
func (pinnedArgs) InsertOpts() river.InsertOpts { return river.InsertOpts{Queue: "billing_other"} }

type pinnedWorker struct {
	river.WorkerDefaults[pinnedArgs]
}

func (pinnedWorker) Work(context.Context, *river.Job[pinnedArgs]) error { return nil }

func TestRegistryQueues(t *testing.T) {
	t.Parallel()

	reg := jobs.NewRegistry()
	require.Equal(t, "account_default", reg.AddQueue("account", "default", 100, nil))
	reg.AddQueue("account", "normal", 0, nil)
	reg.AddQueue("account", "slow", -5, nil)
	reg.AddQueue("account", "refresh", -5000, nil)
	reg.AddQueue("account", "tuned", -5000, &jobs.QueueOpts{MaxWorkers: 7})
	require.NoError(t, reg.Err())
	require.Equal(t, []jobs.Queue{
		{Name: "account_default", Domain: "account", Weight: 100, Priority: 1, MaxWorkers: 100},
		{Name: "account_normal", Domain: "account", Weight: 0, Priority: 2, MaxWorkers: 50},
		{Name: "account_refresh", Domain: "account", Weight: -5000, Priority: 4, MaxWorkers: 2},
		{Name: "account_slow", Domain: "account", Weight: -5, Priority: 3, MaxWorkers: 10},
		{Name: "account_tuned", Domain: "account", Weight: -5000, Priority: 4, MaxWorkers: 7},
	}, reg.Queues())
	require.Equal(t, []string{"account_default", "account_normal", "account_refresh", "account_slow", "account_tuned", "default"}, reg.QueueNames())
}

func TestRegistryErrorsNameTheCulprit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)

	reg := jobs.NewRegistry()
	q := reg.AddQueue("billing", "invoices", 0, nil)
	reg.AddQueue("billing", "other", 0, nil)
	reg.AddQueue("billing", "invoices", 0, nil)                         // twice
	reg.AddQueue("Billing", "x", 0, nil)                                // bad name
	reg.AddQueue("billing", "huge", 0, &jobs.QueueOpts{MaxWorkers: -1}) // bad option
	jobs.AddWorker(reg, q, &invoiceWorker{})
	jobs.AddWorker(reg, q, &invoiceWorker{})                // same kind twice
	jobs.AddWorker(reg, "billing_nowhere", otherWorker{})   // undeclared queue
	jobs.AddWorker(reg, "billing_invoices", pinnedWorker{}) // InsertOpts disagree
	reg.AddPeriodic(nil)

	err := reg.Err()
	require.ErrorIs(t, err, jobs.ErrRegistry)
	require.Equal(t, `jobs: registry: queue "billing_invoices" declared twice
jobs: registry: queue "x" of domain "Billing": domain and name must be lower-case letters and digits separated by _ or -, 64 characters in all
jobs: registry: queue "billing_huge": MaxWorkers must be between 1 and 10000, got -1
jobs: registry: kind "test.invoice": worker for kind "test.invoice" is already registered
jobs: registry: worker for kind "test.other" is on queue "billing_nowhere", which no domain declared
jobs: registry: kind "test.pinned": its InsertOpts name queue "billing_other" but it is registered on "billing_invoices"
jobs: registry: nil periodic job`, err.Error())

	_, err = jobs.NewClient(s.Pool, reg, nil)
	require.ErrorIs(t, err, jobs.ErrRegistry)

	good := jobs.NewRegistry()
	good.AddQueue("billing", "invoices", 0, nil)
	_, err = jobs.NewClient(s.Pool, good, &jobs.ClientConfig{Queues: []string{"billing_invoices", "billing_typo"}})
	require.EqualError(t, err, "jobs: registry: unknown queue(s) billing_typo; declared: billing_invoices, default")
	_, err = jobs.NewClient(s.Pool, good, &jobs.ClientConfig{Queues: []string{jobs.AllQueues, "billing_invoices"}})
	require.EqualError(t, err, `jobs: registry: ClientConfig.Queues: AllQueues must stand alone, got ["*" "billing_invoices"]`)
}

// TestClientQueues checks River's reading of ClientConfig.Queues: nil and
// empty make an insert-only client (which cannot start), AllQueues works
// every declared queue and River's default, a list works those queues.
func TestClientQueues(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	reg := jobs.NewRegistry()
	q := reg.AddQueue("billing", "invoices", 0, nil)
	reg.AddQueue("billing", "refunds", 0, nil)
	jobs.AddWorker(reg, q, &invoiceWorker{})

	for _, tc := range []struct {
		name   string
		queues []string
		want   []string // nil: insert-only
	}{
		{"Nil", nil, nil},
		{"Empty", []string{}, nil},
		{"All", []string{jobs.AllQueues}, []string{"billing_invoices", "billing_refunds", "default"}},
		{"Listed", []string{"billing_refunds"}, []string{"billing_refunds"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := dbtest.TestSchema(ctx, t, nil)
			client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{Queues: tc.queues, Schema: s.Name, Logger: discardLogger()})
			require.NoError(t, err)
			if tc.want == nil {
				require.EqualError(t, client.Start(ctx), "client Queues and Workers must be configured for a client to start working")
				return
			}
			require.NoError(t, client.Start(ctx))
			t.Cleanup(func() { require.NoError(t, client.Stop(context.WithoutCancel(ctx))) })
			// A started producer records its queue in river_queue.
			require.EventuallyWithT(t, func(c *assert.CollectT) {
				rows, err := s.Pool.Query(ctx, `SELECT name FROM river_queue ORDER BY name`)
				require.NoError(c, err)
				got, err := pgx.CollectRows(rows, pgx.RowTo[string])
				require.NoError(c, err)
				assert.Equal(c, tc.want, got)
			}, 10*time.Second, 10*time.Millisecond)
		})
	}
}

type registryBundle struct {
	schema *dbtest.Schema
	worker *invoiceWorker
	client *river.Client[pgx.Tx]
	ob     *outbox.Outbox
	events <-chan *river.Event
}

// setupRegistry builds a registry with a billing domain and starts a client
// working the given queues.
func setupRegistry(ctx context.Context, t *testing.T, queues []string) *registryBundle {
	t.Helper()
	s := dbtest.TestSchema(ctx, t, nil)
	w := &invoiceWorker{schema: s, worked: make(chan invoiceArgs, 100)}

	reg := jobs.NewRegistry()
	fast := reg.AddQueue("billing", "fast", 100, nil)
	slow := reg.AddQueue("billing", "slow", -5000, nil)
	jobs.AddWorker(reg, fast, w)
	jobs.AddWorker(reg, slow, otherWorker{})

	client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{
		Queues: queues,
		Schema: s.Name,
		Logger: discardLogger(),
		River:  &river.Config{FetchCooldown: 20 * time.Millisecond, FetchPollInterval: 50 * time.Millisecond},
	})
	require.NoError(t, err)
	var events <-chan *river.Event
	if queues == nil || len(queues) > 0 { // an insert-only client is neither started nor subscribed
		var cancel func()
		events, cancel = client.Subscribe(river.EventKindJobCompleted, river.EventKindJobFailed)
		t.Cleanup(cancel)
		require.NoError(t, client.Start(ctx))
		t.Cleanup(func() { require.NoError(t, client.Stop(context.WithoutCancel(ctx))) })
	}

	ob, err := jobs.NewOutbox(s.Pool, client, reg, directInsert)
	require.NoError(t, err)
	return &registryBundle{schema: s, worker: w, client: client, ob: ob, events: events}
}

func (b *registryBundle) pending(ctx context.Context, t *testing.T, tx *outbox.Tx) int64 {
	t.Helper()
	var id int64
	require.NoError(t, tx.QueryRow(ctx, `INSERT INTO pings (note) VALUES ('pending') RETURNING id`).Scan(&id))
	return id
}

func (b *registryBundle) waitCompleted(t *testing.T) *rivertype.JobRow {
	t.Helper()
	select {
	case ev := <-b.events:
		require.Equal(t, river.EventKindJobCompleted, ev.Kind, "job errors: %+v", ev.Job.Errors)
		return ev.Job
	case <-time.After(15 * time.Second):
		t.Fatal("no job completed within 15 s")
		return nil
	}
}

func TestRegistryClientAndOutbox(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("KindsGetTheirQueueAndPriorityFromTheRegistry", func(t *testing.T) {
		t.Parallel()
		b := setupRegistry(ctx, t, []string{}) // insert-only: nothing runs

		_, err := b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			require.NoError(t, tx.Enqueue(invoiceArgs{InvoiceID: 1}, nil))
			require.NoError(t, tx.Enqueue(otherArgs{}, nil))
			// Explicit options still win.
			return tx.Enqueue(invoiceArgs{InvoiceID: 2}, &river.InsertOpts{Queue: "billing_slow", Priority: 3})
		})
		require.NoError(t, err)
		type row struct {
			Kind     string
			Queue    string
			Priority int16
		}
		rows, err := b.schema.Pool.Query(ctx, `SELECT kind, queue, priority FROM river_job ORDER BY id`)
		require.NoError(t, err)
		got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[row])
		require.NoError(t, err)
		require.Equal(t, []row{
			{"test.invoice", "billing_fast", 1},
			{"test.other", "billing_slow", 4},
			{"test.invoice", "billing_slow", 3},
		}, got)

		_, err = b.ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			return tx.Enqueue(invoiceArgs{}, &river.InsertOpts{Queue: "billing_typo"})
		})
		require.ErrorIs(t, err, outbox.ErrUnknownQueue)
	})

	t.Run("AProcessWorksOnlyItsQueues", func(t *testing.T) {
		t.Parallel()
		b := setupRegistry(ctx, t, []string{"billing_fast"})

		_, err := b.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
			require.NoError(t, tx.Enqueue(otherArgs{}, nil)) // billing_slow: not worked here
			return tx.Enqueue(invoiceArgs{InvoiceID: b.pending(ctx, t, tx)}, nil)
		})
		require.NoError(t, err)
		job := b.waitCompleted(t)
		require.Equal(t, "test.invoice", job.Kind)
		var state string
		require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT state::text FROM river_job WHERE kind = 'test.other'`).Scan(&state))
		require.Equal(t, "available", state)
	})

	t.Run("NotNeededJobCompletesWithoutWorkAndIsRecorded", func(t *testing.T) {
		t.Parallel()
		b := setupRegistry(ctx, t, []string{jobs.AllQueues})

		_, err := b.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
			var done int64
			require.NoError(t, tx.QueryRow(ctx, `INSERT INTO pings (note) VALUES ('paid') RETURNING id`).Scan(&done))
			return tx.Enqueue(invoiceArgs{InvoiceID: done}, nil)
		})
		require.NoError(t, err)
		job := b.waitCompleted(t)
		var out jobs.SkippedOutput
		require.NoError(t, json.Unmarshal(job.Output(), &out))
		require.Equal(t, jobs.SkippedOutput{Skipped: "not needed"}, out)
		require.Equal(t, int64(1), b.worker.checked.Load())
		require.Empty(t, b.worker.worked, "Work was not called")
	})

	t.Run("ScheduledDayAheadIsSkippedWhenTheSourceChanged", func(t *testing.T) {
		t.Parallel()
		b := setupRegistry(ctx, t, []string{jobs.AllQueues})

		var stillPending, paid int64
		_, err := b.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
			stillPending = b.pending(ctx, t, tx)
			paid = b.pending(ctx, t, tx)
			require.NoError(t, tx.Enqueue(invoiceArgs{InvoiceID: stillPending, Reason: "reminder"}, jobs.In(24*time.Hour)))
			return tx.Enqueue(invoiceArgs{InvoiceID: paid, Reason: "reminder"}, jobs.At(time.Now().Add(24*time.Hour)))
		})
		require.NoError(t, err)
		var scheduled int
		require.NoError(t, b.schema.Pool.QueryRow(ctx, `
			SELECT count(*) FROM river_job
			 WHERE state = 'scheduled' AND scheduled_at BETWEEN now() + interval '23 hours' AND now() + interval '25 hours'`).Scan(&scheduled))
		require.Equal(t, 2, scheduled)

		// The invoice is paid meanwhile; then a day passes.
		_, err = b.schema.Pool.Exec(ctx, `UPDATE pings SET note = 'paid' WHERE id = $1`, paid)
		require.NoError(t, err)
		_, err = b.schema.Pool.Exec(ctx, `UPDATE river_job SET scheduled_at = now() - interval '1 second'`)
		require.NoError(t, err)

		outputs := map[int64]string{}
		for range 2 {
			job := b.waitCompleted(t)
			var args invoiceArgs
			require.NoError(t, json.Unmarshal(job.EncodedArgs, &args))
			outputs[args.InvoiceID] = string(job.Output())
		}
		require.Equal(t, map[int64]string{stillPending: "", paid: `{"skipped": "not needed"}`}, outputs)
		require.Equal(t, invoiceArgs{InvoiceID: stillPending, Reason: "reminder"}, <-b.worker.worked)
	})

	t.Run("JobQueuedWithAnOlderArgsShapeRunsWithTheDefault", func(t *testing.T) {
		t.Parallel()
		b := setupRegistry(ctx, t, []string{jobs.AllQueues})

		var id int64
		require.NoError(t, b.schema.Pool.QueryRow(ctx, `INSERT INTO pings (note) VALUES ('pending') RETURNING id`).Scan(&id))
		// Written by a release that did not know the reason field.
		_, err := b.schema.Pool.Exec(ctx, `
			INSERT INTO river_job (args, kind, max_attempts, priority, queue, state)
			VALUES (jsonb_build_object('invoice_id', $1::bigint), 'test.invoice', 25, 1, 'billing_fast', 'available')`, id)
		require.NoError(t, err)
		b.waitCompleted(t)
		require.Equal(t, invoiceArgs{InvoiceID: id, Reason: "scheduled"}, <-b.worker.worked)
	})

	t.Run("NeededErrorRetries", func(t *testing.T) {
		t.Parallel()
		s := dbtest.TestSchema(ctx, t, nil)
		reg := jobs.NewRegistry()
		jobs.AddWorker(reg, river.QueueDefault, &brokenNeededWorker{})
		client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{Queues: []string{jobs.AllQueues}, Schema: s.Name, Logger: discardLogger()})
		require.NoError(t, err)
		events, cancel := client.Subscribe(river.EventKindJobFailed)
		defer cancel()
		require.NoError(t, client.Start(ctx))
		defer func() { require.NoError(t, client.Stop(context.WithoutCancel(ctx))) }()
		ob, err := jobs.NewOutbox(s.Pool, client, reg, directInsert)
		require.NoError(t, err)

		_, err = ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
			return tx.Enqueue(brokenArgs{}, nil)
		})
		require.NoError(t, err)
		select {
		case ev := <-events:
			// River makes a job whose retry is due within seconds available at once.
			require.Contains(t, []rivertype.JobState{rivertype.JobStateRetryable, rivertype.JobStateAvailable}, ev.Job.State)
			require.Equal(t, 1, ev.Job.Attempt)
			require.Len(t, ev.Job.Errors, 1)
			require.Contains(t, ev.Job.Errors[0].Error, "jobs: asking whether test.broken job")
			require.Contains(t, ev.Job.Errors[0].Error, "is needed: source of truth unreachable")
		case <-time.After(15 * time.Second):
			t.Fatal("no failure within 15 s")
		}
	})
}

type brokenArgs struct{}

func (brokenArgs) Kind() string { return "test.broken" }

type brokenNeededWorker struct {
	river.WorkerDefaults[brokenArgs]
}

func (*brokenNeededWorker) Needed(context.Context, *river.Job[brokenArgs]) (bool, error) {
	return false, errors.New("source of truth unreachable")
}

func (*brokenNeededWorker) Work(context.Context, *river.Job[brokenArgs]) error { return nil }

// TestKindDefaultsGiveAPriorityRiverAccepts: a kind on River's default queue,
// which no domain declares, gets River's default priority, so a producer
// that writes the job row itself with the registry's defaults writes a row
// River's check accepts (priority 1–4).
func TestKindDefaultsGiveAPriorityRiverAccepts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)

	reg := jobs.NewRegistry()
	jobs.RegisterPing(reg, s.Pool)
	q := reg.AddQueue("billing", "default", jobs.WeightHigh, nil)
	jobs.AddWorker(reg, q, &invoiceWorker{})
	require.NoError(t, reg.Err())

	for _, tc := range []struct {
		kind     string
		queue    string
		priority int
	}{
		{jobs.PingArgs{}.Kind(), river.QueueDefault, river.PriorityDefault},
		{invoiceArgs{}.Kind(), "billing_default", 1},
	} {
		queue, priority, ok := reg.KindDefaults(tc.kind)
		require.True(t, ok)
		require.Equal(t, tc.queue, queue, tc.kind)
		require.Equal(t, tc.priority, priority, tc.kind)
		_, err := s.Pool.Exec(ctx, `INSERT INTO river_job (kind, args, queue, priority, max_attempts, state)
			VALUES ($1, '{}', $2, $3, 25, 'available')`, tc.kind, queue, priority)
		require.NoError(t, err, "a hand-inserted %s row with the registry's defaults", tc.kind)
	}
	_, _, ok := reg.KindDefaults("test.unknown")
	require.False(t, ok)
}
