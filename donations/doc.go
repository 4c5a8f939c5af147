// Package donations is the fundraising domain: users, fundraisers, the emails
// sent on a fundraiser's behalf and the donations they lead to. A donation
// enqueues, in its own transaction, the job that flags the email that produced
// it; open/click counters and counter caches are kept by small jobs.
//
// The package is laid out by the project's design; its tables, service and
// workers arrive with the donations issue (#4). It imports outbox and jobs,
// never another domain.
package donations
