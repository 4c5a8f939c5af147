// Package riverseam names, in one place, every internal of River that
// aftercommit relies on beyond River's documented API, and its test is the
// upgrade canary: when the River version in go.mod moves, the test says
// which of them changed and what depends on it.
//
// The internals:
//
//   - The names of River's sqlc statements on its insert path
//     (InsertFastManyPrefix, NotifyManyPrefix, ProductVersionPrefix).
//     outbox's pipelined commit records River's insert by them and sends it
//     with the COMMIT in one round trip (outbox/pipeline.go); a statement it
//     does not know makes it fall back to two round trips.
//   - river_job's unique_key and unique_states columns, the partial unique
//     index over them (river_job_unique_idx), and the bit layout of
//     unique_states (rivershared/uniquestates in Go,
//     river_job_state_in_bitmask in SQL). The queue lock (jobs/queuelock.go)
//     sets a job's key and states through River's insert params, so River's
//     INSERT … ON CONFLICT matches a waiting job, and clears them with an
//     UPDATE of its own when the job starts.
//   - The notification River's producers fetch on: topic InsertTopic
//     ("<schema>.river_insert") with payload {"queue": "<name>"}
//     (WakeSQL). The rate limit (jobs/ratelimit.go) sends it when a job it
//     snoozed becomes due, so the job is fetched then, not at the next
//     poll.
//   - River's migrations, exported as golang-migrate files: package
//     internal/riversql, checked by the migrations' own test.
//   - River's driver plugin interfaces (a driver with PluginInit and
//     PluginPilot, a pilot with PluginServices; riverpilot.Pilot and
//     riverpilot.StandardPilot, marked unstable) and the order in which a
//     client stops: producers first, then plugin services, before Stop
//     returns. jobs.NewClient's driver (jobs/stophook.go) uses them to
//     write the worker locks' background releases before Stop returns;
//     jobs' TestLockReleasedBeforeStopReturns fails when they change.
package riverseam

// Statement names that River's sqlc queries start with, as River's pgx
// driver sends them.
const (
	// InsertFastManyPrefix starts River's multi-row job insert
	// (InsertManyTx, Insert).
	InsertFastManyPrefix = "-- name: JobInsertFastMany "
	// NotifyManyPrefix starts River's pg_notify of the queues an insert
	// made jobs available in.
	NotifyManyPrefix = "-- name: PGNotifyMany "
	// ProductVersionPrefix starts River's one-time read of the server's
	// version.
	ProductVersionPrefix = "-- name: PGGetProductAndVersion "
)

// InsertTopic is the notification topic River's producers listen on for
// "jobs became available in a queue", after the schema and a dot.
const InsertTopic = "river_insert"

// WakeSQL sends River's insert notification for the queue $2 in the schema
// $1 (the connection's current schema when NULL or empty), as River's
// PGNotifyMany does: every producer of that queue, in every process,
// fetches at once.
const WakeSQL = `SELECT pg_notify(concat(coalesce(nullif($1::text, ''), current_schema()), '.` + InsertTopic + `'), json_build_object('queue', $2::text)::text)`
