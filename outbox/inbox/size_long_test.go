//go:build long

package inbox_test

// eventsTotal is how many transactions TestExactlyOnceInCommitOrder runs.
const eventsTotal = 50000
