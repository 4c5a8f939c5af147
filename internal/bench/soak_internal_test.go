package bench

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestSoakVerdict(t *testing.T) {
	t.Parallel()
	const mb = 1 << 20
	// samples every 10 s: jobs/s, p99 ms, river_job MB.
	mk := func(rows ...[3]float64) []SoakSample {
		out := make([]SoakSample, len(rows))
		for i, r := range rows {
			out[i] = SoakSample{Elapsed: float64(i+1) * 10, Seconds: 10, JobsPerSec: r[0], P99Ms: r[1], RiverJobBytes: int64(r[2] * mb)}
		}
		return out
	}
	before := &SoakSample{RiverJobBytes: 0}

	t.Run("Stable", func(t *testing.T) {
		t.Parallel()
		v := verdict(before, mk([3]float64{100, 10, 1}, [3]float64{100, 10, 2}, [3]float64{90, 12, 3},
			[3]float64{100, 11, 4}, [3]float64{95, 11, 5}, [3]float64{100, 10, 6}), 0)
		require.True(t, v.Stable, v.Text)
		require.Zero(t, v.WarmupSamples)
		require.InDelta(t, 97.5/100, v.JobsRatio, 1e-9)
		require.InDelta(t, 1.05/1.0, v.P99Ratio, 1e-9)
		require.InDelta(t, 6.0, v.GrowthMBPerMin, 1e-9) // 6 MB in 1 min
		require.InDelta(t, 1.0, v.GrowthRatio, 1e-9)
	})

	t.Run("WarmupLeftOut", func(t *testing.T) {
		t.Parallel()
		// The load first waited for the workers at 12 s: the two samples
		// that began before are the warm-up, and the low p99 does not count.
		v := verdict(before, mk([3]float64{100, 1, 1}, [3]float64{100, 10, 2}, [3]float64{100, 10, 3},
			[3]float64{100, 10, 4}, [3]float64{100, 10, 5}), 12*time.Second)
		require.Equal(t, 2, v.WarmupSamples)
		require.True(t, v.Stable, v.Text)
		require.InDelta(t, 1.0, v.P99Ratio, 1e-9)
		require.InDelta(t, 6.0, v.GrowthMBPerMin, 1e-9) // from 2 MB at 20 s to 5 MB at 50 s
	})

	t.Run("Degraded", func(t *testing.T) {
		t.Parallel()
		v := verdict(before, mk([3]float64{100, 10, 1}, [3]float64{100, 10, 2}, [3]float64{60, 30, 10}), 0)
		require.False(t, v.Stable)
		require.Contains(t, v.Text, "jobs/s fell to ×0.60")
		require.Contains(t, v.Text, "p99 rose to ×3.00")
		require.Contains(t, v.Text, "river_job grows ×8.00 faster")
	})

	t.Run("TooFewSamples", func(t *testing.T) {
		t.Parallel()
		v := verdict(before, mk([3]float64{100, 10, 1}, [3]float64{100, 10, 2}), 0)
		require.False(t, v.Stable)
		require.Contains(t, v.Text, "too few samples")
	})
}
