// Package jobs is aftercommit's job runtime: the workers, queues and periodic
// jobs that cmd/worker runs on River.
//
// This first slice holds the ping job, the smallest real job there is: it
// marks one row of the pings table as pinged, in the same transaction that
// completes the job (river.JobCompleteTx), so a retry or a second delivery
// never counts twice. Tests, benchmarks and health checks use it.
//
// # Ping
//
// Insert a pings row and enqueue PingArgs{PingID: id} in the same outbox
// transaction; a worker registered with AddPingWorker sets pinged_at and adds
// one to ping_count. PingID 0 is a no-op ping used to measure the queue alone.
package jobs
