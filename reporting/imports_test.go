package reporting_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/reporting"
)

// TestImportCarUsers: 2,500 users (with duplicates) imported into a car by
// pages of 1,000 — three bulk jobs in one job batch, run by a working
// client with their relay — add every user once; the import's callback
// enqueues the car's report once (the jobs none) and publishes one
// import.finished with the counts. A second import of the same users
// creates nothing, enqueues no report and says so. Bad input is refused
// before any SQL.
func TestImportCarUsers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(ctx, t, &setupOpts{work: true, outboxTable: true, maxConns: 10})
	car := b.car(ctx, t, "Import car")
	users := b.users(ctx, t, 2500)

	imp, err := b.svc.ImportCarUsers(ctx, car, append(users, users[:100]...), 1000)
	require.NoError(t, err)
	require.Equal(t, 3, imp.Jobs)
	require.Equal(t, 2500, imp.Distinct)
	b.waitDrained(ctx, t)

	require.Equal(t, 2500, b.count(ctx, t, `SELECT count(*) FROM car_users WHERE car_id = $1`, car))
	require.Equal(t, 3, b.count(ctx, t, `SELECT count(*) FROM river_job WHERE kind = $1 AND state = 'completed'`, reporting.CreateCarUsersInBulkKind))
	require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM river_job WHERE kind = $1`, reporting.CarReportKind), "one report for the import")
	events := b.strings(ctx, t, `SELECT payload::text FROM outbox_events WHERE topic = $1 ORDER BY id`, reporting.TopicImportFinished)
	require.Len(t, events, 1)
	var ev reporting.ImportFinishedEvent
	require.NoError(t, json.Unmarshal([]byte(events[0]), &ev))
	require.Equal(t, reporting.ImportFinishedEvent{ImportID: imp.ID, CarID: car, Jobs: 3, Completed: 3, Inserted: 2500, ReportEnqueued: true}, ev)
	require.Equal(t, []string{"succeeded"}, b.strings(ctx, t, `SELECT state FROM job_batch_status WHERE id = $1::uuid`, imp.ID))

	again, err := b.svc.ImportCarUsers(ctx, car, users, 0)
	require.NoError(t, err)
	require.Equal(t, 1, again.Jobs)
	b.waitDrained(ctx, t)
	events = b.strings(ctx, t, `SELECT payload::text FROM outbox_events WHERE topic = $1 ORDER BY id`, reporting.TopicImportFinished)
	require.Len(t, events, 2)
	require.NoError(t, json.Unmarshal([]byte(events[1]), &ev))
	require.Equal(t, reporting.ImportFinishedEvent{ImportID: again.ID, CarID: car, Jobs: 1, Completed: 1}, ev)
	require.Equal(t, 1, b.count(ctx, t, `SELECT count(*) FROM river_job WHERE kind = $1`, reporting.CarReportKind), "nothing new: no report")

	for _, bad := range []struct {
		car   int64
		users []int64
	}{{0, users[:1]}, {car, nil}, {car, []int64{5, -1}}} {
		_, err := b.svc.ImportCarUsers(ctx, bad.car, bad.users, 0)
		var verr *reporting.ValidationError
		require.True(t, errors.As(err, &verr), "%v", err)
		require.ErrorIs(t, err, reporting.ErrInvalidInput)
	}
}
