// Package donations is the fundraising domain: users, fundraisers, the emails
// sent on a fundraiser's behalf and the donations they lead to.
//
// A donation is written by Service.Donate in one outbox transaction with the
// job that flags the email that produced it (UpdateEmailDonation) and the
// donation.created event, whose subscription keeps the counter caches
// (fundraisers.donations_count and donations_total_cents,
// users.donations_count) exact. Email opens and clicks arrive thousands of
// times a second; each is a tiny delta row plus a queue-locked fold job, so
// one job folds a burst into the email's counters.
//
// Register declares the domain's queues, topic and workers on a
// jobs.Registry; the package imports outbox and jobs, never another domain.
package donations
