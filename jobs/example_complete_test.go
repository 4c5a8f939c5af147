package jobs_test

import (
	"context"
	"fmt"
	"log"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
)

// markArgs asks to mark one ping.
type markArgs struct {
	PingID int64 `json:"ping_id"`
}

func (markArgs) Kind() string { return "example.mark" }

// markWorker marks a ping and completes its job in the same transaction.
type markWorker struct {
	river.WorkerDefaults[markArgs]
	pool *pgxpool.Pool
}

func (w *markWorker) Work(ctx context.Context, job *river.Job[markArgs]) error {
	return pgx.BeginFunc(ctx, w.pool, func(tx pgx.Tx) error {
		var count int
		if err := tx.QueryRow(ctx, `UPDATE pings SET ping_count = ping_count + 1 WHERE id = $1 RETURNING ping_count`,
			job.Args.PingID).Scan(&count); err != nil {
			return err
		}
		return jobs.CompleteTx(ctx, tx, job, map[string]int{"ping_count": count})
	})
}

// The worker's UPDATE, its output and the job's completion commit in one
// transaction.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run's client ends with the process, its schema is left to the test harness' clean-up of old runs
func ExampleCompleteTx() {
	ctx := context.Background()
	s, release, err := dbtest.NewSchema(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer release()

	workers := river.NewWorkers()
	river.AddWorker(workers, &markWorker{pool: s.Pool})
	client, completed, stop := startExampleClient(ctx, s, workers, 1)
	defer stop()

	var pingID int64
	if err := s.Pool.QueryRow(ctx, `INSERT INTO pings (note) VALUES ('example') RETURNING id`).Scan(&pingID); err != nil {
		log.Fatal(err)
	}
	if _, err := client.Insert(ctx, markArgs{PingID: pingID}, nil); err != nil {
		log.Fatal(err)
	}
	<-completed

	var count int
	var state, output string
	if err := s.Pool.QueryRow(ctx, `
SELECT p.ping_count, j.state, j.metadata->>'output'
  FROM pings AS p, river_job AS j WHERE p.id = $1 AND j.kind = 'example.mark'`, pingID).Scan(&count, &state, &output); err != nil {
		log.Fatal(err)
	}
	fmt.Println("ping_count:", count)
	fmt.Println("job:", state, output)
	// Output:
	// ping_count: 1
	// job: completed {"ping_count": 1}
}
