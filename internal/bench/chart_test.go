package bench_test

import (
	"image/png"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/bench"
)

func TestWriteGrowthChart(t *testing.T) {
	t.Parallel()

	// results builds a growth run's results: per side, jobs/s, p99, p50.
	results := func(sides map[string][3]float64) []bench.Result {
		var out []bench.Result
		for side, v := range sides {
			for i, metric := range []string{"jobs/s", "p99 ms @200/s", "p50 ms @200/s"} {
				out = append(out, bench.Result{Scenario: bench.GrowthScenario, Side: side, Metric: metric,
					Median: v[i], Min: 0.9 * v[i], Max: 1.2 * v[i], Values: []float64{0.9 * v[i], v[i], 1.2 * v[i]}})
			}
		}
		return out
	}

	t.Run("EverySide", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "growth.png")
		require.NoError(t, bench.WriteGrowthChart(path, results(map[string][3]float64{
			"waiting_10k": {13000, 10.9, 1.0}, "waiting_100k": {12500, 11.6, 1.1}, "waiting_1m": {12000, 14, 1.2},
			"scheduled_1m": {11000, 19, 1.3}, "finished_1m": {11500, 12, 1.4},
		})))
		requirePNG(t, path, 960, 840)
	})

	t.Run("WaitingSidesOnly", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "growth.png")
		require.NoError(t, bench.WriteGrowthChart(path, results(map[string][3]float64{
			"waiting_10k": {13000, 10.9, 1.0}, "waiting_1m": {12000, 14, 1.2},
		})))
		info, err := os.Stat(path)
		require.NoError(t, err)
		require.Greater(t, info.Size(), int64(10_000))
	})

	t.Run("NoGrowthResults", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "growth.png")
		err := bench.WriteGrowthChart(path, []bench.Result{{Scenario: "latency", Side: "shipped", Metric: "jobs/s", Median: 1}})
		require.ErrorIs(t, err, bench.ErrNoGrowthResults)
		require.NoFileExists(t, path)
	})

	t.Run("UnwritablePath", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "missing", "growth.png")
		require.ErrorContains(t, bench.WriteGrowthChart(path, results(map[string][3]float64{"waiting_10k": {1, 1, 1}})),
			"bench: writing the chart")
	})
}

// requirePNG checks that path holds a PNG of width × height pixels.
func requirePNG(t *testing.T, path string, width, height int) {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer func() { _ = f.Close() }() // read-only: nothing to lose
	img, err := png.Decode(f)
	require.NoError(t, err)
	require.Equal(t, width, img.Bounds().Dx())
	require.Equal(t, height, img.Bounds().Dy())
}
