package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/donations"
	"github.com/aftercommit/aftercommit/internal/app"
	"github.com/aftercommit/aftercommit/internal/dbconn"
	"github.com/aftercommit/aftercommit/inventory"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/relay"
	"github.com/aftercommit/aftercommit/reporting"
)

// The donations scenario's data, seeded once: the users, fundraisers and
// sent emails an application has when donations come in.
const (
	donationUsers       = 1_000
	donationFundraisers = 10
	donationEmails      = 5_000
	// donationClients is how many goroutines donate at once.
	donationClients = 8
)

// insertDonationSQL is a succeeded donation's row alone, as a plain
// transaction writes it: the baseline of the donation scenarios.
const insertDonationSQL = `
INSERT INTO donations (user_id, fundraiser_id, email_id, donor_email, amount_cents, currency, status, note)
VALUES ($1, $2, $3, $4, $5, $6, 'succeeded', $7)
RETURNING id, created_at`

// drainTimeout bounds the wait for a round's jobs to complete.
const drainTimeout = 2 * time.Minute

// donationSeed is the seeded data, by email: each donation names an email
// and comes from that email's user for that email's fundraiser.
type donationSeed struct {
	emailIDs      []int64
	userIDs       []int64
	fundraiserIDs []int64
	addrs         []string
}

// input is a succeeded donation that followed the i-th email's link.
func (s *donationSeed) input(i int) donations.DonateInput {
	return donations.DonateInput{
		FundraiserID: s.fundraiserIDs[i],
		EmailID:      s.emailIDs[i],
		DonorEmail:   s.addrs[i],
		AmountCents:  2500,
		Currency:     "USD",
		Note:         "bench",
		Succeeded:    true,
	}
}

// seedDonations inserts the users, fundraisers and sent emails by SQL, as
// the demo does (internal/demo seedDonations): an email goes to a random
// user for a random fundraiser.
func seedDonations(ctx context.Context, pool *pgxpool.Pool) (*donationSeed, error) {
	names := make([]string, donationUsers)
	addrs := make([]string, donationUsers)
	for i := range donationUsers {
		names[i] = fmt.Sprintf("Bench User %d", i)
		addrs[i] = fmt.Sprintf("user%05d@bench.example", i)
	}
	userIDs, err := queryIDs(ctx, pool, `
INSERT INTO users (name, email)
SELECT n, a FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u (n, a, o) ORDER BY o
RETURNING id`, names, addrs)
	if err != nil {
		return nil, fmt.Errorf("inserting users: %w", err)
	}
	fundraiserIDs, err := queryIDs(ctx, pool, `
INSERT INTO fundraisers (name) SELECT 'Bench fundraiser ' || i FROM generate_series(1, $1) AS i ORDER BY i RETURNING id`,
		donationFundraisers)
	if err != nil {
		return nil, fmt.Errorf("inserting fundraisers: %w", err)
	}

	rng := rand.New(rand.NewPCG(1, 2))
	s := &donationSeed{}
	users := make([]int, donationEmails)
	for i := range donationEmails {
		users[i] = rng.IntN(donationUsers)
		s.userIDs = append(s.userIDs, userIDs[users[i]])
		s.fundraiserIDs = append(s.fundraiserIDs, fundraiserIDs[rng.IntN(donationFundraisers)])
		s.addrs = append(s.addrs, addrs[users[i]])
	}
	s.emailIDs, err = queryIDs(ctx, pool, `
INSERT INTO emails (user_id, fundraiser_id, sent_at)
SELECT u, f, now() - interval '1 day' + o * interval '1 second'
  FROM unnest($1::bigint[], $2::bigint[]) WITH ORDINALITY AS e (u, f, o) ORDER BY o
RETURNING id`, s.userIDs, s.fundraiserIDs)
	if err != nil {
		return nil, fmt.Errorf("inserting emails: %w", err)
	}
	if len(s.emailIDs) != donationEmails {
		return nil, fmt.Errorf("inserted %d emails, want %d", len(s.emailIDs), donationEmails)
	}
	return s, nil
}

// queryIDs runs a statement that returns one bigint per row.
func queryIDs(ctx context.Context, pool *pgxpool.Pool, sql string, args ...any) ([]int64, error) {
	rows, err := pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[int64])
}

