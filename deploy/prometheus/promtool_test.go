// Package prometheus_test checks the Prometheus files of this folder with
// promtool, which must be installed (Debian's prometheus package ships it):
// a missing promtool fails the tests, it never skips them.
//
//   - rules.yml: recording rules (jobs/s, p50/p99 run time and queue latency
//     per kind, backlog, oldest waiting job, stuck jobs) and alerts (queue
//     latency, a stalled backlog, stuck jobs, discarded jobs, a worker down,
//     no worker up, queue gauges failing, a stalled outbox relay, dead outbox
//     rows);
//   - rules_test.yml: their unit tests;
//   - prometheus.yml: an example configuration that scrapes the workers
//     under the job name the alerts expect and loads the rules.
//
// cmd/worker's tests run promtool check metrics on a real worker's
// /metrics and check that every metric the rules read is served.
package prometheus_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/promtest"
)

func TestPromtoolCheckRules(t *testing.T) {
	t.Parallel()
	out, ok := promtest.RunPromtool(t, "", "check", "rules", "rules.yml")
	require.True(t, ok, out)
	require.Equal(t, "Checking rules.yml\n  SUCCESS: 22 rules found\n\n", out)
}

func TestPromtoolTestRules(t *testing.T) {
	t.Parallel()
	out, ok := promtest.RunPromtool(t, "", "test", "rules", "rules_test.yml")
	require.True(t, ok, out)
	require.Contains(t, out, "SUCCESS")
	require.NotContains(t, out, "FAILED")
}

func TestPromtoolCheckConfig(t *testing.T) {
	t.Parallel()
	out, ok := promtest.RunPromtool(t, "", "check", "config", "prometheus.yml")
	require.True(t, ok, out)
	require.Equal(t, 3, strings.Count(out, "SUCCESS"), out)
	require.Contains(t, out, "SUCCESS: 22 rules found")
}
