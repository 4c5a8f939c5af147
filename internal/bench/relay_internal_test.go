//go:build long

package bench

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
)

// TestRelayScenarios runs the outbox-table scenarios (and tx_one_job and
// latency, which gained outbox sides) once at a tiny scale: they work, move
// every row they should (relay_throughput checks its counts itself), and
// hot_key never sees two jobs waiting for its one key. The figures come
// from the full run (BENCHMARKS.md).
func TestRelayScenarios(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	names := append([]string{"tx_one_job", "latency"}, relayScenarioNames...)
	report, err := Run(ctx, Config{
		DatabaseURL: dbtest.ServerURL(t), Rounds: 1, Duration: 400 * time.Millisecond, Scale: 0.002, Scenarios: names,
		Out: testWriter{t},
	})
	require.NoError(t, err)

	sides := map[string][]string{}
	values := map[string]float64{}
	for _, r := range report.Results {
		require.Len(t, r.Values, 1)
		values[r.Scenario+"/"+r.Side+"/"+r.Metric] = r.Median
		if !slices.Contains(sides[r.Scenario], r.Side) {
			sides[r.Scenario] = append(sides[r.Scenario], r.Side)
		}
		if strings.HasPrefix(r.Metric, "max ") || r.Metric == "completed/s" || r.Metric == "vacuums" {
			require.GreaterOrEqual(t, r.Median, 0.0, "%s/%s %s", r.Scenario, r.Side, r.Metric)
			continue
		}
		require.Positive(t, r.Median, "%s/%s %s", r.Scenario, r.Side, r.Metric)
	}
	require.Equal(t, map[string][]string{
		"tx_one_job":       {"plain", "outbox_job", "outbox_direct", "river_insert_tx", "pgbench_plain", "pgbench_outbox"},
		"latency":          {"river_defaults", "shipped", "outbox_relay"},
		"relay_throughput": {"insert_many_fast_1000", "relay_1000", "relay_1000_1_mover", "take_copy_floor_1000", "relay_1000_no_copy", "relay_1000_2_relays", "insert_many_fast_5000", "relay_5000"},
		"relay_notify":     {"notify_10ms", "notify_never", "notify_every_tx"},
		"relay_latency":    {"defaults", "notify_1ms", "poll_max_5ms", "notify_1ms_cooldown_1ms"},
		"sustained":        {"direct", "outbox_relay"},
		"hot_key":          {"no_job", "outbox", "outbox_write_only", "direct"},
		"outbox_size":      {"outbox_relay"},
	}, sides)

	// The invariant of a queue lock, whichever way the job was written:
	// never two jobs waiting for the key.
	require.LessOrEqual(t, values["hot_key/outbox/max waiting jobs"], 1.0)
	require.LessOrEqual(t, values["hot_key/direct/max waiting jobs"], 1.0)
	require.Zero(t, values["hot_key/no_job/max waiting jobs"])
	require.Zero(t, values["hot_key/outbox_write_only/max waiting jobs"], "no relay runs: no job")
	// The direct path writes no outbox row.
	require.Zero(t, values["sustained/direct/max outbox depth"])
}

// testWriter logs each progress line with the test's clock.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(time.Now().Format("15:04:05.000"), strings.TrimSpace(string(p)))
	return len(p), nil
}
