//go:build long

package faults_test

import (
	"flag"
	"runtime"
	"strconv"
	"testing"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/outbox"
)

// TestMain keeps Go's default of GOMAXPROCS parallel tests (dbtest raises
// it to 3 for the quick suite): a fault test opens many connections — worker
// processes, proxies, its own pools — and the suite shares the server's
// max_connections with the package running beside it. -parallel on the
// command line still wins.
func TestMain(m *testing.M) {
	_ = flag.Set("test.parallel", strconv.Itoa(runtime.GOMAXPROCS(0)))
	dbtest.WrapTestMain(m)
}

// directInsert is the outbox configuration of the tests that read a job in
// river_job as soon as its transaction committed (River's unique counts in
// FlushResult, the job's row and round trips): DirectInsert writes River's
// row in the transaction. The outbox table path and its relay are tested in
// packages outbox, outbox/relay and internal/app, and end to end by the
// demo, the soak and the fault suite's worker processes.
var directInsert = &outbox.Config{DirectInsert: true}
