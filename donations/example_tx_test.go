package donations_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aftercommit/aftercommit/donations"
	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/exampleapp"
	"github.com/aftercommit/aftercommit/jobs"
)

// exDonations is the donations domain wired as cmd/worker and the
// application wire it, in one process, for the examples.
type exDonations struct {
	*exampleapp.App
	svc *donations.Service
}

// newExDonations wires the domain on a schema of its own. Its client is
// not started: call start. release ends everything.
func newExDonations(ctx context.Context) (*exDonations, func()) {
	app, release := exampleapp.New(ctx, func(reg *jobs.Registry, pool *pgxpool.Pool) { donations.Register(reg, pool) })
	return &exDonations{App: app, svc: donations.NewService(app.Pool(), app.Outbox)}, release
}

// fundraiserWithEmail inserts a fundraiser, a user and an email the
// fundraiser sent the user, and returns the fundraiser's and email's IDs.
func (d *exDonations) fundraiserWithEmail(ctx context.Context) (fundraiserID, emailID int64) {
	err := d.Schema.Pool.QueryRow(ctx, `
		WITH f AS (INSERT INTO fundraisers (name) VALUES ('Engines') RETURNING id),
		     u AS (INSERT INTO users (name, email) VALUES ('Ada', 'ada@example.com') RETURNING id)
		INSERT INTO emails (user_id, fundraiser_id) SELECT u.id, f.id FROM u, f
		RETURNING fundraiser_id, id`).Scan(&fundraiserID, &emailID)
	if err != nil {
		log.Fatal(err)
	}
	return fundraiserID, emailID
}

// The service is built on an outbox from a registry the domain's Register
// filled, beside the client and relay of the same registry. Input a person
// must correct is refused before any SQL runs, every problem at once.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleNewService() {
	ctx := context.Background()
	s, release, err := dbtest.NewSchema(ctx, &dbtest.Opts{MaxConns: 8})
	if err != nil {
		log.Fatal(err)
	}
	defer release()

	reg := jobs.NewRegistry()
	donations.Register(reg, s.Pool)
	client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{ // insert-only: an API server
		Schema: s.Name,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	ob, err := jobs.NewOutbox(s.Pool, client, reg, nil)
	if err != nil {
		log.Fatal(err)
	}
	svc := donations.NewService(s.Pool, ob)

	_, err = svc.Donate(ctx, donations.DonateInput{
		FundraiserID: 1,
		DonorEmail:   "ada",
		AmountCents:  0,
		Currency:     "XYZ",
		Succeeded:    true,
	})
	fmt.Println("invalid:", errors.Is(err, donations.ErrInvalidDonation))
	for _, v := range donations.ValidationErrors(err) {
		fmt.Println(v.Field+":", v.Message)
	}
	// Output:
	// invalid: true
	// donor_email: must be an email address such as name@example.com
	// amount_cents: must be more than zero, got 0
	// currency: "XYZ" is not an accepted currency; accepted: AUD, BRL, CAD, CHF, CZK, DKK, EUR, GBP, HKD, HUF, ILS, INR, JPY, MXN, NOK, NZD, PLN, SEK, SGD, USD, ZAR
}

