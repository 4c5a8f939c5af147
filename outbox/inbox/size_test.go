//go:build !long

package inbox_test

// eventsTotal is how many transactions TestExactlyOnceInCommitOrder runs
// in the quick suite; the long suite runs the 50,000.
const eventsTotal = 5000

// producerPause is each producer's pause between transactions: none for
// the quick suite's few seconds.
const producerPause = 0
