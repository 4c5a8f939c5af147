package demo_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/demo"
	"github.com/aftercommit/aftercommit/jobs/jobstats"
)

// TestSummaryPrintsNoPercentileWithoutCompletedJobs: a kind with no
// completed job has no percentiles; the summary prints "-" as `aftercommit
// stats` does, not 0.0ms.
func TestSummaryPrintsNoPercentileWithoutCompletedJobs(t *testing.T) {
	t.Parallel()
	s := &demo.Summary{Kinds: []jobstats.KindStats{
		{Kind: "test.done", Period: jobstats.PeriodHour, Completed: 2, RunTimeP50: 1500 * time.Microsecond, RunTimeP95: 2 * time.Millisecond,
			RunTimeP99: 2 * time.Millisecond, QueueLatencyP50: 3 * time.Millisecond, QueueLatencyP95: 4 * time.Millisecond, QueueLatencyP99: 4 * time.Millisecond},
		{Kind: "test.failing", Period: jobstats.PeriodHour, Failed: 3, Discarded: 1},
	}}
	var out bytes.Buffer
	s.Print(&out)
	var lines []string
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "test.") {
			lines = append(lines, strings.Join(strings.Fields(line), " "))
		}
	}
	require.Equal(t, []string{
		"test.done 2 0 0 1.5ms 2.0ms 2.0ms 3.0ms 4.0ms 4.0ms",
		"test.failing 0 3 1 - - - - - -",
	}, lines)
}
