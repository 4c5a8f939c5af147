package jobstats_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs/jobstats"
)

// A session that holds a snapshot open longer than HoldbackMin is listed,
// with its application, user, state and age; the job tables' dead tuples
// come with it. A shorter one is not listed.
func TestCollectVacuum(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)

	app := "report-" + s.Name
	_, pid := s.HoldSnapshot(ctx, t, app, nil)
	time.Sleep(1200 * time.Millisecond)

	mine := func(r *jobstats.Report) *jobstats.VacuumHolder {
		for i, h := range r.Vacuum.Holders {
			if h.PID == pid {
				return &r.Vacuum.Holders[i]
			}
		}
		return nil
	}
	r, err := jobstats.Collect(ctx, s.Pool, &jobstats.Opts{HoldbackMin: time.Second, FlowRows: 1000})
	require.NoError(t, err)
	h := mine(r)
	require.NotNil(t, h, "the session holding a snapshot for 1.2 s is listed: %+v", r.Vacuum.Holders)
	require.Equal(t, "session", h.Holder)
	require.Equal(t, app, h.Application)
	require.Equal(t, "postgres", h.User)
	require.Equal(t, "idle in transaction", h.State)
	require.GreaterOrEqual(t, h.XminAge, int64(0)) // 0 while no transaction took an id since
	require.GreaterOrEqual(t, h.HeldFor, 1200*time.Millisecond)
	require.Equal(t, "SELECT pg_backend_pid()", h.Query)

	tables := map[string]bool{}
	for _, th := range r.Vacuum.Tables {
		tables[th.Table] = true
	}
	for _, table := range []string{"river_job", "outbox_jobs", "outbox_events", "job_locks"} {
		require.True(t, tables[table], "dead tuples of %s", table)
	}

	r, err = jobstats.Collect(ctx, s.Pool, &jobstats.Opts{HoldbackMin: time.Hour, FlowRows: 1000})
	require.NoError(t, err)
	require.Nil(t, mine(r), "open for less than HoldbackMin: not listed")
}

// The server setting README recommends for the app's role ends a
// forgotten transaction, and the hold on vacuum with it:
// idle_in_transaction_session_timeout (here 500 ms, as ALTER ROLE app SET
// … would give every session of the role) terminates the session, which
// leaves db_vacuum_holdback.
func TestIdleInTransactionTimeoutEndsTheHoldback(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)

	tx, _ := s.HoldSnapshot(ctx, t, "forgotten-"+s.Name, map[string]string{"idle_in_transaction_session_timeout": "500ms"})
	listed := func() int {
		var n int
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FROM db_vacuum_holdback WHERE application_name = $1`, "forgotten-"+s.Name).Scan(&n))
		return n
	}
	require.Equal(t, 1, listed(), "the open transaction holds back vacuum")
	require.Eventually(t, func() bool { return listed() == 0 }, 10*time.Second, 50*time.Millisecond, "the server ended it")
	_, err := tx.Exec(ctx, `SELECT 1`)
	require.Error(t, err, "the session is gone: its next statement fails")
}
