package outbox_test

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
)

// The benchmarks compare a business transaction with and without its
// follow-up job. Sub-benchmarks of one function run in turn within each
// -count round, so baseline and variants alternate over the run. See
// BENCHMARKS.md for the command and the figures.

type benchBundle struct {
	pool   *pgxpool.Pool
	client *river.Client[pgx.Tx]
	// ob writes jobs to the outbox table (the default path); direct writes
	// them to river_job with River's insert (Config.DirectInsert).
	ob, direct *outbox.Outbox
	// notifyNever and notifyEvery are ob with RelayNotifyInterval -1 (no
	// notification) and 1ns (one with every transaction).
	notifyNever, notifyEvery *outbox.Outbox
}

func benchSetup(ctx context.Context, b *testing.B) *benchBundle {
	b.Helper()
	s := dbtest.TestSchema(ctx, b, &dbtest.Opts{MaxConns: 16})
	client, err := river.NewClient(riverpgxv5.New(s.Pool), &river.Config{Schema: s.Name})
	if err != nil {
		b.Fatal(err)
	}
	ob, err := outbox.New(s.Pool, client, nil)
	if err != nil {
		b.Fatal(err)
	}
	bb := &benchBundle{pool: s.Pool, client: client, ob: ob}
	for _, o := range []struct {
		dst *(*outbox.Outbox)
		cfg outbox.Config
	}{
		{&bb.direct, outbox.Config{DirectInsert: true}},
		{&bb.notifyNever, outbox.Config{RelayNotifyInterval: -1}},
		{&bb.notifyEvery, outbox.Config{RelayNotifyInterval: time.Nanosecond}},
	} {
		if *o.dst, err = outbox.New(s.Pool, client, &o.cfg); err != nil {
			b.Fatal(err)
		}
	}
	return bb
}

const benchInsertPing = `INSERT INTO pings (note) VALUES ('bench') RETURNING id`

// runConcurrent runs op b.N times over conc goroutines.
func runConcurrent(b *testing.B, conc int, op func() error) {
	b.Helper()
	if conc == 1 {
		for b.Loop() {
			if err := op(); err != nil {
				b.Fatal(err)
			}
		}
		return
	}
	b.SetParallelism((conc + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := op(); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// pingJobTx is a transaction of BenchmarkTxOneJob: one domain row and its
// job, through ob.
func pingJobTx(ctx context.Context, ob *outbox.Outbox) func() error {
	return func() error {
		_, err := ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
			var id int64
			if err := tx.QueryRow(ctx, benchInsertPing).Scan(&id); err != nil {
				return err
			}
			return tx.Enqueue(jobs.PingArgs{PingID: id}, nil)
		})
		return err
	}
}

// BenchmarkTxOneJob: one domain row per transaction, with and without one
// enqueued job. Baseline: "plain" (pgx.BeginFunc, no job). "outbox_job" is
// the default path (one INSERT into outbox_jobs sent with the COMMIT; no
// relay runs, the rows stay), "outbox_job_direct" the DirectInsert path
// (River's insert into river_job sent with the COMMIT), "river_insert_tx"
// River's InsertTx then COMMIT.
func BenchmarkTxOneJob(b *testing.B) {
	ctx := context.Background()
	bb := benchSetup(ctx, b)

	variants := []struct {
		name string
		op   func() error
	}{
		{"plain", func() error {
			return pgx.BeginFunc(ctx, bb.pool, func(tx pgx.Tx) error {
				var id int64
				return tx.QueryRow(ctx, benchInsertPing).Scan(&id)
			})
		}},
		{"outbox_no_job", func() error {
			_, err := bb.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
				var id int64
				return tx.QueryRow(ctx, benchInsertPing).Scan(&id)
			})
			return err
		}},
		{"outbox_job", pingJobTx(ctx, bb.ob)},
		{"outbox_job_direct", pingJobTx(ctx, bb.direct)},
		{"river_insert_tx", func() error {
			return pgx.BeginFunc(ctx, bb.pool, func(tx pgx.Tx) error {
				var id int64
				if err := tx.QueryRow(ctx, benchInsertPing).Scan(&id); err != nil {
					return err
				}
				_, err := bb.client.InsertTx(ctx, tx, jobs.PingArgs{PingID: id}, nil)
				return err
			})
		}},
	}
	for _, conc := range []int{1, 8} {
		for _, v := range variants {
			b.Run(fmt.Sprintf("conc=%d/%s", conc, v.name), func(b *testing.B) {
				runConcurrent(b, conc, v.op)
			})
		}
	}
}

