package demo_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/demo"
	"github.com/aftercommit/aftercommit/internal/natstest"
)

func TestRun(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 16})

	var out bytes.Buffer
	sum, err := demo.Run(ctx, s.Pool, demo.Config{Scale: 0.05, Seed: 7, Out: &out, Schema: s.Name, DrainTimeout: time.Minute})
	require.NoError(t, err)
	var printed bytes.Buffer
	sum.Print(&printed)
	t.Log("\n" + out.String() + printed.String())
	require.True(t, sum.OK(), "failed: %+v", sum.Failed())
	require.Empty(t, sum.Failed())

	names := make([]string, 0, len(sum.Invariants))
	for _, inv := range sum.Invariants {
		names = append(names, inv.Name)
	}
	require.Equal(t, []string{
		"emails flagged by donations",
		"flagged emails are exactly the expected ones",
		"fundraiser counter caches off",
		"user counter caches off",
		"email opens",
		"email clicks",
		"emails whose counters are off",
		"unfolded open/click deltas",
		"units sold ≤ stock",
		"stock + units sold = initial stock",
		"completed checkouts = paid checkouts",
		"paid claims left unsold",
		"cars with all their users",
		"car reports equal to car_users",
		"car report jobs left waiting",
		"imports finished, each once (import.finished)",
		"rollup rows differing from GROUP BY",
		"rollup totals = fundraiser totals",
		"jobs discarded or awaiting retry",
		"bulk imports in their car's fair share",
		"most imports of one car queued at once",
	}, names)

	phases := make([]string, 0, len(sum.Phases))
	for _, p := range sum.Phases {
		phases = append(phases, p.Name)
	}
	require.Equal(t, []string{"seed users and emails", "donations", "email opens and clicks", "flash sale", "bulk import of car users"}, phases)
	require.Equal(t, 250, sum.Phases[1].Ops, "5,000 donations at scale 0.05")
	require.Equal(t, 20, sum.Phases[2].Ops, "1,000 events in batches of 50")
	require.Equal(t, 10, sum.Phases[3].Ops, "10 buyers")

	// The stock was 5 units: at most 5 sold, and the donations were made.
	var donations, cars int
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM donations), (SELECT count(*) FROM cars)`).Scan(&donations, &cars))
	require.Equal(t, 250, donations)
	require.Equal(t, 1, cars)
	require.Contains(t, printed.String(), "all 21 invariants hold")
	require.True(t, strings.Contains(printed.String(), "donations.update_email_donation"), "the job table lists the kinds")

	// A second run on the same database checks its own rows only.
	sum2, err := demo.Run(ctx, s.Pool, demo.Config{Scale: 0.02, Seed: 8, Schema: s.Name, DrainTimeout: time.Minute})
	require.NoError(t, err)
	require.True(t, sum2.OK(), "failed: %+v", sum2.Failed())
	require.NotEqual(t, sum.Tag, sum2.Tag)
}

func TestRunBadConfig(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, cfg := range []demo.Config{
		{Scale: 0},
		{Scale: -1},
		{Scale: 101},
		{Scale: 1, DrainTimeout: -time.Second},
		{Scale: 1, Concurrency: 1000},
	} {
		_, err := demo.Run(ctx, nil, cfg)
		require.ErrorIs(t, err, demo.ErrInvalidConfig, "%+v", cfg)
	}
}

// TestRunWithNATS: with NATSURL the run's donation.created events reach a
// consumer through JetStream and the inbox, whose tally per fundraiser
// equals the donations; the stream, the consumer's schema and the relay's
// row are gone afterwards.
func TestRunWithNATS(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 16})
	nc := natstest.Connect(t, natstest.URL())

	var out bytes.Buffer
	sum, err := demo.Run(ctx, s.Pool, demo.Config{Scale: 0.02, Seed: 9, Out: &out, Schema: s.Name, DrainTimeout: time.Minute, NATSURL: natstest.URL()})
	require.NoError(t, err)
	t.Log("\n" + out.String())
	require.True(t, sum.OK(), "failed: %+v", sum.Failed())
	var got []demo.Invariant
	for _, inv := range sum.Invariants {
		if strings.HasPrefix(inv.Name, "NATS consumer") {
			got = append(got, inv)
		}
	}
	require.Equal(t, []demo.Invariant{
		{Name: "NATS consumer's donations (inbox, via JetStream)", Want: "100", Got: "100", OK: true},
		{Name: "NATS consumer tally off the source of truth (fundraisers)", Want: "0", Got: "0", OK: true},
	}, got)
	require.Contains(t, out.String(), "NATS consumer caught up")

	js, err := jetstream.New(nc)
	require.NoError(t, err)
	_, err = js.Stream(ctx, "AFTERCOMMIT_DEMO_"+strings.ToUpper(sum.Tag))
	require.ErrorIs(t, err, jetstream.ErrStreamNotFound)
	var schemas, relays int
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = $1), (SELECT count(*) FROM outbox_event_relays)`,
		"aftercommit_demo_tally_"+sum.Tag).Scan(&schemas, &relays))
	require.Zero(t, schemas)
	require.Zero(t, relays)
}
