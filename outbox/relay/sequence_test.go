package relay_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

// seqRelay is a relay without a registry that puts every relaytest.n row in
// the sequence "s"/"k" + the row's n % 2 (decoded by hand).
func seqRelay(t *testing.T, s *dbtest.Schema, cfg relay.Config) *relay.Relay {
	t.Helper()
	cfg.Decode = func(_ string, args []byte) (river.JobArgs, error) {
		var a nArgs
		return a, json.Unmarshal(args, &a)
	}
	cfg.Sequence = func(args river.JobArgs) (relay.Sequence, bool) {
		a, ok := args.(nArgs)
		if !ok || a.N < 0 {
			return relay.Sequence{}, false
		}
		return relay.Sequence{Namespace: "s", Key: map[bool]string{true: "k0", false: "k1"}[a.N%2 == 0]}, true
	}
	return plainRelay(t, s, plainClient(t, s), cfg)
}

// seqStates returns "n:state" of the jobs, by n.
func seqStates(ctx context.Context, t *testing.T, s *dbtest.Schema) []string {
	t.Helper()
	return strs(ctx, t, s, `SELECT concat(args->>'n', ':', state) FROM river_job ORDER BY (args->>'n')::int`)
}

// TestSequencePlacedAfterOlderRows: a sequenced job is placed in its
// sequence only when every older outbox row was moved. Row 1 is held by
// another transaction (as another relay moving it would) while the relay
// moves rows 2–5: their jobs wait pending and unplaced. Once row 1 moves,
// all are placed in outbox order: 1 and 2 head their sequences, and the
// sequence members follow by outbox id, not by the order they were moved.
func TestSequencePlacedAfterOlderRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)
	rl := seqRelay(t, s, relay.Config{})
	require.NoError(t, insertN(ctx, s.Pool, 1, 5))

	holder, err := s.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = holder.Rollback(ctx) }()
	_, err = holder.Exec(ctx, `SELECT id FROM outbox_jobs WHERE args->>'n' = '1' FOR UPDATE`)
	require.NoError(t, err)

	res, err := rl.Drain(ctx)
	require.NoError(t, err)
	require.Equal(t, 4, res.Inserted)
	require.Equal(t, []string{"2:pending", "3:pending", "4:pending", "5:pending"}, seqStates(ctx, t, s))
	require.Equal(t, 4, count(ctx, t, s, `SELECT count(*) FROM job_sequence_inbox`))
	placed, err := rl.AppendSequences(ctx)
	require.NoError(t, err)
	require.Zero(t, placed, "row 1 is older and not moved yet")

	require.NoError(t, holder.Rollback(ctx))
	res, err = rl.Drain(ctx)
	require.NoError(t, err)
	require.Equal(t, 1, res.Inserted)
	require.Equal(t, []string{"1:available", "2:available", "3:pending", "4:pending", "5:pending"}, seqStates(ctx, t, s))
	require.Zero(t, count(ctx, t, s, `SELECT count(*) FROM job_sequence_inbox`))
	require.Equal(t, []string{"k0 0 2", "k0 1 4", "k1 0 1", "k1 1 3", "k1 2 5"}, strs(ctx, t, s,
		`SELECT concat_ws(' ', m.seq_key, m.pos, j.args->>'n') FROM job_sequence_members m JOIN river_job j ON j.id = m.job_id ORDER BY 1`))
	require.Equal(t, []string{"s k0 0 1", "s k1 0 2"}, strs(ctx, t, s,
		`SELECT concat_ws(' ', namespace, seq_key, head_pos, waiting) FROM job_sequence_status ORDER BY seq_key`))
}

// TestSequencedRowsThatCannotBe: a sequenced row with River's unique options
// or asking to be pending is dead, with the reason; a sequence key too long
// too.
func TestSequencedRowsThatCannotBe(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)
	rl := seqRelay(t, s, relay.Config{})
	_, err := s.Pool.Exec(ctx, `INSERT INTO outbox_jobs (kind, args, options) VALUES
		('relaytest.n', '{"n": 1}', '{"unique": {"by_args": true}}'),
		('relaytest.n', '{"n": 3}', '{"pending": true}'),
		('relaytest.n', '{"n": 5}', NULL),
		('relaytest.n', '{"n": -1}', '{"pending": true}')`)
	require.NoError(t, err)
	res, err := rl.Drain(ctx)
	require.NoError(t, err)
	require.Equal(t, 2, res.Dead)
	require.Equal(t, []string{
		"1 a job of a sequence can be neither unique nor inserted pending",
		"3 a job of a sequence can be neither unique nor inserted pending",
	}, strs(ctx, t, s, `SELECT concat_ws(' ', args->>'n', reason) FROM outbox_dead_jobs ORDER BY id`))
	require.Equal(t, []string{"-1:pending", "5:available"}, seqStates(ctx, t, s))
}

// TestStripesSpreadSteppedIDs: outbox ids that come in steps (transactions
// writing two or four rows each) still reach every stripe, about evenly.
func TestStripesSpreadSteppedIDs(t *testing.T) {
	t.Parallel()
	for _, step := range []int64{1, 2, 4, 10} {
		for _, n := range []int{2, 4, 20} {
			counts := make([]int, n)
			for i := range int64(1000 * n) {
				counts[relay.StripeOf(1+i*step, n)]++
			}
			for s, c := range counts {
				require.InDelta(t, 1000, c, 300, "step %d, %d stripes: stripe %d got %d of %d", step, n, s, c, 1000*n)
			}
		}
	}
}
