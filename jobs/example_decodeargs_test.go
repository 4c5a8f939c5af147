package jobs_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/jobs"
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

// A producer — in Go or in another language — checks its fixtures the way
// the worker will decode them: a job with such args is cancelled at its
// first attempt with this very error.
func ExampleRegistry_DecodeArgs() {
	reg := jobs.NewRegistry()
	jobs.AddWorker(reg, river.QueueDefault, sendReceiptWorker{})

	for _, raw := range []string{
		`{"donation_id": 1, "language": "en"}`,
		`{"donation_id": 2, "language": "en", "sent_by": "v3"}`,
		`{"donationId": 3, "language": "en"}`,
		`{"donation_id": -1, "language": "en", "copy_to": 7}`,
		`[{"donation_id": 1}]`,
	} {
		args, err := reg.DecodeArgs("donations.send_receipt", []byte(raw))
		if errors.Is(err, jobs.ErrBadArgs) {
			fmt.Println("cancelled:", err)
			continue
		}
		fmt.Printf("runs: %+v\n", args)
	}
	// Output:
	// runs: {DonationID:1 Language:en CopyTo:}
	// runs: {DonationID:2 Language:en CopyTo:}
	// cancelled: donations.send_receipt: args: donation_id: missing (required); unknown field "donationId" (ignored)
	// cancelled: donations.send_receipt: args: donation_id: must be an ID above 0, got -1; copy_to: wrong type: a JSON number where string is expected
	// cancelled: donations.send_receipt: args: must be a JSON object, got an array
}

// A tool that lists what is wrong with many jobs asks for every problem,
// warnings included; only a kind without a worker is an error.
func ExampleRegistry_CheckArgs() {
	reg := jobs.NewRegistry()
	jobs.AddWorker(reg, river.QueueDefault, sendReceiptWorker{})

	for _, raw := range []string{
		`{"donation_id": 1, "language": "en"}`,
		`{"donation_id": 2, "language": "en", "sent_by": "v3"}`,
		`{"donationId": 3, "language": "en"}`,
	} {
		problems, err := reg.CheckArgs("donations.send_receipt", []byte(raw))
		if err != nil {
			fmt.Println(err)
			continue
		}
		fmt.Printf("%s: %d problems\n", raw, len(problems))
		for _, p := range problems {
			fmt.Printf("  %s %s %q: %s\n", p.Severity, p.Problem, p.Field, p.Message)
		}
	}
	_, err := reg.CheckArgs("donations.send_thanks", []byte(`{"donation_id": 5}`))
	fmt.Println(errors.Is(err, jobs.ErrUnknownKind), err)
	// Output:
	// {"donation_id": 1, "language": "en"}: 0 problems
	// {"donation_id": 2, "language": "en", "sent_by": "v3"}: 1 problems
	//   warning unknown_field "sent_by": not a field of jobs_test.sendReceiptArgs: its value is dropped when the job is decoded
	// {"donationId": 3, "language": "en"}: 2 problems
	//   failure missing_field "donation_id": missing (required)
	//   warning unknown_field "donationId": not a field of jobs_test.sendReceiptArgs: its value is dropped when the job is decoded
	// true jobs: unknown kind: no worker is registered for kind "donations.send_thanks"
}
