package reporting_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/reporting"
)

// TestWritesInTheCallersTx checks the …Tx twins: cars, car users and the
// jobs that follow them commit and roll back with the caller's transaction.
func TestWritesInTheCallersTx(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	for _, commit := range []bool{false, true} {
		name := "RolledBack"
		if commit {
			name = "Committed"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			// The outbox table: the bulk job is in its car's fair share.
			b := setup(ctx, t, &setupOpts{outboxTable: true})
			users := b.users(ctx, t, 4)

			tx, err := b.schema.Pool.Begin(ctx)
			require.NoError(t, err)
			t.Cleanup(func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }) // after a failure
			car, err := b.svc.CreateCarTx(ctx, tx, "Roadster")
			require.NoError(t, err)
			res, err := b.svc.CreateCarUsersInBulkTx(ctx, tx, car, users[:2])
			require.NoError(t, err)
			require.Equal(t, 2, res.Inserted)
			added, err := b.svc.AddCarUserTx(ctx, tx, car, users[2])
			require.NoError(t, err)
			require.True(t, added)
			require.NoError(t, b.svc.EnqueueCarUsersInBulkTx(ctx, tx, car, users[3:]))
			// A bad input is refused before any SQL: tx goes on.
			_, err = b.svc.AddCarUserTx(ctx, tx, car, 0)
			require.ErrorIs(t, err, reporting.ErrInvalidInput)
			require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM cars`), "nothing visible before the caller commits")

			if !commit {
				require.NoError(t, tx.Rollback(ctx))
				b.drain(ctx, t)
				for _, table := range []string{"cars", "car_users", "outbox_jobs", "river_job"} {
					require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM `+table), table)
				}
				return
			}
			require.NoError(t, tx.Commit(ctx))
			require.Equal(t, 3, b.count(ctx, t, `SELECT count(*) FROM car_users WHERE car_id = $1`, car))
			// One report job (the relay matched the second to the first:
			// CarReport is queue-locked per car) and the bulk job, of this car.
			b.drain(ctx, t)
			require.Equal(t, []string{reporting.CarReportKind, reporting.CreateCarUsersInBulkKind},
				b.strings(ctx, t, `SELECT kind FROM river_job WHERE (args->>'car_id')::bigint = $1 ORDER BY kind`, car))
		})
	}
}
