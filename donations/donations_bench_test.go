package donations_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/aftercommit/aftercommit/donations"
)

// benchInsertDonationSQL is the baseline: the row Donate writes, for a donor
// whose user exists, and nothing else.
const benchInsertDonationSQL = `
INSERT INTO donations (user_id, fundraiser_id, email_id, donor_email, amount_cents, currency, status, note)
VALUES ($1, $2, NULL, $3, $4, $5, 'succeeded', $6)
RETURNING id, created_at`

// BenchmarkDonate: one committed donation per op, at one client.
// "plain_insert" (the baseline) is a pgx transaction that inserts the
// donation row of a donor whose user exists; "donate" is Service.Donate for
// the same donor: input checks, the fundraiser and user look-ups, the row,
// its UpdateEmailDonation job and its donation.created event (and the jobs
// the event's subscriptions add), in one outbox transaction. The River
// client only inserts, so no worker competes for the CPU.
//
//	for i in 1 2 3 4 5 6; do go test -run '^$' -bench BenchmarkDonate -benchtime 2000x -count 1 ./donations; done | go run ./internal/benchratio
func BenchmarkDonate(b *testing.B) {
	ctx := context.Background()
	bb := setupDonate(ctx, b, nil)
	fid := bb.fundraiser(ctx, b, "Engines")
	in := input(fid)
	uid := bb.user(ctx, b, in.DonorName, in.DonorEmail)

	b.Run("conc=1/plain_insert", func(b *testing.B) {
		for b.Loop() {
			err := pgx.BeginFunc(ctx, bb.schema.Pool, func(tx pgx.Tx) error {
				var (
					id int64
					at time.Time
				)
				return tx.QueryRow(ctx, benchInsertDonationSQL,
					uid, fid, in.DonorEmail, in.AmountCents, in.Currency, in.Note).Scan(&id, &at)
			})
			if err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("conc=1/donate", func(b *testing.B) {
		for b.Loop() {
			d, err := bb.svc.Donate(ctx, in)
			if err != nil {
				b.Fatal(err)
			}
			if d.UserID != uid {
				b.Fatalf("donation of user %d, want %d", d.UserID, uid)
			}
		}
	})
	b.StopTimer()
	var jobs int
	if err := bb.schema.Pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE kind = $1`,
		donations.UpdateEmailDonationKind).Scan(&jobs); err != nil {
		b.Fatal(err)
	}
	if jobs == 0 {
		b.Fatal("Donate enqueued no job")
	}
}
