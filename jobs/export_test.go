package jobs

import "github.com/riverqueue/river"

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
