package jobs_test

import (
	"context"
	"fmt"
	"log"
	"strconv"

	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

// exportRunArgs exports one report of a customer.
type exportRunArgs struct {
	CustomerID int64 `json:"customer_id"`
	ReportID   int64 `json:"report_id"`
}

func (exportRunArgs) Kind() string { return "example.export_run" }

// exportRunWorker shares its queue fairly between customers: at most 2
// exports of one customer are in the queue (available or running) at once.
type exportRunWorker struct {
	river.WorkerDefaults[exportRunArgs]
}

// FairShareFor gives each customer 2 places.
func (exportRunWorker) FairShareFor(args exportRunArgs) jobs.FairShare {
	return jobs.FairShare{Key: strconv.FormatInt(args.CustomerID, 10), InFlight: 2}
}

func (exportRunWorker) Work(context.Context, *river.Job[exportRunArgs]) error { return nil }

// A worker that implements FairSharer keeps one customer's backlog from
// pushing other customers' jobs behind it: customer 1 queues 10 exports,
// customer 2 one; only 2 of customer 1's can be fetched, the other 8 wait
// as River pending jobs, released one by one as the 2 finish. Customer 2's
// job is behind at most 2 of customer 1's, not 10.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleFairSharer() {
	ctx := context.Background()
	s, release, err := dbtest.NewSchema(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer release()

	reg := jobs.NewRegistry()
	jobs.AddWorker(reg, reg.AddQueue("reports", "exports", 0, nil), exportRunWorker{})
	client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{Schema: s.Name, Logger: discardLogger()})
	if err != nil {
		log.Fatal(err)
	}
	ob, err := jobs.NewOutbox(s.Pool, client, reg, nil)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := ob.InTx(ctx, nil, func(_ context.Context, tx *outbox.Tx) error {
		for report := range int64(10) {
			if err := tx.Enqueue(exportRunArgs{CustomerID: 1, ReportID: report + 1}, nil); err != nil {
				return err
			}
		}
		return tx.Enqueue(exportRunArgs{CustomerID: 2, ReportID: 1}, nil)
	}); err != nil {
		log.Fatal(err)
	}
	rl, err := jobs.NewRelay(s.Pool, client, reg, &relay.Config{Schema: s.Name, Logger: discardLogger()})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := rl.Drain(ctx); err != nil {
		log.Fatal(err)
	}
	rows, err := s.Pool.Query(ctx, `SELECT args->>'customer_id', state::text, count(*) FROM river_job GROUP BY 1, 2 ORDER BY 1, 2`)
	if err != nil {
		log.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			customer, state string
			n               int
		)
		if err := rows.Scan(&customer, &state, &n); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("customer %s: %d %s\n", customer, n, state)
	}
	// Output:
	// customer 1: 2 available
	// customer 1: 8 pending
	// customer 2: 1 available
}
