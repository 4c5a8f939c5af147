package donations_test

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/aftercommit/aftercommit/donations"
	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
)

// naiveOpenArgs is the naive design: one job per open.
type naiveOpenArgs struct {
	EmailID int64 `json:"email_id"`
}

func (naiveOpenArgs) Kind() string { return "bench.naive_open" }

// naiveOpenWorker adds one to the email's opens in the transaction that
// completes the job (exact, like the fold; one row update per event).
type naiveOpenWorker struct {
	river.WorkerDefaults[naiveOpenArgs]

	pool *pgxpool.Pool
}

func (w *naiveOpenWorker) Work(ctx context.Context, job *river.Job[naiveOpenArgs]) error {
	return pgx.BeginFunc(ctx, w.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `UPDATE emails SET opens = opens + 1 WHERE id = $1`, job.Args.EmailID); err != nil {
			return err
		}
		_, err := river.JobCompleteTx[*riverpgxv5.Driver](ctx, tx, job)
		return err
	})
}

// BenchmarkTrackOpen measures events accepted per second by the tracking
// endpoint's call while the workers run, over 50 emails from 8 goroutines:
// ns/op is wall time per accepted event. "naive" enqueues a job per event
// whose worker runs UPDATE emails SET opens = opens + 1; "coalesced" is
// Service.TrackOpen (a delta row and a queue-locked fold job);
// "coalesced_batch25" is an endpoint that buffers 25 events and sends them
// with one Service.TrackOpens. All run on QueueCounters (10 workers) with
// River's default fetch settings and the same pool.
//
// Reported besides ns/op: events/s, jobs/event (job rows created per
// accepted event) and drain_ms (how long the workers took, after the last
// event was accepted, to leave every open counted; not part of ns/op).
func BenchmarkTrackOpen(b *testing.B) {
	b.Run("naive", func(b *testing.B) {
		benchTracking(b, "bench.naive_open", 1, func(ctx context.Context, _ *donations.Service, ob *outbox.Outbox, ids []int64) error {
			_, err := ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
				return tx.Enqueue(naiveOpenArgs{EmailID: ids[0]}, nil)
			})
			return err
		})
	})
	b.Run("coalesced", func(b *testing.B) {
		benchTracking(b, donations.FoldEmailCountersKind, 1, func(ctx context.Context, svc *donations.Service, _ *outbox.Outbox, ids []int64) error {
			return svc.TrackOpen(ctx, ids[0])
		})
	})
	// An endpoint that buffers 25 events and sends them with one TrackOpens.
	b.Run("coalesced_batch25", func(b *testing.B) {
		benchTracking(b, donations.FoldEmailCountersKind, 25, func(ctx context.Context, svc *donations.Service, _ *outbox.Outbox, ids []int64) error {
			return svc.TrackOpens(ctx, ids)
		})
	})
}

// benchTracking sends b.N open events over emailCount emails, batch at a
// time, from concurrency goroutines, with track, while a client works the
// jobs; then it waits until every open is counted.
func benchTracking(b *testing.B, kind string, batch int, track func(ctx context.Context, svc *donations.Service, ob *outbox.Outbox, emailIDs []int64) error) {
	const (
		emailCount  = 50
		concurrency = 8
	)
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, b, &dbtest.Opts{MaxConns: 24})
	reg := jobs.NewRegistry()
	donations.Register(reg, s.Pool)
	jobs.AddWorker(reg, donations.QueueCounters, &naiveOpenWorker{pool: s.Pool})
	client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{Queues: []string{jobs.AllQueues}, Schema: s.Name, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	ob, err := jobs.NewOutbox(s.Pool, client, reg, directInsert)
	if err != nil {
		b.Fatal(err)
	}
	svc := donations.NewService(s.Pool, ob)
	emails := seedTrackedEmails(ctx, b, s.Pool, emailCount)
	if err := client.Start(ctx); err != nil {
		b.Fatal(err)
	}
	defer func() {
		if err := client.Stop(context.WithoutCancel(ctx)); err != nil {
			b.Error(err)
		}
	}()

	var (
		next   atomic.Int64
		failed atomic.Pointer[error]
		wg     sync.WaitGroup
	)
	b.ResetTimer()
	for range concurrency {
		wg.Go(func() {
			ids := make([]int64, 0, batch)
			for {
				hi := next.Add(int64(batch))
				lo := hi - int64(batch)
				if lo >= int64(b.N) || failed.Load() != nil {
					return
				}
				ids = ids[:0]
				for i := lo; i < min(hi, int64(b.N)); i++ {
					ids = append(ids, emails[i%emailCount])
				}
				if err := track(ctx, svc, ob, ids); err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	if err := failed.Load(); err != nil {
		b.Fatal(*err)
	}
	accepted := b.Elapsed()

	drainStart := time.Now()
	var jobsCreated int64
	deadline := time.Now().Add(5 * time.Minute)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		var opens int64
		err := s.Pool.QueryRow(ctx, `
			SELECT (SELECT coalesce(sum(opens), 0) FROM emails), (SELECT count(*) FROM river_job WHERE kind = $1)`,
			kind).Scan(&opens, &jobsCreated)
		if err != nil {
			b.Fatal(err)
		}
		if opens == int64(b.N) {
			break
		}
		if opens > int64(b.N) {
			b.Fatalf("%d opens counted for %d events", opens, b.N)
		}
		if time.Now().After(deadline) {
			b.Fatalf("only %d of %d opens counted after 5 minutes", opens, b.N)
		}
		<-tick.C
	}
	b.ReportMetric(float64(b.N)/accepted.Seconds(), "events/s")
	b.ReportMetric(float64(jobsCreated)/float64(b.N), "jobs/event")
	b.ReportMetric(float64(time.Since(drainStart).Milliseconds()), "drain_ms")
}
