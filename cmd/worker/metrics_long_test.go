//go:build long

package main

import "testing"

// TestRunMetricsAgreeWithJobKindStats is described with
// TestRunMetricsExposition (metrics_test.go): the demo at scale 0.1, over a
// thousand jobs, then the quantile comparison. It keeps a worker busy for
// several seconds, so it runs in the full suite only.
func TestRunMetricsAgreeWithJobKindStats(t *testing.T) {
	t.Parallel()
	runMetricsTest(t, 0.1, true)
}