// BenchmarkRelayNotify: the cost of waking the relays from the writer, at 8
// clients. Baseline: "interval_10ms" (RelayNotifyIntervalDefault: a
// pg_notify with at most one COMMIT per 10 ms); "never" sends none (the
// relays poll), "every_tx" one with every COMMIT (Postgres serializes
// committing transactions that notify).
func BenchmarkRelayNotify(b *testing.B) {
	ctx := context.Background()
	bb := benchSetup(ctx, b)
	for _, v := range []struct {
		name string
		ob   *outbox.Outbox
	}{{"interval_10ms", bb.ob}, {"never", bb.notifyNever}, {"every_tx", bb.notifyEvery}} {
		b.Run("conc=8/"+v.name, func(b *testing.B) { runConcurrent(b, 8, pingJobTx(ctx, v.ob)) })
	}
}

// BenchmarkTxBulk: 1,000 domain rows in one transaction, with and without
// 1,000 enqueues that de-duplicate to 10 jobs. Two ways to write the rows:
// one INSERT for all of them (the hardest baseline: the transaction is
// short), and one INSERT per row (the after_commit loop this replaces).
// Baseline of each group: "rows_only".
func BenchmarkTxBulk(b *testing.B) {
	ctx := context.Background()
	bb := benchSetup(ctx, b)

	const rows, distinct = 1000, 10
	notes := make([]string, rows)
	for i := range notes {
		notes[i] = fmt.Sprint("bulk ", i)
	}
	writers := []struct {
		name string
		fn   func(ctx context.Context, tx pgx.Tx) ([]int64, error)
	}{
		{"one_statement", func(ctx context.Context, tx pgx.Tx) ([]int64, error) {
			r, err := tx.Query(ctx, `INSERT INTO pings (note) SELECT unnest($1::text[]) RETURNING id`, notes)
			if err != nil {
				return nil, err
			}
			return pgx.CollectRows(r, pgx.RowTo[int64])
		}},
		{"row_by_row", func(ctx context.Context, tx pgx.Tx) ([]int64, error) {
			ids := make([]int64, len(notes))
			for i, n := range notes {
				if err := tx.QueryRow(ctx, `INSERT INTO pings (note) VALUES ($1) RETURNING id`, n).Scan(&ids[i]); err != nil {
					return nil, err
				}
			}
			return ids, nil
		}},
	}
	for _, w := range writers {
		b.Run(w.name+"/rows_only", func(b *testing.B) {
			runConcurrent(b, 1, func() error {
				return pgx.BeginFunc(ctx, bb.pool, func(tx pgx.Tx) error {
					_, err := w.fn(ctx, tx)
					return err
				})
			})
		})
		b.Run(w.name+"/rows_and_jobs", func(b *testing.B) {
			runConcurrent(b, 1, func() error {
				_, err := bb.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
					ids, err := w.fn(ctx, tx)
					if err != nil {
						return err
					}
					for i := range ids {
						if err := tx.Enqueue(jobs.PingArgs{PingID: ids[i%distinct]}, nil); err != nil {
							return err
						}
					}
					return nil
				})
				return err
			})
		})
	}
}

// carArgs picks its own de-duplication key, as a report-per-car job would.
type carArgs struct {
	CarID int64 `json:"car_id"`
}

func (carArgs) Kind() string        { return "bench.car_report" }
func (a carArgs) DedupeKey() string { return strconv.FormatInt(a.CarID, 10) }

// BenchmarkBatchAdd1000: the client-side cost of 1,000 enqueues that
// de-duplicate to 10 (validation, key, map), without the database. Baseline:
// "json_key"; "deduper_key" uses args with DedupeKey, whose duplicates are
// dropped before they are encoded.
func BenchmarkBatchAdd1000(b *testing.B) {
	ctx := context.Background()
	bb := benchSetup(ctx, b)
	b.Run("json_key", func(b *testing.B) {
		for b.Loop() {
			batch := bb.ob.NewBatch()
			for i := range 1000 {
				if err := batch.Add(jobs.PingArgs{PingID: int64(i % 10)}, nil); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("deduper_key", func(b *testing.B) {
		for b.Loop() {
			batch := bb.ob.NewBatch()
			for i := range 1000 {
				if err := batch.Add(carArgs{CarID: int64(i % 10)}, nil); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}
