package riverseam_test

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivershared/uniquestates"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/riverseam"
	"github.com/aftercommit/aftercommit/internal/riversql"
)

func TestMain(m *testing.M) { dbtest.WrapTestMain(m) }

type canaryArgs struct {
	N int `json:"n"`
}

func (canaryArgs) Kind() string { return "canary" }

// riverVersion is the version of River in go.mod.
func riverVersion() string { return riversql.RiverVersion() }

// recordingTx is a real transaction that notes the first line of every
// statement River sends through it.
type recordingTx struct {
	pgx.Tx
	stmts []string
}

func (r *recordingTx) note(sql string) {
	first, _, _ := strings.Cut(sql, "\n")
	r.stmts = append(r.stmts, first)
}

func (r *recordingTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	r.note(sql)
	return r.Tx.Exec(ctx, sql, args...)
}

func (r *recordingTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	r.note(sql)
	return r.Tx.Query(ctx, sql, args...)
}

func (r *recordingTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	r.note(sql)
	return r.Tx.QueryRow(ctx, sql, args...)
}

func (r *recordingTx) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	r.stmts = append(r.stmts, "COPY "+table.Sanitize())
	return r.Tx.CopyFrom(ctx, table, columns, src)
}

// TestCanaryInsertStatements: River's InsertManyTx sends only the
// statements outbox's pipelined commit knows by name, and among them its
// insert and its notification.
func TestCanaryInsertStatements(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)
	client, err := river.NewClient(riverpgxv5.New(s.Pool), &river.Config{Schema: s.Name, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)

	tx, err := s.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	rec := &recordingTx{Tx: tx}
	_, err = client.InsertManyTx(ctx, rec, []river.InsertManyParams{{Args: canaryArgs{N: 1}}, {Args: canaryArgs{N: 2}}})
	require.NoError(t, err)

	known := []string{riverseam.InsertFastManyPrefix, riverseam.NotifyManyPrefix, riverseam.ProductVersionPrefix}
	for _, stmt := range rec.stmts {
		if !slices.ContainsFunc(known, func(p string) bool { return strings.HasPrefix(stmt+" ", p) }) {
			t.Errorf("River %s changed its insert path: InsertManyTx sent %q, a statement outbox's pipelined commit does not know (internal/riverseam, outbox/pipeline.go). Every InTx now takes two round trips instead of one: teach the recorder the new statement.", riverVersion(), stmt)
		}
	}
	for _, want := range []string{riverseam.InsertFastManyPrefix, riverseam.NotifyManyPrefix} {
		if !slices.ContainsFunc(rec.stmts, func(stmt string) bool { return strings.HasPrefix(stmt+" ", want) }) {
			t.Errorf("River %s no longer sends %q on InsertManyTx (it sent %q): internal/riverseam names a statement River dropped or renamed.", riverVersion(), strings.TrimSpace(want), rec.stmts)
		}
	}
}

// uniqueStateBits is the bit of each job state in River's unique_states, as
// the queue lock was written against.
var uniqueStateBits = map[rivertype.JobState]byte{
	rivertype.JobStateAvailable: 1 << 0,
	rivertype.JobStateCancelled: 1 << 1,
	rivertype.JobStateCompleted: 1 << 2,
	rivertype.JobStateDiscarded: 1 << 3,
	rivertype.JobStatePending:   1 << 4,
	rivertype.JobStateRetryable: 1 << 5,
	rivertype.JobStateRunning:   1 << 6,
	rivertype.JobStateScheduled: 1 << 7,
}

// uniqueMiddleware gives every job it inserts its key and states, as the
// queue lock's insert middleware does.
type uniqueMiddleware struct {
	river.MiddlewareDefaults
	key    string
	states byte
}

func (m *uniqueMiddleware) InsertMany(ctx context.Context, params []*rivertype.JobInsertParams, doInner func(context.Context) ([]*rivertype.JobInsertResult, error)) ([]*rivertype.JobInsertResult, error) {
	for _, p := range params {
		p.UniqueKey, p.UniqueStates = []byte(m.key), m.states
	}
	return doInner(ctx)
}

