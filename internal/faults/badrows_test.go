package faults_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/app"
	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
)

// TestBadJobRows inserts job rows by hand that no worker can run — args of
// the wrong shape, of the wrong types, a kind no process knows — next to
// good jobs and a job with a megabyte of args, into a running worker's
// queues. Each bad job is retried on River's schedule, then discarded with
// an error that names the problem, visible in failing_jobs; the worker
// keeps running and every other job completes.
func TestBadJobRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 8})

	client, err := jobs.NewClient(s.Pool, app.Registry(s.Pool), &jobs.ClientConfig{
		Schema: s.Name,
		Logger: slog.New(slog.DiscardHandler),
		River: &river.Config{
			// Retry the first failure at once, so the test sees the whole
			// retry-then-discard path in seconds.
			RetryPolicy: immediateRetry{},
		},
	})
	require.NoError(t, err)
	require.NoError(t, client.Start(ctx))
	defer func() {
		stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		require.NoError(t, client.Stop(stopCtx))
	}()

	bad := []struct {
		name, kind, args string
		wantErr          string // a substring of the recorded error
	}{
		{"args_not_an_object", jobs.PingKind, `"ping"`, "cannot unmarshal string"},
		{"wrong_type", jobs.PingKind, `{"ping_id": "seven"}`, "cannot unmarshal string"},
		{"unknown_kind", "nobody.knows_this_kind", `{"id": 1}`, "nobody.knows_this_kind"},
	}
	var pingID int64
	require.NoError(t, s.Pool.QueryRow(ctx, `INSERT INTO pings (note) VALUES ('good') RETURNING id`).Scan(&pingID))

	// A megabyte of args the ping decoder ignores (an unknown field) for a
	// row that does not exist: decoded, worked as a no-op, completed.
	var hugeID int64
	require.NoError(t, s.Pool.QueryRow(ctx, `
INSERT INTO river_job (args, kind, max_attempts, priority, queue, state, scheduled_at)
VALUES ($1::jsonb, $2, 2, 1, 'default', 'available', now()) RETURNING id`,
		`{"ping_id": 999999999, "pad": "`+strings.Repeat("x", 1<<20)+`"}`, jobs.PingKind).Scan(&hugeID))

	badIDs := map[string]int64{}
	for _, b := range bad {
		var id int64
		require.NoError(t, s.Pool.QueryRow(ctx, `
INSERT INTO river_job (args, kind, max_attempts, priority, queue, state, scheduled_at)
VALUES ($1::jsonb, $2, 2, 1, 'default', 'available', now()) RETURNING id`, b.args, b.kind).Scan(&id), b.name)
		badIDs[b.name] = id
	}
	// Good jobs before and after, in the same queue.
	good, err := client.InsertMany(ctx, []river.InsertManyParams{
		{Args: jobs.PingArgs{PingID: pingID}}, {Args: jobs.PingArgs{}}, {Args: jobs.PingArgs{}},
	})
	require.NoError(t, err)

	require.Eventually(t, func() bool {
		var left int
		err := s.Pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE state NOT IN ('completed', 'discarded', 'cancelled') AND kind <> $1`,
			jobs.PruneEventsKind).Scan(&left)
		return err == nil && left == 0
	}, 60*time.Second, 50*time.Millisecond, "every job reached a final state")

	for _, id := range append([]int64{hugeID}, good[0].Job.ID, good[1].Job.ID, good[2].Job.ID) {
		var state string
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT state FROM river_job WHERE id = $1`, id).Scan(&state))
		require.Equal(t, "completed", state, "job %d", id)
	}
	var pinged int
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT ping_count FROM pings WHERE id = $1`, pingID).Scan(&pinged))
	require.Equal(t, 1, pinged, "the good job did its work once")

	for _, b := range bad {
		var (
			state   string
			attempt int
			errs    []string
		)
		require.NoError(t, s.Pool.QueryRow(ctx, `
SELECT state, attempt, array(SELECT e->>'error' FROM unnest(errors) e) FROM river_job WHERE id = $1`, badIDs[b.name]).
			Scan(&state, &attempt, &errs), b.name)
		require.Equal(t, "discarded", state, b.name)
		require.Equal(t, 2, attempt, "%s: retried once, then discarded", b.name)
		require.Len(t, errs, 2, b.name)
		for _, e := range errs {
			require.Contains(t, e, b.wantErr, b.name)
		}
	}

	// failing_jobs shows the last error of each failing kind.
	rows, err := s.Pool.Query(ctx, `SELECT kind, state::text, error FROM failing_jobs ORDER BY kind`)
	require.NoError(t, err)
	type failing struct{ Kind, State, Error string }
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[failing])
	require.NoError(t, err)
	require.Len(t, got, 2, "the ping kind and the unknown kind")
	require.Equal(t, jobs.PingKind, got[0].Kind)
	require.Equal(t, "nobody.knows_this_kind", got[1].Kind)
	require.Equal(t, "discarded", got[1].State)
	require.Contains(t, got[1].Error, "nobody.knows_this_kind")
}

// immediateRetry retries a failed job at once.
type immediateRetry struct{}

func (immediateRetry) NextRetry(*rivertype.JobRow) time.Time { return time.Now() }