// startWorker starts an in-process worker of the whole application (every
// domain's queues, as cmd/worker runs by default, or queues) with the
// shipped fetch settings, and returns its stop function.
func startWorker(ctx context.Context, env *Env, pool *pgxpool.Pool, queues []string) (func(), error) {
	reg := app.Registry(pool, nil)
	client, err := jobs.NewClient(pool, reg, &jobs.ClientConfig{
		Queues: queues, Schema: env.Schema, Logger: env.Logger, River: shippedRiver(env), Metrics: jobs.NewMetrics(nil),
	})
	if err != nil {
		return nil, err
	}
	if err := client.Start(ctx); err != nil {
		return nil, err
	}
	// The relay works on the bench's own pool: a side's traced pool
	// counts only what the application and its workers write.
	stopRelay, err := startAppRelay(ctx, env, env.Pool, client, reg)
	if err != nil {
		_ = client.Stop(context.WithoutCancel(ctx))
		return nil, err
	}
	return func() {
		stopRelay()
		stopClient(ctx, client)
	}, nil
}

// startAppRelay starts reg's relay beside client, as every cmd/worker runs
// one, and returns its stop function.
func startAppRelay(ctx context.Context, env *Env, pool *pgxpool.Pool, client *river.Client[pgx.Tx], reg *jobs.Registry) (func(), error) {
	rl, err := jobs.NewRelay(pool, client, reg, &relay.Config{Schema: env.Schema, Logger: env.Logger})
	if err != nil {
		return nil, err
	}
	if err := rl.Start(context.WithoutCancel(ctx)); err != nil {
		return nil, err
	}
	return func() {
		stopCtx, stop := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer stop()
		_ = rl.Stop(stopCtx)
	}, nil
}

