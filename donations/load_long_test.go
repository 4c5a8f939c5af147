//go:build long

package donations_test

import (
	"context"
	"testing"
)

// The load runs of the counter tests: each keeps the workers busy for
// 15 s to a minute under -race on two cores (5,000 donations; 22,000
// tracked events; 6,000 events folded by two worker processes), so they
// run in the full suite only. The quick run keeps the same checks at a
// tenth to a quarter of the load (TestCounterCaches, TestTrackOpen,
// TestFoldEmailCounters).

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

func TestFoldEmailCountersLoad(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("TwoWorkerProcessesRaceOnTheSameEmails", func(t *testing.T) {
		t.Parallel()
		twoWorkerProcessesRace(ctx, t, 5_000, 1_000)
	})
}
