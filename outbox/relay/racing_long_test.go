//go:build long

package relay_test

import (
	"fmt"
	"testing"
)

// TestRacingRelaysLoad is TestRacingRelays with 50,000 preloaded rows: each
// run keeps two or three relays and a writer busy for about 10 s under
// -race on two cores, so it runs in the full suite only.
func TestRacingRelaysLoad(t *testing.T) {
	t.Parallel()
	for _, relays := range []int{2, 3} {
		t.Run(fmt.Sprintf("%dRelays", relays), func(t *testing.T) {
			t.Parallel()
			raceRelays(t, relays, 50_000)
		})
	}
}
