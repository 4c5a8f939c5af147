package donations_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/donations"
	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
)

// BenchmarkDonateGrowth: one donation per op, end to end until the
// fundraiser's and the donor's counters are exact, on a fundraiser that
// already has 10,000 or 1,000,000 succeeded donations (seeded in SQL, its
// table vacuumed as autovacuum would). "fold" is the shipped way: the
// donation's delta rows and its fold jobs, which read only the new deltas.
// "recount" is the way before migration 0031, the baseline the issue asks
// for: each donation also asks for a recount of its fundraiser, which reads
// every succeeded donation of it, and the op waits for that recount. A
// River client works the queues in the same process, as a worker would;
// jobs go straight into River (outbox.Config.DirectInsert), so no relay's
// poll adds to every op.
// The ratio that matters is each mode's 1,000,000 against its 10,000.
//
//	for i in 1 2 3; do go test -run '^$' -bench DonateGrowth -benchtime 40x ./donations; done | go run ./internal/benchratio
func BenchmarkDonateGrowth(b *testing.B) {
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, b, &dbtest.Opts{MaxConns: 20})
	reg := jobs.NewRegistry()
	donations.Register(reg, s.Pool)
	client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{
		Queues: []string{jobs.AllQueues}, Schema: s.Name, Logger: slog.New(slog.DiscardHandler),
		River: &river.Config{FetchCooldown: 2 * time.Millisecond, FetchPollInterval: 20 * time.Millisecond},
	})
	require.NoError(b, err)
	require.NoError(b, client.Start(ctx))
	b.Cleanup(func() { require.NoError(b, client.Stop(context.WithoutCancel(ctx))) })
	ob, err := jobs.NewOutbox(s.Pool, client, reg, directInsert)
	require.NoError(b, err)
	svc := donations.NewService(s.Pool, ob)

	histories := []int{10_000, 1_000_000}
	fundraisers := map[int]int64{}
	for _, h := range histories {
		fundraisers[h] = seedHistory(ctx, b, s, h)
	}
	_, err = s.Pool.Exec(ctx, `VACUUM ANALYZE donations`)
	require.NoError(b, err)
	// Warm up (connections, prepared statements, River's producers) on a
	// fundraiser of its own, so the first sub-benchmark, every group's
	// baseline, does not pay for it.
	warm := seedHistory(ctx, b, s, 1)
	for i := range 30 {
		d, err := svc.Donate(ctx, donations.DonateInput{FundraiserID: warm, DonorEmail: "warm@example.com",
			AmountCents: 100, Currency: "EUR", Succeeded: true})
		require.NoError(b, err)
		waitCounters(ctx, b, s, warm, d.UserID, int64(2+i), int64(1+i))
	}

	for _, mode := range []string{"fold", "recount"} {
		for _, h := range histories {
			fid := fundraisers[h]
			b.Run(fmt.Sprintf("%s/history=%d", mode, h), func(b *testing.B) {
				in := donations.DonateInput{FundraiserID: fid, DonorEmail: fmt.Sprintf("growth-%d@example.com", h),
					AmountCents: 2500, Currency: "EUR", Succeeded: true}
				// One donation first, untimed: it creates the donor, and
				// the counters it ends with (checked against the
				// donations once) are where the ops count from.
				d, err := svc.Donate(ctx, in)
				require.NoError(b, err)
				wantF, wantU := waitCounters(ctx, b, s, fid, d.UserID, -1, -1)
				for b.Loop() {
					if _, err := svc.Donate(ctx, in); err != nil {
						b.Fatal(err)
					}
					if mode == "recount" {
						if err := svc.RecountFundraiser(ctx, fid); err != nil {
							b.Fatal(err)
						}
					}
					wantF, wantU = wantF+1, wantU+1
					waitCounters(ctx, b, s, fid, d.UserID, wantF, wantU)
				}
			})
		}
	}
}

// seedHistory creates a fundraiser with n succeeded donations (of no user)
// and exact counters, and returns its id. The deltas' trigger is off while
// the rows go in: the counters are set once.
func seedHistory(ctx context.Context, b *testing.B, s *dbtest.Schema, n int) int64 {
	b.Helper()
	var fid int64
	require.NoError(b, pgx.BeginFunc(ctx, s.Pool, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `INSERT INTO fundraisers (name, donations_count, donations_total_cents)
			VALUES ('History', $1::int, $1::bigint * 1000) RETURNING id`, n).Scan(&fid); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `ALTER TABLE donations DISABLE TRIGGER donations_counter_deltas_insert`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO donations (fundraiser_id, donor_email, amount_cents, currency, status)
			SELECT $1, 'old@example.com', 1000, 'EUR', 'succeeded' FROM generate_series(1, $2)`, fid, n); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `ALTER TABLE donations ENABLE TRIGGER donations_counter_deltas_insert`)
		return err
	}))
	return fid
}

// waitCounters waits until no counter job is left to run and the
// fundraiser's and the user's counters are wantF and wantU, and returns
// them. A want of -1 is the count of their succeeded donations (a read of
// every one: for the untimed start only).
func waitCounters(ctx context.Context, b *testing.B, s *dbtest.Schema, fid, uid, wantF, wantU int64) (int64, int64) {
	b.Helper()
	if wantF < 0 {
		require.NoError(b, s.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM donations WHERE fundraiser_id = $1 AND status = 'succeeded'),
			(SELECT count(*) FROM donations WHERE user_id = $2 AND status = 'succeeded')`, fid, uid).Scan(&wantF, &wantU))
	}
	deadline := time.Now().Add(time.Minute)
	for {
		var done bool
		err := s.Pool.QueryRow(ctx, `
			SELECT (SELECT donations_count FROM fundraisers WHERE id = $1) = $3
			   AND (SELECT donations_count FROM users WHERE id = $2) = $4
			   AND NOT EXISTS (SELECT 1 FROM river_job WHERE queue = $5 AND state NOT IN ('completed', 'discarded', 'cancelled'))`,
			fid, uid, wantF, wantU, donations.QueueCounters).Scan(&done)
		if err != nil {
			b.Fatal(err)
		}
		if done {
			return wantF, wantU
		}
		if time.Now().After(deadline) {
			b.Fatalf("the counters did not reach %d and %d within a minute", wantF, wantU)
		}
		time.Sleep(time.Millisecond)
	}
}
