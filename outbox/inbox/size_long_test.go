//go:build long

package inbox_test

import "time"

// eventsTotal is how many transactions TestExactlyOnceInCommitOrder runs.
const eventsTotal = 50000

// producerPause is each producer's pause between transactions: 16
// producers flat out for a minute starve the long suite's timing-bound
// tests in other packages (inventory's flash sale lost its claims to
// expiry, its lock-order test ran 12 checkouts of 40, beside it); paused,
// the run takes about 80 s at ~600 transactions a second.
const producerPause = 25 * time.Millisecond
