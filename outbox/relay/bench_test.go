package relay_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

// benchBacklog is how many outbox rows each operation of
// BenchmarkRelayDrain moves (or River inserts).
const benchBacklog = 100_000

type benchNoopArgs struct {
	N int `json:"n"`
}

func (benchNoopArgs) Kind() string { return "bench.noop" }

// BenchmarkRelayDrain: a backlog of 100,000 outbox rows (written by one
// INSERT … SELECT generate_series, not timed) moved into river_job by
// Relay.Drain, against River's InsertManyFastTx of the same 100,000 jobs
// in transactions of the same size. One op is the whole backlog; the
// sub-benchmarks alternate within each -count round. Baseline:
// "insert_many_fast_1000".
func BenchmarkRelayDrain(b *testing.B) {
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, b, &dbtest.Opts{MaxConns: 4})
	client, err := river.NewClient(riverpgxv5.New(s.Pool), &river.Config{Schema: s.Name})
	if err != nil {
		b.Fatal(err)
	}
	truncate := func(b *testing.B) {
		b.Helper()
		if _, err := s.Pool.Exec(ctx, `TRUNCATE river_job, outbox_jobs`); err != nil {
			b.Fatal(err)
		}
	}
	check := func(b *testing.B) {
		b.Helper()
		var jobs, left int
		if err := s.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM river_job), (SELECT count(*) FROM outbox_jobs)`).Scan(&jobs, &left); err != nil {
			b.Fatal(err)
		}
		if jobs != benchBacklog || left != 0 {
			b.Fatalf("%d jobs and %d outbox rows left, want %d and 0", jobs, left, benchBacklog)
		}
	}
	params := make([]river.InsertManyParams, benchBacklog)
	for i := range params {
		params[i] = river.InsertManyParams{Args: benchNoopArgs{N: i}}
	}
	insertManyFast := func(batch int) func(b *testing.B) {
		return func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				truncate(b)
				b.StartTimer()
				for from := 0; from < benchBacklog; from += batch {
					if err := pgx.BeginFunc(ctx, s.Pool, func(tx pgx.Tx) error {
						_, err := client.InsertManyFastTx(ctx, tx, params[from:min(benchBacklog, from+batch)])
						return err
					}); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				check(b)
				b.StartTimer()
			}
			b.ReportMetric(float64(b.N*benchBacklog)/b.Elapsed().Seconds(), "jobs/s")
		}
	}
	drain := func(cfg relay.Config) func(b *testing.B) {
		return func(b *testing.B) {
			cfg.Schema = s.Name
			rl, err := relay.New(s.Pool, client, &cfg)
			if err != nil {
				b.Fatal(err)
			}
			for range b.N {
				b.StopTimer()
				truncate(b)
				if _, err := s.Pool.Exec(ctx, `
INSERT INTO outbox_jobs (kind, args) SELECT 'bench.noop', jsonb_build_object('n', i) FROM generate_series(1, $1) i`, benchBacklog); err != nil {
					b.Fatal(err)
				}
				if _, err := s.Pool.Exec(ctx, `ANALYZE outbox_jobs`); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				res, err := rl.Drain(ctx)
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if res.Rows != benchBacklog || res.Inserted != benchBacklog {
					b.Fatalf("moved %d rows into %d jobs, want %d", res.Rows, res.Inserted, benchBacklog)
				}
				check(b)
				b.StartTimer()
			}
			b.ReportMetric(float64(b.N*benchBacklog)/b.Elapsed().Seconds(), "jobs/s")
		}
	}
	b.Run("insert_many_fast_1000", insertManyFast(1000))
	for _, batch := range []int{1000, 5000} {
		b.Run(fmt.Sprintf("drain_batch%d", batch), drain(relay.Config{BatchSize: batch}))
		b.Run(fmt.Sprintf("drain_batch%d_no_copy", batch), drain(relay.Config{BatchSize: batch, CopyMinJobs: -1}))
	}
	b.Run("insert_many_fast_5000", insertManyFast(5000))
}
