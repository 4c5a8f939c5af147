// Package donations is the fundraising domain: users, fundraisers, the emails
// sent on a fundraiser's behalf and the donations they lead to.
//
// A donation is written by Service.Donate in one outbox transaction with the
// job that flags the email that produced it (UpdateEmailDonation) and the
// donation.created event. The counter caches (fundraisers.donations_count
// and donations_total_cents, users.donations_count) cost O(new donations):
// triggers on donations write a delta row for every change of a succeeded
// donation, and the event's subscription enqueues queue-locked fold jobs
// that move a row's deltas into its counters; recounts from the donations
// repair drift, and a periodic reconciliation (RegisterReconciler) checks a
// slice of rows a run. Email opens and clicks arrive thousands of times a
// second; each is a tiny delta row plus a queue-locked fold job, so one job
// folds a burst into the email's counters.
//
// Register declares the domain's queues, topic and workers on a
// jobs.Registry, RegisterReconciler the periodic reconciliation; the package
// imports outbox and jobs, never another domain.
package donations