// waitRelayed waits until no outbox row of kind is left for the relay.
func waitRelayed(ctx context.Context, pool *pgxpool.Pool, kind string) error {
	deadline := time.Now().Add(drainTimeout)
	for {
		var left bool
		if err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM outbox_jobs WHERE kind = $1)`, kind).Scan(&left); err != nil {
			return err
		}
		if !left {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s outbox rows still to relay after %s", kind, drainTimeout)
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// waitJobs waits until no job of kind is left to run (every one completed,
// cancelled or discarded), polling every few milliseconds.
func waitJobs(ctx context.Context, pool *pgxpool.Pool, kind string) error {
	deadline := time.Now().Add(drainTimeout)
	for {
		var left int
		// The outbox rows not yet relayed count too, in the same snapshot.
		if err := pool.QueryRow(ctx, `
SELECT (SELECT count(*) FROM river_job
         WHERE state IN ('available', 'pending', 'retryable', 'running', 'scheduled') AND kind = $1)
     + (SELECT count(*) FROM outbox_jobs WHERE kind = $1)`, kind).Scan(&left); err != nil {
			return err
		}
		if left == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d %s jobs still to run after %s", left, kind, drainTimeout)
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// donationsScenario: donations/s of the bare row, of Service.Donate (the
// row, its jobs and its event in one outbox transaction), and end to end:
// Donate with a worker running, counted once the donation's email is
// flagged.
func donationsScenario(Config) *Scenario {
	var (
		seed *donationSeed
		svc  *donations.Service
	)
	// reset empties what a round writes, so every round starts alike.
	reset := func(ctx context.Context, env *Env) error {
		if err := env.Truncate(ctx, "donations", "river_job", "outbox_events", "job_locks", "fundraiser_daily_totals"); err != nil {
			return err
		}
		_, err := env.Pool.Exec(ctx, `UPDATE emails SET donated = false WHERE donated`)
		return err
	}
	donate := func(ctx context.Context) error {
		_, err := svc.Donate(ctx, seed.input(rand.IntN(donationEmails)))
		return err
	}
	timed := func(op func(env *Env) func(ctx context.Context) error) func(ctx context.Context, env *Env) (Sample, error) {
		return func(ctx context.Context, env *Env) (Sample, error) {
			if err := reset(ctx, env); err != nil {
				return nil, err
			}
			v, err := loop(ctx, donationClients, env.Duration, op(env))
			if err != nil {
				return nil, err
			}
			return Sample{"donations/s": v}, nil
		}
	}
	return &Scenario{
		Name: "donations",
		Title: fmt.Sprintf("donations by %d clients, each naming the email that led to it (%d users, %d fundraisers, %d emails)",
			donationClients, donationUsers, donationFundraisers, donationEmails),
		Metrics: []Metric{{"donations/s", true}},
		Setup: func(ctx context.Context, env *Env) error {
			var err error
			if seed, err = seedDonations(ctx, env.Pool); err != nil {
				return err
			}
			_, ob, err := insertOnly(env, app.Registry(env.Pool, nil))
			if err != nil {
				return err
			}
			svc = donations.NewService(env.Pool, ob)
			return nil
		},
		Sides: []Side{
			{Name: "plain_insert", Note: "pgx transaction: INSERT the donation row, COMMIT",
				Run: timed(func(env *Env) func(ctx context.Context) error {
					return func(ctx context.Context) error {
						i := rand.IntN(donationEmails)
						in := seed.input(i)
						return pgx.BeginFunc(ctx, env.Pool, func(tx pgx.Tx) error {
							var (
								id int64
								at time.Time
							)
							return tx.QueryRow(ctx, insertDonationSQL, seed.userIDs[i], in.FundraiserID, in.EmailID, in.DonorEmail,
								in.AmountCents, in.Currency, in.Note).Scan(&id, &at)
						})
					}
				})},
			{Name: "donate", Note: "Service.Donate: the row, UpdateEmailDonation, donation.created and its subscribers' jobs, one outbox transaction; no worker",
				Run: timed(func(*Env) func(ctx context.Context) error { return donate })},
			{Name: "donate_flagged", Note: "end to end: Donate with an in-process worker on every queue (shipped fetch settings), " +
				"until every email flag job completed; donations whose email is flagged per second of load + drain",
				Run: func(ctx context.Context, env *Env) (Sample, error) {
					if err := reset(ctx, env); err != nil {
						return nil, err
					}
					stop, err := startWorker(ctx, env, env.Pool, []string{jobs.AllQueues})
					if err != nil {
						return nil, err
					}
					defer stop()
					start := time.Now()
					if _, err := loop(ctx, donationClients, env.Duration, donate); err != nil {
						return nil, err
					}
					if err := waitJobs(ctx, env.Pool, donations.UpdateEmailDonationKind); err != nil {
						return nil, err
					}
					took := time.Since(start)
					var flagged, total, failed int
					if err := env.Pool.QueryRow(ctx, `
SELECT (SELECT count(*) FROM donations d JOIN emails e ON e.id = d.email_id WHERE e.donated),
       (SELECT count(*) FROM donations),
       (SELECT count(*) FROM river_job WHERE kind = $1 AND state <> 'completed')`,
						donations.UpdateEmailDonationKind).Scan(&flagged, &total, &failed); err != nil {
						return nil, err
					}
					if failed > 0 || flagged != total {
						return nil, fmt.Errorf("%d of %d donations flagged, %d email flag jobs did not complete", flagged, total, failed)
					}
					return Sample{"donations/s": float64(flagged) / took.Seconds()}, nil
				}},
		},
	}
}

// hotDonors is how many clients donate to the one fundraiser of donate_hot.
const hotDonors = 32

// donateHotScenario: Donate by 32 clients at once, every donation for the
// SAME fundraiser, on the outbox table (the default) and on the direct path.
// Each donation's subscribers enqueue the fundraiser's counter job under a
// queue lock on the fundraiser: the direct path upserts the one waiting job
// in every transaction, so the donations of one fundraiser queue behind
// each other's locks; the outbox table takes one append-only row, and the
// relay coalesces. Both sides run a relay and no worker, so the waiting job
// stays and every later enqueue meets it.
func donateHotScenario(Config) *Scenario {
	var (
		seed *donationSeed
		hot  []int // the emails of the first fundraiser
	)
	run := func(direct, rowOnly bool) func(ctx context.Context, env *Env) (Sample, error) {
		return func(ctx context.Context, env *Env) (Sample, error) {
			if err := env.Truncate(ctx, "donations", "river_job", "outbox_jobs", "outbox_events", "job_locks"); err != nil {
				return nil, err
			}
			if _, err := env.Pool.Exec(ctx, `UPDATE emails SET donated = false WHERE donated`); err != nil {
				return nil, err
			}
			reg := app.Registry(env.Pool, nil)
			client, _, err := insertOnly(env, reg)
			if err != nil {
				return nil, err
			}
			ob, err := jobs.NewOutbox(env.Pool, client, reg, &outbox.Config{DirectInsert: direct, Logger: env.Logger})
			if err != nil {
				return nil, err
			}
			stop, err := startAppRelay(ctx, env, env.Pool, client, reg)
			if err != nil {
				return nil, err
			}
			defer stop()
			svc := donations.NewService(env.Pool, ob)
			v, err := loop(ctx, hotDonors, env.Duration, func(ctx context.Context) error {
				i := hot[rand.IntN(len(hot))]
				in := seed.input(i)
				if rowOnly {
					return pgx.BeginFunc(ctx, env.Pool, func(tx pgx.Tx) error {
						_, err := tx.Exec(ctx, insertDonationSQL, seed.userIDs[i], in.FundraiserID, in.EmailID, in.DonorEmail,
							in.AmountCents, in.Currency, in.Note)
						return err
					})
				}
				_, err := svc.Donate(ctx, in)
				return err
			})
			if err != nil {
				return nil, err
			}
			return Sample{"donations/s": v}, nil
		}
	}
	return &Scenario{
		Name:    "donate_hot",
		Title:   fmt.Sprintf("Service.Donate by %d clients at once, every donation for ONE fundraiser; a relay runs, no worker", hotDonors),
		Metrics: []Metric{{"donations/s", true}},
		Setup: func(ctx context.Context, env *Env) error {
			var err error
			if seed, err = seedDonations(ctx, env.Pool); err != nil {
				return err
			}
			hot = hot[:0]
			for i, f := range seed.fundraiserIDs {
				if f == seed.fundraiserIDs[0] {
					hot = append(hot, i)
				}
			}
			return nil
		},
		Sides: []Side{
			{Name: "direct", Note: "outbox.Config.DirectInsert: River's insert into river_job in the transaction (the fundraiser's queue-lock upsert)", Run: run(true, false)},
			{Name: "outbox", Note: "the default: one outbox_jobs INSERT with the COMMIT; the relay coalesces the fundraiser's jobs", Run: run(false, false)},
			{Name: "row_only", Note: "the donation row alone (pgx transaction, as donations/plain_insert): the business SQL's own ceiling", Run: run(false, true)},
		},
		Goals: []Goal{{Side: "outbox", AtLeast: 3, Text: "≥ 3× the direct path's donations/s on one fundraiser"}},
	}
}

// claimBuyers is how many buyers claim the hot product at once.
const claimBuyers = 32

// claimsScenario: claims/s of BeginCheckout on one hot product by 32
// buyers, under the single-row lock and with the stock split into buckets.
func claimsScenario(Config) *Scenario {
	const sku = "HOT"
	var svc *inventory.Service
	run := func(buckets int) func(ctx context.Context, env *Env) (Sample, error) {
		return func(ctx context.Context, env *Env) (Sample, error) {
			if err := env.Truncate(ctx, "inventory_claims", "checkouts", "product_buckets", "products", "river_job"); err != nil {
				return nil, err
			}
			if _, err := env.Pool.Exec(ctx, `INSERT INTO products (sku, stock) VALUES ($1, 1000000000)`, sku); err != nil {
				return nil, err
			}
			if buckets > 0 {
				if err := svc.SetStrategy(ctx, sku, inventory.StrategyBuckets, buckets); err != nil {
					return nil, err
				}
			}
			v, err := loop(ctx, claimBuyers, env.Duration, func(ctx context.Context) error {
				_, err := svc.BeginCheckout(ctx, sku, 1)
				return err
			})
			if err != nil {
				return nil, err
			}
			return Sample{"claims/s": v}, nil
		}
	}
	return &Scenario{
		Name: "claims",
		Title: fmt.Sprintf("BeginCheckout of one unit of ONE hot product (stock never runs out, claims live 1 s) by %d buyers at once",
			claimBuyers),
		Metrics: []Metric{{"claims/s", true}},
		Setup: func(_ context.Context, env *Env) error {
			cfg := &inventory.Config{ClaimTTL: time.Second}
			reg := jobs.NewRegistry()
			inventory.Register(reg, env.Pool, cfg)
			_, ob, err := insertOnly(env, reg)
			if err != nil {
				return err
			}
			svc, err = inventory.NewService(env.Pool, ob, cfg)
			return err
		},
		Sides: []Side{
			{Name: "single_row", Note: "the product row locked by every claim (SELECT … FOR UPDATE)", Run: run(0)},
			{Name: "buckets_8", Note: "stock split into 8 buckets, a claim locks one", Run: run(8)},
			{Name: "buckets_32", Note: "stock split into 32 buckets, a claim locks one", Run: run(32)},
		},
		Goals: []Goal{{Side: "buckets_32", AtLeast: 3, Text: "buckets ≥ 3× the single-row lock at 32 buyers"}},
	}
}

// insertCounter is a pgx tracer that counts the statements inserting River
// jobs of one kind: River's JobInsertFastMany, sent alone (Query) or in a
// batch (the outbox's pipelined commit), whose kinds argument holds kind.
// An insert that a unique key or queue lock turns into no new row still
// counts: it is a statement and a round trip. COPY (the outbox's large
// flushes, InsertManyFast) is not seen; no side here sends a report that
// way.
type insertCounter struct {
	kind string
	n    atomic.Int64
}

var (
	_ pgx.QueryTracer = (*insertCounter)(nil)
	_ pgx.BatchTracer = (*insertCounter)(nil)
)

func (c *insertCounter) see(sql string, args []any) {
	// River's insert (the direct path) or the outbox table's, whose
	// one-row form takes the kind as a plain string.
	if !strings.Contains(sql, "JobInsertFastMany") && !strings.Contains(sql, "INSERT INTO outbox_jobs") {
		return
	}
	for _, a := range args {
		if kinds, ok := a.([]string); ok && slices.Contains(kinds, c.kind) {
			c.n.Add(1)
			return
		}
		if kind, ok := a.(string); ok && kind == c.kind {
			c.n.Add(1)
			return
		}
	}
}

func (c *insertCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	c.see(data.SQL, data.Args)
	return ctx
}

func (c *insertCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (c *insertCounter) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return ctx
}

func (c *insertCounter) TraceBatchQuery(_ context.Context, _ *pgx.Conn, data pgx.TraceBatchQueryData) {
	c.see(data.SQL, data.Args)
}

func (c *insertCounter) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

// carUsersScenario: N users given to one new car, and the car's report
// job enqueued: per user after each commit (the after_commit way), in one
// bulk transaction, and as the bulk job worked by a worker.
func carUsersScenario(cfg Config) *Scenario {
	n := min(reporting.MaxBulkUserIDs, max(100, int(10_000*cfg.Scale)))
	var users []int64

	// sideApp is what a side works with: a pool whose statements are
	// counted, and the application's services on it.
	type sideApp struct {
		pool     *pgxpool.Pool
		inserter *river.Client[pgx.Tx]
		svc      *reporting.Service
		reports  *insertCounter
	}
	// run gives count users to a new car with op and measures it, with an
	// in-process worker of queues running when queues is not nil (started
	// before the clock).
	run := func(count int, queues []string, op func(ctx context.Context, a *sideApp, car int64) error) func(ctx context.Context, env *Env) (Sample, error) {
		return func(ctx context.Context, env *Env) (Sample, error) {
			if err := env.Truncate(ctx, "car_users", "car_reports", "cars", "river_job"); err != nil {
				return nil, err
			}
			var car int64
			if err := env.Pool.QueryRow(ctx, `INSERT INTO cars (name) VALUES ('Bench') RETURNING id`).Scan(&car); err != nil {
				return nil, err
			}
			a := &sideApp{reports: &insertCounter{kind: reporting.CarReportKind}}
			pcfg, err := dbconn.ParseConfig(env.url, &dbconn.Opts{Component: "bench", Schema: env.Schema, MaxConns: 8})
			if err != nil {
				return nil, err
			}
			pcfg.ConnConfig.Tracer = a.reports
			if a.pool, err = dbconn.Connect(ctx, pcfg, "bench"); err != nil {
				return nil, err
			}
			defer a.pool.Close()
			reg := app.Registry(a.pool, nil)
			if a.inserter, err = jobs.NewClient(a.pool, reg, &jobs.ClientConfig{Queues: []string{}, Schema: env.Schema, Logger: env.Logger}); err != nil {
				return nil, err
			}
			ob, err := jobs.NewOutbox(a.pool, a.inserter, reg, nil)
			if err != nil {
				return nil, err
			}
			a.svc = reporting.NewService(a.pool, ob)
			if queues != nil {
				stop, err := startWorker(ctx, env, a.pool, queues)
				if err != nil {
					return nil, err
				}
				defer stop()
			} else {
				// No worker, but a relay, as every cmd/worker runs one: it
				// turns the report requests into the one waiting job.
				stopRelay, err := startAppRelay(ctx, env, env.Pool, a.inserter, reg)
				if err != nil {
					return nil, err
				}
				defer stopRelay()
			}

			start := time.Now()
			if err := op(ctx, a, car); err != nil {
				return nil, err
			}
			took := time.Since(start)

			// The report requests the relay has not moved yet are not jobs
			// yet: the queue lock coalesces them as they are moved.
			if err := waitRelayed(ctx, env.Pool, reporting.CarReportKind); err != nil {
				return nil, err
			}
			var pairs, reportJobs int
			if err := env.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM car_users), (SELECT count(*) FROM river_job WHERE kind = $1)`,
				reporting.CarReportKind).Scan(&pairs, &reportJobs); err != nil {
				return nil, err
			}
			if pairs != count || reportJobs != 1 {
				return nil, fmt.Errorf("the car has %d users and %d report jobs, want %d and 1", pairs, reportJobs, count)
			}
			return Sample{"users/s": float64(count) / took.Seconds(), "report inserts": float64(a.reports.n.Load())}, nil
		}
	}
	return &Scenario{
		Name: "car_users",
		Title: fmt.Sprintf("%d users given to one new car and its report job enqueued, by one client; report inserts counts the "+
			"statements that insert a car report job (River's JobInsertFastMany carrying the kind), kept as a row or not", n),
		Metrics: []Metric{{"users/s", true}, {"report inserts", false}},
		Setup: func(ctx context.Context, env *Env) error {
			var err error
			users, err = queryIDs(ctx, env.Pool, `
INSERT INTO users (name, email) SELECT 'User ' || i, 'user' || i || '@bench.example' FROM generate_series(1, $1) AS i ORDER BY i
RETURNING id`, n)
			return err
		},
		Sides: []Side{
			{Name: "naive", Note: "per user: a transaction INSERTs the pair and commits, then River's Insert enqueues the report (after_commit)",
				Run: run(n, nil, func(ctx context.Context, a *sideApp, car int64) error {
					for _, u := range users {
						if err := pgx.BeginFunc(ctx, a.pool, func(tx pgx.Tx) error {
							_, err := tx.Exec(ctx, `INSERT INTO car_users (car_id, user_id) VALUES ($1, $2)`, car, u)
							return err
						}); err != nil {
							return err
						}
						if _, err := a.inserter.Insert(ctx, reporting.CarReportArgs{CarID: car}, nil); err != nil {
							return err
						}
					}
					return nil
				})},
			{Name: "bulk", Note: "Service.CreateCarUsersInBulk: the checks and every pair in one round trip, the report job with the COMMIT",
				Run: run(n, nil, func(ctx context.Context, a *sideApp, car int64) error {
					res, err := a.svc.CreateCarUsersInBulk(ctx, car, users)
					if err == nil && (res.Inserted != n || !res.ReportEnqueued) {
						err = fmt.Errorf("bulk result %+v", res)
					}
					return err
				})},
			{Name: "bulk_job", Note: "Service.EnqueueCarUsersInBulk, then an in-process worker (bulk queue, shipped fetch settings) works the job; " +
				"until it completed", Run: run(n, []string{reporting.QueueBulk}, func(ctx context.Context, a *sideApp, car int64) error {
				if err := a.svc.EnqueueCarUsersInBulk(ctx, car, users); err != nil {
					return err
				}
				return waitBulkJob(ctx, a.pool, car)
			})},
		},
	}
}

// waitBulkJob waits for car's bulk creation job to complete, polling its
// state every millisecond (River's event stream would add its own batching
// delay to the measure).
func waitBulkJob(ctx context.Context, pool *pgxpool.Pool, car int64) error {
	deadline := time.Now().Add(drainTimeout)
	for {
		// No row yet: the job still waits in the outbox for the relay.
		var state string
		if err := pool.QueryRow(ctx, `SELECT state FROM river_job WHERE kind = $1 AND (args->>'car_id')::bigint = $2`,
			reporting.CreateCarUsersInBulkKind, car).Scan(&state); err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		switch {
		case state == "completed":
			return nil
		case state == "cancelled" || state == "discarded" || time.Now().After(deadline):
			return fmt.Errorf("bulk job of car %d: %s", car, state)
		}
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-time.After(time.Millisecond):
		}
	}
}
