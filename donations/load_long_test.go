//go:build long

package donations_test

import (
	"context"
	"testing"
)

// The load runs of the counter tests: each keeps the workers busy for
// about a minute under -race on two cores (5,000 donations; 22,000
// tracked events), so they run in the full suite only. The quick run keeps
// the same checks at a tenth of the load (TestCounterCaches, TestTrackOpen).

func TestCounterCachesLoad(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("ExactAfterFiveThousandDonationsWithRetriesInjected", func(t *testing.T) {
		t.Parallel()
		donateWithRetriesInjected(ctx, t, 5_000)
	})
}

func TestTrackOpenLoad(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("TwentyThousandOpensFromSixteenGoroutinesFoldExactly", func(t *testing.T) {
		t.Parallel()
		trackOpensFromSixteenGoroutines(ctx, t, 20_000, 2_000)
	})
}