// TestCanaryUniqueStates: the states River knows and their bits in
// unique_states, in Go and in SQL, are the ones the queue lock was written
// against.
func TestCanaryUniqueStates(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)

	states := rivertype.JobStates()
	if len(states) != len(uniqueStateBits) {
		t.Errorf("River %s has %d job states %v, the queue lock knows %d: check jobs/queuelock.go's queueLockStates and the views' state lists.", riverVersion(), len(states), states, len(uniqueStateBits))
	}
	var sqlStates []string
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT array_agg(e::text ORDER BY e::text) FROM unnest(enum_range(NULL::river_job_state)) AS e`).Scan(&sqlStates))
	goStates := make([]string, len(states))
	for i, st := range states {
		goStates[i] = string(st)
	}
	slices.Sort(goStates)
	require.Equal(t, goStates, sqlStates, "River %s: the states of river_job_state in SQL differ from rivertype.JobStates()", riverVersion())

	mw := &uniqueMiddleware{key: "canary"}
	client, err := river.NewClient(riverpgxv5.New(s.Pool), &river.Config{Schema: s.Name, Logger: slog.New(slog.DiscardHandler), Middleware: []rivertype.Middleware{mw}})
	require.NoError(t, err)
	for i, st := range states {
		bit, known := uniqueStateBits[st]
		if !known {
			t.Errorf("River %s has a job state %q the queue lock does not know.", riverVersion(), st)
			continue
		}
		if got := uniquestates.UniqueStatesToBitmask([]rivertype.JobState{st}); got != bit {
			t.Errorf("River %s moved state %q in unique_states from bit %08b to %08b: the queue lock's states (jobs/queuelock.go) would mean other states.", riverVersion(), st, bit, got)
			continue
		}
		// In SQL: a job whose unique_states hold this state alone is in
		// the bitmask for that state and no other.
		mw.key, mw.states = fmt.Sprintf("canary-%d", i), bit
		res, err := client.Insert(ctx, canaryArgs{N: i}, nil)
		require.NoError(t, err)
		var in []string
		require.NoError(t, s.Pool.QueryRow(ctx, `
