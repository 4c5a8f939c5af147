package argcheck_test

import (
	"context"
	"fmt"
	"log"

	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/jobs/argcheck"
)

// sendReceiptArgs is the release about to be deployed. Its first release
// had donation_id and template; then template was dropped, copy_to was
// added as an optional field and language as a required one.
type sendReceiptArgs struct {
	DonationID int64  `json:"donation_id" jobs:"id"`
	Language   string `json:"language" jobs:"required"`
	CopyTo     string `json:"copy_to,omitempty"`
}

func (sendReceiptArgs) Kind() string { return "donations.send_receipt" }

type sendReceiptWorker struct {
	river.WorkerDefaults[sendReceiptArgs]
}

func (sendReceiptWorker) Work(context.Context, *river.Job[sendReceiptArgs]) error { return nil }

// Before deploying a release, check that the jobs already queued decode
// with its args types: the jobs it would cancel fail the check.
//
//nolint:gocritic // exitAfterDefer: an Example reads as caller code, log.Fatal included; a failed run leaves its schema to the test harness' clean-up of old runs
func ExampleCheck() {
	ctx := context.Background()
	s, release, err := dbtest.NewSchema(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer release()

	// Jobs queued by earlier releases.
	_, err = s.Pool.Exec(ctx, `
		INSERT INTO river_job (args, kind, max_attempts, priority, queue, state, scheduled_at) VALUES
		  ('{"donation_id": 1, "language": "en"}', 'donations.send_receipt', 25, 1, 'default', 'available', now()),
		  ('{"donation_id": 2, "template": "v1"}', 'donations.send_receipt', 25, 1, 'default', 'scheduled', now() + interval '1 hour'),
		  ('{"donation_id": "3", "language": "fr"}', 'donations.send_receipt', 25, 1, 'default', 'retryable', now()),
		  ('{"donation_id": 0, "language": "de"}', 'donations.send_receipt', 25, 1, 'default', 'available', now()),
		  ('{"donation_id": 5}', 'donations.send_thanks', 25, 1, 'default', 'available', now())`)
	if err != nil {
		log.Fatal(err)
	}

	// The registry of the release about to be deployed.
	reg := jobs.NewRegistry()
	jobs.AddWorker(reg, river.QueueDefault, sendReceiptWorker{})

	report, err := argcheck.Check(ctx, s.Pool, reg, &argcheck.Opts{Since: -1}) // queued jobs only
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("checked %d: %d ok, %d with warnings, %d failing\n", report.Checked, report.OK, report.Warned, report.Failing)
	for _, k := range report.Kinds {
		fmt.Printf("%s: %d checked, %d failing\n", k.Kind, k.Checked, k.Failing)
	}
	for _, p := range report.Problems {
		fmt.Printf("job %d %s %s %q: %s\n", p.JobID, p.Severity, p.Problem, p.Field, p.Message)
	}
	if report.Failed() {
		fmt.Println("do not deploy yet")
	}
	// Output:
	// checked 5: 1 ok, 0 with warnings, 4 failing
	// donations.send_receipt: 4 checked, 3 failing
	// donations.send_thanks: 1 checked, 1 failing
	// job 2 failure missing_field "language": missing (required)
	// job 2 warning unknown_field "template": not a field of argcheck_test.sendReceiptArgs: its value is dropped when the job is decoded
	// job 3 failure type_mismatch "donation_id": wrong type: a JSON string where int64 is expected
	// job 4 failure invalid_id "donation_id": must be an ID above 0, got 0
	// job 5 failure unknown_kind "": no worker is registered for kind "donations.send_thanks": every attempt fails (UnknownJobKindError) until River discards the job
	// do not deploy yet
}
