package bench

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestGrowthBacklogRows(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		scale float64
		want  []int
	}{
		{1, []int{10_000, 100_000, 1_000_000, 1_000_000, 1_000_000}},
		{0.5, []int{5_000, 50_000, 500_000, 500_000, 500_000}},
		{0.002, []int{300, 3_000, 30_000, 30_000, 30_000}},
	} {
		var got []int
		for _, b := range growthBacklogs {
			got = append(got, b.rows(tc.scale))
		}
		require.Equal(t, tc.want, got, "scale %g", tc.scale)
	}
}
