package relay_test

import (
	"context"
	"testing"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/outbox"
	"github.com/aftercommit/aftercommit/outbox/relay"
)

type smokeArgs struct {
	N int `json:"n"`
}

func (smokeArgs) Kind() string { return "test.smoke" }

func TestSmoke(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)
	client, err := river.NewClient(riverpgxv5.New(s.Pool), &river.Config{Schema: s.Name})
	require.NoError(t, err)
	ob, err := outbox.New(s.Pool, client, nil)
	require.NoError(t, err)
	res, err := ob.InTxResult(ctx, func(ctx context.Context, tx *outbox.Tx) error {
		for i := range 3 {
			if err := tx.Enqueue(smokeArgs{N: i}, nil); err != nil {
				return err
			}
		}
		return tx.Enqueue(smokeArgs{N: 9}, &river.InsertOpts{Priority: 2, Queue: "other", Tags: []string{"abc"}})
	})
	require.NoError(t, err)
	require.Equal(t, 4, res.Inserted)
	var outboxRows, jobs int
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM outbox_jobs), (SELECT count(*) FROM river_job)`).Scan(&outboxRows, &jobs))
	require.Equal(t, [2]int{4, 0}, [2]int{outboxRows, jobs})

	rl, err := relay.New(s.Pool, client, &relay.Config{Schema: s.Name})
	require.NoError(t, err)
	moved, err := rl.Drain(ctx)
	require.NoError(t, err)
	require.Equal(t, 4, moved.Rows)
	require.Equal(t, 4, moved.Inserted)
	var got []string
	rows, err := s.Pool.Query(ctx, `SELECT format('%s %s %s %s %s', kind, args::text, queue, priority, tags) FROM river_job ORDER BY id`)
	require.NoError(t, err)
	for rows.Next() {
		var x string
		require.NoError(t, rows.Scan(&x))
		got = append(got, x)
	}
	require.Equal(t, []string{
		`test.smoke {"n": 0} default 1 {}`, `test.smoke {"n": 1} default 1 {}`, `test.smoke {"n": 2} default 1 {}`,
		`test.smoke {"n": 9} other 2 {abc}`,
	}, got)
}
