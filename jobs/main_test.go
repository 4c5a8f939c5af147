package jobs_test

import (
	"testing"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/outbox"
)

func TestMain(m *testing.M) { dbtest.WrapTestMain(m) }

// directInsert is the outbox configuration of this package's tests: they
// test the job runtime, whose jobs they read in river_job as soon as the
// enqueueing transaction committed. The outbox table path and its relay are
// tested in packages outbox and outbox/relay, and end to end in the domains.
var directInsert = &outbox.Config{DirectInsert: true}
