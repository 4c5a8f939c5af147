// Package faults holds aftercommit's fault suite: tests that break things
// on purpose — kill worker processes mid-job, restart the database server,
// cut connections, put a faulty network (toxiproxy) in the path, roll back
// at random, run three workers and kill their leader, connect with the
// least-privilege roles — against the real database, and check that nothing
// is lost, nothing is done twice and nobody is let in. The worker processes
// are the fault build of cmd/worker (go build -tags faults), whose hooks
// the tests drive through AFTERCOMMIT_FAULT_… variables. The suite is
// behind the build tag long (go test -race -tags long ./internal/faults);
// RELIABILITY.md lists every scenario, its command and the figures of the
// last run.
package faults
