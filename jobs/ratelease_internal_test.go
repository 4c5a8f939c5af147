package jobs

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestRateLeasesOfAProcess: a key asks for a lease once it starts twice within a
// lease's length, spends the tokens only on starts inside the lease, asks
// for twice its recent starts, never asks twice at once, stops asking
// for a while after a lease went unused, and forgets quiet keys.
func TestRateLeasesOfAProcess(t *testing.T) {
	t.Parallel()
	var l rateLeases
	k := rateKey{namespace: "ns", key: "a"}
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	req := func(at time.Time, ask int32) *rateRequest {
		return &rateRequest{namespace: "ns", key: "a", limit: 100, period: time.Second, at: at, lease: ask}
	}
	admitted := func(at time.Time) rateDecision { return rateDecision{admitted: true, startedAt: at} }

	leased, ask := l.take(k, 100, time.Second, ms(0))
	require.Equal(t, []any{false, int32(0)}, []any{leased, ask}, "a key never started here")
	l.note(k, req(ms(0), 0), admitted(ms(0)), true)

	leased, ask = l.take(k, 100, time.Second, ms(10))
	require.Equal(t, []any{false, int32(rateLeaseAskMin)}, []any{leased, ask}, "started 10 ms ago: ask")
	leased, ask = l.take(k, 100, time.Second, ms(11))
	require.Equal(t, []any{false, int32(0)}, []any{leased, ask}, "an ask is out")
	leased, ask = l.take(k, 50, time.Second, ms(11))
	require.Equal(t, []any{false, int32(0)}, []any{leased, ask}, "another limit is another key's")

	// The ask comes back with 3 tokens for [20 ms, 520 ms].
	d := admitted(ms(10))
	d.leaseTokens, d.leaseFrom, d.leaseUntil = 3, ms(20), ms(520)
	l.note(k, req(ms(10), rateLeaseAskMin), d, true)
	l.note(k, req(ms(11), 0), admitted(ms(11)), true)
	leased, ask = l.take(k, 100, time.Second, ms(15))
	require.Equal(t, []any{false, int32(rateLeaseAskMin)}, []any{leased, ask}, "a start before the lease asks again")
	l.note(k, req(ms(15), ask), admitted(ms(15)), true)
	for i := range 3 {
		leased, _ = l.take(k, 100, time.Second, ms(30+i))
		require.True(t, leased, "token %d", i)
	}
	leased, ask = l.take(k, 100, time.Second, ms(40))
	require.False(t, leased, "the tokens are spent")
	require.Equal(t, int32(2*7), ask, "twice the 7 starts so far")
	l.note(k, req(ms(40), ask), rateDecision{}, false) // the decision failed: the ask is over

	// 40 more starts in this lease length: the next ask is for twice
	// those of the busier of the last two lease lengths.
	for i := range 40 {
		l.note(k, req(ms(100+i), 0), admitted(ms(100+i)), true)
	}
	leased, ask = l.take(k, 100, time.Second, ms(200))
	require.False(t, leased)
	require.Equal(t, int32(2*47), ask)

	// A lease none of whose tokens was used: no ask for 20 lease lengths.
	d = admitted(ms(200))
	d.leaseTokens, d.leaseFrom, d.leaseUntil = 10, ms(300), ms(800)
	l.note(k, req(ms(200), ask), d, true)
	leased, ask = l.take(k, 100, time.Second, ms(900))
	require.Equal(t, []any{false, int32(0)}, []any{leased, ask})
	l.note(k, req(ms(900), 0), admitted(ms(900)), true)
	leased, ask = l.take(k, 100, time.Second, ms(900+rateLeaseQuiet*500-1))
	require.Equal(t, []any{false, int32(0)}, []any{leased, ask}, "quiet")
	l.note(k, req(ms(900+rateLeaseQuiet*500-1), 0), admitted(ms(900+rateLeaseQuiet*500-1)), true)
	_, ask = l.take(k, 100, time.Second, ms(900+rateLeaseQuiet*500+1))
	require.Positive(t, ask, "asking again")

	// A period under 40 ms: no lease would cover a fetch.
	ks := rateKey{namespace: "ns", key: "short"}
	l.note(ks, &rateRequest{namespace: "ns", key: "short", limit: 100, period: 30 * time.Millisecond, at: ms(0)}, admitted(ms(0)), true)
	leased, ask = l.take(ks, 100, 30*time.Millisecond, ms(1))
	require.Equal(t, []any{false, int32(0)}, []any{leased, ask}, "period 30 ms")

	// Keys quiet for two periods are forgotten.
	k2 := rateKey{namespace: "ns", key: "b"}
	l.note(k2, &rateRequest{namespace: "ns", key: "b", limit: 1, period: time.Second, at: ms(0)}, admitted(ms(0)), true)
	l.forget(ms(900 + rateLeaseQuiet*500 + 1))
	require.NotContains(t, l.keys, k2)
	require.NotContains(t, l.keys, ks)
	require.Contains(t, l.keys, k)
}