// DonateTx records a donation in the caller's transaction, beside the
// caller's own rows: its job and event are written into that transaction
// and commit, or roll back, with it.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleService_DonateTx() {
	ctx := context.Background()
	d, release := newExDonations(ctx)
	defer release()
	fundraiserID, emailID := d.fundraiserWithEmail(ctx)
	in := donations.DonateInput{
		FundraiserID: fundraiserID,
		EmailID:      emailID,
		DonorEmail:   "ada@example.com",
		AmountCents:  2500,
		Currency:     "EUR",
		Succeeded:    true,
	}
	errOrderFailed := errors.New("order failed")

	// The caller's transaction fails after the donation: nothing remains.
	err := pgx.BeginFunc(ctx, d.Schema.Pool, func(tx pgx.Tx) error {
		if _, err := d.svc.DonateTx(ctx, tx, in); err != nil {
			return err
		}
		return errOrderFailed
	})
	fmt.Println("rolled back:", err)
	d.count(ctx)

	// It commits: the donation, its jobs and its event are there. (Its ID
	// is 2: the rolled-back one used 1, as sequences do not roll back.)
	err = pgx.BeginFunc(ctx, d.Schema.Pool, func(tx pgx.Tx) error {
		donation, err := d.svc.DonateTx(ctx, tx, in)
		fmt.Println("donation:", donation.ID, donation.Status, donation.AmountCents, donation.Currency)
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
	d.count(ctx)
	rows, err := d.Schema.Pool.Query(ctx, `SELECT kind FROM outbox_jobs ORDER BY kind`)
	if err != nil {
		log.Fatal(err)
	}
	kinds, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("jobs:", kinds)
	// Output:
	// rolled back: order failed
	// donations: 0 jobs: 0 events: 0
	// donation: 2 succeeded 2500 EUR
	// donations: 1 jobs: 3 events: 1
	// jobs: [donations.fold_fundraiser_counters donations.fold_user_counters donations.update_email_donation]
}

// count prints the donations, outbox jobs and events of the schema.
func (d *exDonations) count(ctx context.Context) {
	var donationRows, jobRows, eventRows int
	err := d.Schema.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM donations), (SELECT count(*) FROM outbox_jobs), (SELECT count(*) FROM outbox_events)`).
		Scan(&donationRows, &jobRows, &eventRows)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("donations:", donationRows, "jobs:", jobRows, "events:", eventRows)
}

// Each open is a tiny delta row and a fold job, queue-locked per email:
// three opens tracked while no fold ran yet make one job, which folds all
// three into the email's counters.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleService_TrackOpen() {
	ctx := context.Background()
	d, release := newExDonations(ctx)
	defer release()
	_, emailID := d.fundraiserWithEmail(ctx)

	for range 3 {
		if err := d.svc.TrackOpen(ctx, emailID); err != nil {
			log.Fatal(err)
		}
	}
	err := d.svc.TrackOpen(ctx, emailID+1)
	fmt.Println("unknown email:", errors.Is(err, donations.ErrUnknownEmail))

	moved := d.Drain(ctx)
	fmt.Println("outbox rows:", moved.Rows, "fold jobs:", moved.Inserted)

	d.Start(ctx)
	ev := d.WaitFor(donations.FoldEmailCountersKind)
	fmt.Println("fold:", string(ev.Job.Output()))
	var opens int
	if err := d.Schema.Pool.QueryRow(ctx, `SELECT opens FROM emails WHERE id = $1`, emailID).Scan(&opens); err != nil {
		log.Fatal(err)
	}
	fmt.Println("opens:", opens)
	// Output:
	// unknown email: true
	// outbox rows: 3 fold jobs: 1
	// fold: {"opens": 3, "clicks": 0, "deltas": 3}
	// opens: 3
}

// TrackBatch records a buffer of opens and clicks in one transaction:
// a delta row per event and at most one fold job per email.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleService_TrackBatch() {
	ctx := context.Background()
	d, release := newExDonations(ctx)
	defer release()
	fundraiserID, first := d.fundraiserWithEmail(ctx)
	var second int64
	if err := d.Schema.Pool.QueryRow(ctx, `INSERT INTO emails (user_id, fundraiser_id) VALUES (1, $1) RETURNING id`, fundraiserID).Scan(&second); err != nil {
		log.Fatal(err)
	}

	opens := []int64{first, first, second, first}
	clicks := []int64{first, second}
	if err := d.svc.TrackBatch(ctx, opens, clicks); err != nil {
		log.Fatal(err)
	}
	moved := d.Drain(ctx)
	fmt.Println("fold jobs:", moved.Inserted)

	d.Start(ctx)
	d.WaitFor(donations.FoldEmailCountersKind)
	d.WaitFor(donations.FoldEmailCountersKind)
	rows, err := d.Schema.Pool.Query(ctx, `SELECT id, opens, clicks FROM emails ORDER BY id`)
	if err != nil {
		log.Fatal(err)
	}
	var id, o, c int64
	_, err = pgx.ForEachRow(rows, []any{&id, &o, &c}, func() error {
		fmt.Printf("email %d: %d opens, %d clicks\n", id, o, c)
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// fold jobs: 2
	// email 1: 3 opens, 1 clicks
	// email 2: 1 opens, 1 clicks
}

// RecountFundraiser repairs a fundraiser's counter cache from its
// succeeded donations, here written by hand without their events (their
// deltas wait, with no fold job), and a counter set wrong by hand: the
// recount writes the donations' count and total, folds the deltas and
// reports the drift it corrected.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleService_RecountFundraiser() {
	ctx := context.Background()
	d, release := newExDonations(ctx)
	defer release()
	fundraiserID, _ := d.fundraiserWithEmail(ctx)
	_, err := d.Schema.Pool.Exec(ctx, `
		INSERT INTO donations (user_id, fundraiser_id, donor_email, amount_cents, currency, status) VALUES
		  (1, $1, 'ada@example.com', 2500, 'EUR', 'succeeded'),
		  (1, $1, 'ada@example.com', 1000, 'EUR', 'succeeded'),
		  (1, $1, 'ada@example.com', 9900, 'EUR', 'failed')`, fundraiserID)
	if err != nil {
		log.Fatal(err)
	}
	_, err = d.Schema.Pool.Exec(ctx, `UPDATE fundraisers SET donations_count = 5, donations_total_cents = 100 WHERE id = $1`, fundraiserID)
	if err != nil {
		log.Fatal(err)
	}
	d.Start(ctx)

	if err := d.svc.RecountFundraiser(ctx, fundraiserID); err != nil {
		log.Fatal(err)
	}
	d.Drain(ctx)
	ev := d.WaitFor(donations.RecountFundraiserKind)
	fmt.Println("recount:", string(ev.Job.Output()))

	var count, total int64
	if err := d.Schema.Pool.QueryRow(ctx, `SELECT donations_count, donations_total_cents FROM fundraisers WHERE id = $1`, fundraiserID).Scan(&count, &total); err != nil {
		log.Fatal(err)
	}
	fmt.Println("fundraiser:", count, "donations,", total, "cents")

	err = d.svc.RecountFundraiser(ctx, fundraiserID+1)
	fmt.Println("unknown fundraiser:", errors.Is(err, donations.ErrUnknownFundraiser))
	// Output:
	// recount: {"result": "recounted", "drift_count": -5, "donations_count": 2, "drift_total_cents": -100, "donations_total_cents": 3500}
	// fundraiser: 2 donations, 3500 cents
	// unknown fundraiser: true
}
