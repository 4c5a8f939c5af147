// Package reporting is the reporting domain: cars and their users, a report
// per car, and daily donation totals per fundraiser, all kept fresh by many
// small, coalesced jobs that recompute from the source of truth.
//
// # Cars and their users
//
// car_users holds one row per (car, user) pair; it is the source of truth of
// a car's report (car_reports: users_count, last_user_added_at), which only
// a CarReport job writes, by recounting car_users, never by increments.
// CarReport is queue-locked per car: a burst of additions leaves one waiting
// report.
//
// Service.AddCarUser adds one pair and enqueues the car's report in the same
// transaction. A CreateCarUsersInBulk job (Service.EnqueueCarUsersInBulk, or
// Service.CreateCarUsersInBulk to do the same work at once) adds up to
// MaxBulkUserIDs users to a car: it checks the car and the users in two
// queries, inserts every missing pair in one statement (skipping existing
// pairs), and enqueues the car's report once, through the outbox batcher,
// whose insert goes out with the COMMIT: one round trip for the report job
// however many users were added. More than MaxBulkUserIDs IDs are refused
// when the job is enqueued (ErrTooManyUserIDs), by any enqueue path. An
// unknown car or unknown users (listed in the error) are *ValidationError
// values matching ErrInvalidInput, and leave nothing written. The bulk jobs
// of one car share BulkInFlightPerCar places in the bulk queue (a
// jobs.FairShare): a car's long import waits pending beyond them, so another
// car's import is not held behind it (job_sequence_status shows namespace
// reporting.create_car_users_in_bulk, keys "<car_id>#0" …). Such jobs need
// the outbox table: an Outbox with DirectInsert refuses them.
//
// # Daily donation totals
//
// fundraiser_daily_totals holds, per fundraiser and UTC day, the count and
// the total of the succeeded donations, as the donations domain's counter
// caches count them. The package subscribes to donation.created: each
// counted donation becomes a RollupFundraiserDayArgs job, queue-locked per
// (fundraiser, day), that recomputes the rows from the donations table.
// Service.Backfill recomputes any range of days. Once the queue has drained
// the table equals a GROUP BY over the donations.
//
// # Users and the donations domain
//
// The package imports outbox and jobs, never another domain. It shares the
// donations domain's tables by SQL, read-only: car_users references the
// users table (a person has one identity in the application, and a copy
// would need keeping in sync; no "user created" event exists to keep one),
// and the rollups read donations, their source of truth. It consumes the
// donation.created event by its JSON (fundraiser_id, status), not by the
// publisher's Go type. Its migration adds two partial indexes on donations
// for its reads, and drops them when rolled back.
//
// Register declares the domain's queues, workers and subscription on a
// jobs.Registry; the donations domain must declare the donation.created
// topic on the same registry.
package reporting
