package aftercommit_test

import (
	"context"
	"fmt"
	"log"

	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit"
	"github.com/aftercommit/aftercommit/jobs"
)

// SendInvoiceArgs is a kind of the application's own.
type SendInvoiceArgs struct {
	InvoiceID int64 `json:"invoice_id"`
}

func (SendInvoiceArgs) Kind() string { return "billing.send_invoice" }

type sendInvoiceWorker struct {
	river.WorkerDefaults[SendInvoiceArgs]
}

func (sendInvoiceWorker) Work(context.Context, *river.Job[SendInvoiceArgs]) error { return nil }

// An application registers its own queues and kinds and every kind of
// aftercommit on one registry; jobs.NewClient and jobs.NewOutbox are then
// built from it (see examples/embed). A nil pool is enough to inspect the
// registry; a client that works jobs needs the real one.
func ExampleRegister() {
	reg := jobs.NewRegistry()
	billing := reg.AddQueue("billing", "default", jobs.WeightNormal, nil)
	jobs.AddWorker(reg, billing, &sendInvoiceWorker{})

	aftercommit.Register(reg, nil, nil) // nil *Config: every default
	if err := reg.Err(); err != nil {
		log.Fatal(err)
	}
	for _, kind := range reg.Kinds() {
		fmt.Println(kind)
	}
	// Output:
	// aftercommit.ping
	// aftercommit.prune_events
	// billing.send_invoice
	// donations.fold_email_counters
	// donations.fold_fundraiser_counters
	// donations.fold_user_counters
	// donations.reconcile_counters
	// donations.recount_fundraiser
	// donations.recount_user
	// donations.update_email_donation
	// inventory.complete_checkout
	// inventory.expire_checkout
	// inventory.prune_expired_claims
	// reporting.car_report
	// reporting.car_users_imported
	// reporting.create_car_users_in_bulk
	// reporting.rollup_fundraiser_day
}
