package reporting_test

import (
	"testing"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/outbox"
)

func TestMain(m *testing.M) { dbtest.WrapTestMain(m) }

// directInsert is the outbox configuration of the tests that read a job in
// river_job as soon as its transaction committed (River's unique counts in
// FlushResult, the job's row and round trips): DirectInsert writes River's
// row in the transaction. The tests that enqueue bulk jobs, which are in
// their car's fair share, use the outbox table (setupOpts.outboxTable). The
// outbox table path and its relay are tested in packages outbox,
// outbox/relay and internal/app, and end to end by the demo, the soak and
// the fault suite's worker processes.
var directInsert = &outbox.Config{DirectInsert: true}
