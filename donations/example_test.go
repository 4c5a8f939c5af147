package donations_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"time"

	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/donations"
	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

// A donation that came from an email's link is recorded with its
// UpdateEmailDonation job in one commit; a worker then flags the email
// donated and completes the job in one transaction.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleService_Donate() {
	ctx := context.Background()
	s, release, err := dbtest.NewSchema(ctx, &dbtest.Opts{MaxConns: 8})
	if err != nil {
		log.Fatal(err)
	}
	defer release()

	reg := jobs.NewRegistry()
	donations.Register(reg, s.Pool)
	client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{
		Queues: []string{jobs.AllQueues},
		Schema: s.Name,
		Logger: slog.New(slog.DiscardHandler),
		River:  &river.Config{FetchCooldown: 10 * time.Millisecond, FetchPollInterval: 50 * time.Millisecond},
	})
	if err != nil {
		log.Fatal(err)
	}
	completed, cancel := client.Subscribe(river.EventKindJobCompleted)
	defer cancel()
	if err := client.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer func() { _ = client.Stop(ctx) }()
	ob, err := jobs.NewOutbox(s.Pool, client, reg, nil)
	if err != nil {
		log.Fatal(err)
	}
	// The relay moves committed outbox rows into River's job table.
	rl, err := jobs.NewRelay(s.Pool, client, reg, &relay.Config{Schema: s.Name})
	if err != nil {
		log.Fatal(err)
	}
	if err := rl.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer func() { _ = rl.Stop(ctx) }()
	svc := donations.NewService(s.Pool, ob)

	// A fundraiser sent Ada an email.
	var fundraiserID, emailID int64
	err = s.Pool.QueryRow(ctx, `
		WITH f AS (INSERT INTO fundraisers (name) VALUES ('Engines') RETURNING id),
		     u AS (INSERT INTO users (name, email) VALUES ('Ada', 'ada@example.com') RETURNING id)
		INSERT INTO emails (user_id, fundraiser_id) SELECT u.id, f.id FROM u, f
		RETURNING fundraiser_id, id`).Scan(&fundraiserID, &emailID)
	if err != nil {
		log.Fatal(err)
	}

	// She follows its link and donates; the processor took the money.
	d, err := svc.Donate(ctx, donations.DonateInput{
		FundraiserID: fundraiserID,
		EmailID:      emailID,
		DonorEmail:   "Ada@example.com",
		AmountCents:  2500,
		Currency:     "usd",
		Succeeded:    true,
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("donation:", d.Status, d.AmountCents, d.Currency)

	for ev := range completed {
		if ev.Job.Kind == donations.UpdateEmailDonationKind {
			fmt.Println("job output:", string(ev.Job.Output()))
			break
		}
	}
	var donated bool
	if err := s.Pool.QueryRow(ctx, `SELECT donated FROM emails WHERE id = $1`, emailID).Scan(&donated); err != nil {
		log.Fatal(err)
	}
	fmt.Println("email donated:", donated)

	// Output:
	// donation: succeeded 2500 USD
	// job output: {"result": "flagged", "email_id": 1, "matched_by": "email_id"}
	// email donated: true
}
