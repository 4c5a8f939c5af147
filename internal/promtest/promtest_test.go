package promtest_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/promtest"
)

func TestHistogramQuantileSpecialCases(t *testing.T) {
	t.Parallel()
	inf := math.Inf(+1)
	b := []promtest.Bucket{{0.1, 2}, {0.2, 4}, {inf, 4}}
	require.InDelta(t, 0.05, promtest.HistogramQuantile(0.25, b), 1e-12, "the first bucket starts at 0")
	require.InDelta(t, 0.15, promtest.HistogramQuantile(0.75, b), 1e-12)
	require.InDelta(t, 0.2, promtest.HistogramQuantile(1, b), 1e-12)
	require.InDelta(t, 0.2, promtest.HistogramQuantile(0.99, []promtest.Bucket{{0.1, 2}, {0.2, 4}, {inf, 10}}), 0,
		"a rank in +Inf returns the highest finite bound")
	require.True(t, math.IsNaN(promtest.HistogramQuantile(0.5, []promtest.Bucket{{0.1, 0}, {inf, 0}})), "no observations")
	require.True(t, math.IsNaN(promtest.HistogramQuantile(0.5, []promtest.Bucket{{0.1, 1}, {0.2, 2}})), "no +Inf bucket")
	require.True(t, math.IsNaN(promtest.HistogramQuantile(0.5, []promtest.Bucket{{inf, 2}})), "one bucket")
	require.True(t, math.IsInf(promtest.HistogramQuantile(-0.1, b), -1))
	require.True(t, math.IsInf(promtest.HistogramQuantile(1.1, b), +1))
	require.True(t, math.IsNaN(promtest.HistogramQuantile(0, []promtest.Bucket{{0.1, 0}, {inf, 3}})), "rank 0 in an empty first bucket: 0/0")
	require.InDelta(t, -1.0, promtest.HistogramQuantile(0.2, []promtest.Bucket{{-1, 1}, {1, 2}, {inf, 2}}), 0,
		"a lowest bucket at or below 0 returns its bound")
	// Unsorted input with a decreasing count is sorted and made monotonic.
	require.InDelta(t, 0.175, promtest.HistogramQuantile(0.75, []promtest.Bucket{{inf, 4}, {0.2, 4}, {0.1, 2}, {0.15, 1}}), 1e-12)
}

// HistogramQuantile returns what Prometheus' histogram_quantile returns: a
// promtool unit test evaluates histogram_quantile over random histograms
// (random layouts, counts, empty buckets, ranks in the +Inf bucket) and
// expects the values computed here, rounded to 1e-9 on both sides.
func TestHistogramQuantileMatchesPromtool(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(14, 0))
	toNearest := 1e-9
	inv := 1 / toNearest // at run time, as PromQL: not exactly 1e9
	var series, tests strings.Builder
	for id := range 60 {
		n := 2 + rng.IntN(12)
		bounds := make([]float64, 0, n+1)
		v := 0.0005 * math.Pow(10, 3*rng.Float64())
		for range n {
			bounds = append(bounds, v)
			v *= 1.05 + 2*rng.Float64()
		}
		bounds = append(bounds, math.Inf(+1))
		buckets := make([]promtest.Bucket, len(bounds))
		cum := 0.0
		for i, ub := range bounds {
			if rng.IntN(3) > 0 || i == 0 {
				cum += float64(rng.IntN(50))
			}
			buckets[i] = promtest.Bucket{UpperBound: ub, Count: cum}
			le := strconv.FormatFloat(ub, 'g', -1, 64)
			if math.IsInf(ub, +1) {
				le = "+Inf"
			}
			fmt.Fprintf(&series, "      - series: 'h_bucket{id=\"%d\",le=\"%s\"}'\n        values: '%s'\n", id, le, strconv.FormatFloat(cum, 'g', -1, 64))
		}
		if cum == 0 {
			continue // NaN, covered above
		}
		for _, q := range []float64{0, 0.5, 0.9, 0.95, 0.99, 1} {
			// PromQL's round(v, 1e-9): floor(v*(1/1e-9) + 0.5) / (1/1e-9).
			want := strconv.FormatFloat(math.Floor(promtest.HistogramQuantile(q, buckets)*inv+0.5)/inv, 'g', -1, 64)
			if want == "NaN" {
				// q = 0 over an empty first bucket: 0/0, as in Prometheus,
				// whose unit tests cannot expect NaN (NaN != NaN).
				continue
			}
			fmt.Fprintf(&tests, "      - expr: round(histogram_quantile(%g, h_bucket{id=\"%d\"}), 1e-9)\n        eval_time: 0m\n        exp_samples:\n          - labels: '{id=\"%d\"}'\n            value: %s\n",
				q, id, id, want)
		}
	}
	file := filepath.Join(t.TempDir(), "quantile_test.yml")
	require.NoError(t, os.WriteFile(file, []byte("tests:\n  - interval: 1m\n    input_series:\n"+series.String()+
		"    promql_expr_test:\n"+tests.String()), 0o600))
	out, ok := promtest.RunPromtool(t, "", "test", "rules", file)
	require.True(t, ok, out)
	require.Contains(t, out, "SUCCESS")
}

// promtool check metrics, as CheckMetrics runs it, reports what it lints.
func TestPromtoolCheckMetricsLints(t *testing.T) {
	t.Parallel()
	out, ok := promtest.RunPromtool(t, "# HELP jobs_done Jobs done.\n# TYPE jobs_done counter\njobs_done 3\n", "check", "metrics")
	require.False(t, ok)
	require.Contains(t, out, `counter metrics should have "_total" suffix`)
	out, ok = promtest.RunPromtool(t, "# HELP jobs_done_total Jobs done.\n# TYPE jobs_done_total counter\njobs_done_total 3\n", "check", "metrics")
	require.True(t, ok, out)
	require.Empty(t, out)
}
