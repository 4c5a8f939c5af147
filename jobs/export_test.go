package jobs

import (
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver"
)

// The middleware NewClient installs, for the tests of package jobs_test
// that drive it alone.
type (
	LockMiddleware      = lockMiddleware
	LockFunc            = lockFunc
	QueueLockMiddleware = queueLockMiddleware
)

// NewLockMiddleware is newLockMiddleware, for the tests.
var NewLockMiddleware = newLockMiddleware

// LockFuncFor is lockFuncFor, for the tests.
func LockFuncFor[T river.JobArgs](w river.Worker[T]) (LockFunc, bool) { return lockFuncFor(w) }

// LockClientDriver is the driver NewClient gives River, with only mw's
// hooks: a client built on it releases mw's locks in the background and
// keeps semaphore slots, as NewClient's does.
func LockClientDriver(pool *pgxpool.Pool, mw *LockMiddleware) riverdriver.Driver[pgx.Tx] {
	return newHookedDriver(pool, nil, []workHooks{mw.hooks()})
}