SELECT coalesce(array_agg(e::text ORDER BY e::text) FILTER (WHERE river_job_state_in_bitmask(j.unique_states, e)), '{}')
  FROM river_job AS j, unnest(enum_range(NULL::river_job_state)) AS e
 WHERE j.id = $1`, res.Job.ID).Scan(&in))
		if !slices.Equal(in, []string{string(st)}) {
			t.Errorf("River %s: SQL's river_job_state_in_bitmask reads the unique_states written for %q as %v: the bit layout of Go and SQL disagree, and the queue lock's index would match the wrong jobs.", riverVersion(), st, in)
		}
	}
}

// TestCanaryUniqueIndex: River's insert matches a waiting job by its
// unique key and states (INSERT … ON CONFLICT on the partial unique
// index), and a job whose key was cleared by an UPDATE, as the queue lock
// clears it when the job starts, no longer matches.
func TestCanaryUniqueIndex(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, nil)

	var def string
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT pg_get_indexdef('river_job_unique_idx'::regclass)`).Scan(&def))
	def = strings.ReplaceAll(def, pgx.Identifier{s.Name}.Sanitize()+".", "")
	def = strings.ReplaceAll(def, s.Name+".", "")
	const wantDef = `CREATE UNIQUE INDEX river_job_unique_idx ON river_job USING btree (unique_key) WHERE ((unique_key IS NOT NULL) AND (unique_states IS NOT NULL) AND river_job_state_in_bitmask(unique_states, state))`
	if def != wantDef {
		t.Errorf("River %s changed the unique index the queue lock relies on:\n got %s\nwant %s", riverVersion(), def, wantDef)
	}

	waiting := uniquestates.UniqueStatesToBitmask([]rivertype.JobState{
		rivertype.JobStateAvailable, rivertype.JobStatePending, rivertype.JobStateRetryable,
		rivertype.JobStateRunning, rivertype.JobStateScheduled,
	})
	mw := &uniqueMiddleware{key: "canary-lock", states: waiting}
	client, err := river.NewClient(riverpgxv5.New(s.Pool), &river.Config{Schema: s.Name, Logger: slog.New(slog.DiscardHandler), Middleware: []rivertype.Middleware{mw}})
	require.NoError(t, err)
	first, err := client.Insert(ctx, canaryArgs{N: 1}, nil)
	require.NoError(t, err)
	second, err := client.Insert(ctx, canaryArgs{N: 2}, nil)
	require.NoError(t, err)
	if !second.UniqueSkippedAsDuplicate || second.Job.ID != first.Job.ID {
		t.Errorf("River %s no longer matches a waiting job by unique_key and unique_states set through insert middleware (second insert: job %d, skipped %v; first job %d): queue locks would let two jobs wait.", riverVersion(), second.Job.ID, second.UniqueSkippedAsDuplicate, first.Job.ID)
	}
	_, err = s.Pool.Exec(ctx, `UPDATE river_job SET unique_key = NULL, unique_states = NULL WHERE id = $1`, first.Job.ID)
	require.NoError(t, err, "River %s: the queue lock's UPDATE of unique_key and unique_states fails", riverVersion())
	third, err := client.Insert(ctx, canaryArgs{N: 3}, nil)
	require.NoError(t, err)
	if third.UniqueSkippedAsDuplicate || third.Job.ID == first.Job.ID {
		t.Errorf("River %s still matches a job whose unique_key was cleared: a started job would keep its queue lock.", riverVersion())
	}
	var jobs int
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FROM river_job`).Scan(&jobs))
	require.Equal(t, 2, jobs)
}

// TestCanaryWake: a job made available for a moment from now is fetched as
// soon as WakeSQL names its queue, though the client polls only every 10 s.
func TestCanaryWake(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 4})
	workers := river.NewWorkers()
	ran := make(chan struct{}, 1)
	river.AddWorker(workers, river.WorkFunc(func(context.Context, *river.Job[canaryArgs]) error {
		ran <- struct{}{}
		return nil
	}))
	client, err := river.NewClient(riverpgxv5.New(s.Pool), &river.Config{
		Schema: s.Name, Logger: slog.New(slog.DiscardHandler), Workers: workers,
		Queues:            map[string]river.QueueConfig{"wake": {MaxWorkers: 1}},
		FetchPollInterval: 10 * time.Second,
	})
	require.NoError(t, err)
	require.NoError(t, client.Start(ctx))
	t.Cleanup(func() { require.NoError(t, client.Stop(context.WithoutCancel(ctx))) })

	// Available, but not before 300 ms from now: no fetch until then, and
	// the next poll comes 10 s after the client started.
	res, err := client.Insert(ctx, canaryArgs{N: 1}, &river.InsertOpts{Queue: "wake", Pending: true})
	require.NoError(t, err)
	_, err = s.Pool.Exec(ctx, `UPDATE river_job SET state = 'available', scheduled_at = now() + interval '300 ms' WHERE id = $1`, res.Job.ID)
	require.NoError(t, err)
	time.Sleep(400 * time.Millisecond)
	_, err = s.Pool.Exec(ctx, riverseam.WakeSQL, s.Name, "wake")
	require.NoError(t, err)
	select {
	case <-ran:
	case <-time.After(5 * time.Second):
		t.Fatalf("River %s no longer fetches on the insert notification riverseam.WakeSQL sends (topic %q, payload {\"queue\": …}): rate-limited jobs (jobs/ratelimit.go) now wait for the next poll after their slot. Match River's producer again.", riverVersion(), riverseam.InsertTopic)
	}
}
