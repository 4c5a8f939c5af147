package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
)

var update = flag.Bool("update", false, "rewrite the golden files of testdata/")

// requireGolden compares got with testdata/name, or rewrites it with -update.
func requireGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		require.NoError(t, os.MkdirAll("testdata", 0o755))
		require.NoError(t, os.WriteFile(path, []byte(got), 0o644))
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "run the test with -update to create %s", path)
	require.Equal(t, string(want), got)
}

type jobsBundle struct {
	schema *dbtest.Schema
	flags  []string
}

// jobsT0 is the creation time of the fixture's jobs.
var jobsT0 = time.Date(2026, 11, 26, 9, 30, 0, 0, time.UTC)

// setupJobs inserts four jobs with fixed IDs and timestamps:
//
//  1. test.ping, default, completed (attempt 1 of 25)
//  2. test.alpha, q1, retryable, two errors (attempt 2 of 25)
//  3. test.beta, q2, available
//  4. test.alpha, q1, discarded, one error (attempt 1 of 1)
func setupJobs(ctx context.Context, t *testing.T) *jobsBundle {
	t.Helper()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
	_, err := s.Pool.Exec(ctx, `
INSERT INTO river_job (id, args, kind, queue, state, attempt, max_attempts, priority, created_at, scheduled_at,
                       attempted_at, finalized_at, attempted_by, errors, metadata, tags)
VALUES
 (1, '{"ping_id": 1}', 'test.ping', 'default', 'completed', 1, 25, 1, $1::timestamptz, $1::timestamptz,
  $1::timestamptz + interval '1 second', $1::timestamptz + interval '2 seconds', '{host-a}', NULL, '{"output": {"ok": true}}', '{}'),
 (2, '{"id": 7}', 'test.alpha', 'q1', 'retryable', 2, 25, 2, $1::timestamptz + interval '1 minute', $1::timestamptz + interval '10 minutes',
  $1::timestamptz + interval '2 minutes', NULL, '{host-a,host-b}',
  ARRAY['{"at": "2026-11-26T09:31:00Z", "attempt": 1, "error": "boom:\nsecond line", "trace": ""}',
        '{"at": "2026-11-26T09:32:00Z", "attempt": 2, "error": "kaput", "trace": ""}']::jsonb[],
  '{}', '{urgent}'),
 (3, '{"id": 8}', 'test.beta', 'q2', 'available', 0, 25, 1, $1::timestamptz + interval '2 minutes', $1::timestamptz + interval '2 minutes',
  NULL, NULL, NULL, NULL, '{}', '{}'),
 (4, '{"id": 9}', 'test.alpha', 'q1', 'discarded', 1, 1, 1, $1::timestamptz + interval '3 minutes', $1::timestamptz + interval '3 minutes',
  $1::timestamptz + interval '3 minutes', $1::timestamptz + interval '4 minutes', '{host-b}',
  ARRAY['{"at": "2026-11-26T09:34:00Z", "attempt": 1, "error": "invalid input", "trace": ""}']::jsonb[],
  '{}', '{}')`, jobsT0)
	require.NoError(t, err)
	return &jobsBundle{schema: s, flags: []string{"--database-url", s.URL, "--schema", s.Name}}
}

// setupOutbox adds to setupJobs' jobs three outbox rows (ids 1..3, written
// at jobsT0 + 1, 0 and 2 minutes; row 2 names queue q1 and priority 3) and
// three dead rows (ids 7..9, dead at jobsT0 + 5, 7 and 6 minutes).
func setupOutbox(ctx context.Context, t *testing.T) *jobsBundle {
	t.Helper()
	b := setupJobs(ctx, t)
	_, err := b.schema.Pool.Exec(ctx, `
INSERT INTO outbox_jobs (id, kind, args, queue, priority, created_at) OVERRIDING SYSTEM VALUE
VALUES (1, 'test.alpha', '{"id": 10}', NULL, NULL, $1::timestamptz + interval '1 minute'),
       (2, 'test.beta', '{"id": 11, "note": "a long note that the table cuts short"}', 'q1', 3, $1::timestamptz),
       (3, 'test.alpha', '{"id": 12}', NULL, NULL, $1::timestamptz + interval '2 minutes')`, jobsT0)
	require.NoError(t, err)
	_, err = b.schema.Pool.Exec(ctx, `
INSERT INTO outbox_dead_jobs (id, kind, args, queue, tx_id, created_at, dead_at, reason)
VALUES (7, 'test.nope', '{}', NULL, pg_current_xact_id(), $1::timestamptz, $1::timestamptz + interval '5 minutes',
        'unknown kind "test.nope"'),
       (8, 'test.alpha', '{"id": "x"}', 'q1', pg_current_xact_id(), $1::timestamptz, $1::timestamptz + interval '7 minutes',
        E'args do not decode:\njson: cannot unmarshal string into Go struct field .id of type int64'),
       (9, 'test.alpha', '{"id": 0}', NULL, pg_current_xact_id(), $1::timestamptz, $1::timestamptz + interval '6 minutes',
        'too large')`, jobsT0)
	require.NoError(t, err)
	return b
}

// outboxAges matches the AGE column of jobs list --outbox, which depends
// on the clock.
var outboxAges = regexp.MustCompile(`(?m)  \d+h\d+m\d+s$`)

func (b *jobsBundle) run(ctx context.Context, t *testing.T, args ...string) cliResult {
	t.Helper()
	environ := map[string]string{"DATABASE_URL": "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable"}
	return runCLI(ctx, t, environ, append(append([]string{"jobs"}, args...), b.flags...)...)
}

func (b *jobsBundle) state(ctx context.Context, t *testing.T, id int64) string {
	t.Helper()
	var st string
	require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT state::text FROM river_job WHERE id = $1`, id).Scan(&st))
	return st
}

func TestJobs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("ListTable", func(t *testing.T) {
		t.Parallel()
		b := setupJobs(ctx, t)
		res := b.run(ctx, t, "list")
		require.Equal(t, exitOK, res.code, res.stderr)
		require.Empty(t, res.stderr)
		requireGolden(t, "jobs_list.golden", res.stdout)
	})

	t.Run("ListFilters", func(t *testing.T) {
		t.Parallel()
		b := setupJobs(ctx, t)
		res := b.run(ctx, t, "list", "--state", "retryable,discarded,completed", "--kind", "test.alpha", "--queue", "q1", "--json")
		require.Equal(t, exitOK, res.code, res.stderr)
		var got []jobView
		require.NoError(t, json.Unmarshal([]byte(res.stdout), &got))
		require.Len(t, got, 2)
		require.Equal(t, []int64{4, 2}, []int64{got[0].ID, got[1].ID}, "newest first")

		j := got[1]
		require.Equal(t, "test.alpha", j.Kind)
		require.Equal(t, "q1", j.Queue)
		require.EqualValues(t, "retryable", j.State)
		require.Equal(t, 2, j.Attempt)
		require.Equal(t, 2, j.Priority)
		require.Equal(t, jobsT0.Add(10*time.Minute), j.ScheduledAt)
		require.Nil(t, j.FinalizedAt)
		require.Equal(t, []string{"host-a", "host-b"}, j.AttemptedBy)
		require.Equal(t, []string{"urgent"}, j.Tags)
		require.JSONEq(t, `{"id": 7}`, string(j.Args))
		require.Equal(t, []attemptErrorView{
			{At: time.Date(2026, 11, 26, 9, 31, 0, 0, time.UTC), Attempt: 1, Error: "boom:\nsecond line"},
			{At: time.Date(2026, 11, 26, 9, 32, 0, 0, time.UTC), Attempt: 2, Error: "kaput"},
		}, j.Errors)

		res = b.run(ctx, t, "list", "--queue", "q2", "--json")
		require.Equal(t, exitOK, res.code, res.stderr)
		require.NoError(t, json.Unmarshal([]byte(res.stdout), &got))
		require.Len(t, got, 1)
		require.Equal(t, int64(3), got[0].ID)
		require.Equal(t, []attemptErrorView{}, got[0].Errors)
	})

	t.Run("ListLimitSaysThereIsMore", func(t *testing.T) {
		t.Parallel()
		b := setupJobs(ctx, t)
		res := b.run(ctx, t, "list", "--limit", "2", "--json")
		require.Equal(t, exitOK, res.code, res.stderr)
		var got []jobView
		require.NoError(t, json.Unmarshal([]byte(res.stdout), &got))
		require.Equal(t, []int64{4, 3}, []int64{got[0].ID, got[1].ID})
		require.Equal(t, "aftercommit jobs list: showing the newest 2; raise --limit or narrow the filters for more\n", res.stderr)
	})

	t.Run("ShowTable", func(t *testing.T) {
		t.Parallel()
		b := setupJobs(ctx, t)
		res := b.run(ctx, t, "show", "2")
		require.Equal(t, exitOK, res.code, res.stderr)
		requireGolden(t, "jobs_show.golden", res.stdout)

		res = b.run(ctx, t, "show", "1", "--json")
		require.Equal(t, exitOK, res.code, res.stderr)
		var got jobView
		require.NoError(t, json.Unmarshal([]byte(res.stdout), &got))
		require.Equal(t, int64(1), got.ID)
		require.EqualValues(t, "completed", got.State)
		require.Equal(t, jobsT0.Add(2*time.Second), *got.FinalizedAt)
		require.JSONEq(t, `{"output": {"ok": true}}`, string(got.Metadata))
	})

	t.Run("ShowUnknownJob", func(t *testing.T) {
		t.Parallel()
		b := setupJobs(ctx, t)
		res := b.run(ctx, t, "show", "999999")
		require.Equal(t, exitFailure, res.code)
		require.Empty(t, res.stdout)
		require.Equal(t, "aftercommit jobs show: no job 999999\n", res.stderr)
	})

	t.Run("Retry", func(t *testing.T) {
		t.Parallel()
		b := setupJobs(ctx, t)
		res := b.run(ctx, t, "retry", "4")
		require.Equal(t, exitOK, res.code, res.stderr)
		require.Equal(t, "job 4: discarded → available\n", res.stdout)
		require.Equal(t, "available", b.state(ctx, t, 4))
		require.Equal(t, 2, countRows(ctx, t, b.schema, `SELECT max_attempts FROM river_job WHERE id = 4`), "one more attempt")

		_, err := b.schema.Pool.Exec(ctx, `UPDATE river_job SET state = 'running', attempted_at = now() WHERE id = 3`)
		require.NoError(t, err)
		res = b.run(ctx, t, "retry", "3")
		require.Equal(t, exitFailure, res.code)
		require.Equal(t, "aftercommit jobs retry: job 3 is running; cancel it first or wait for it to end\n", res.stderr)
		require.Equal(t, "running", b.state(ctx, t, 3))
	})

	t.Run("Cancel", func(t *testing.T) {
		t.Parallel()
		b := setupJobs(ctx, t)
		res := b.run(ctx, t, "cancel", "3")
		require.Equal(t, exitOK, res.code, res.stderr)
		require.Equal(t, "job 3: available → cancelled\n", res.stdout)
		require.Equal(t, "cancelled", b.state(ctx, t, 3))

		res = b.run(ctx, t, "cancel", "1")
		require.Equal(t, exitFailure, res.code)
		require.Equal(t, "aftercommit jobs cancel: job 1 is already completed\n", res.stderr)
		require.Equal(t, "completed", b.state(ctx, t, 1))

		res = b.run(ctx, t, "cancel", "999999")
		require.Equal(t, exitFailure, res.code)
		require.Equal(t, "aftercommit jobs cancel: no job 999999\n", res.stderr)
	})

	t.Run("ListOutbox", func(t *testing.T) {
		t.Parallel()
		b := setupOutbox(ctx, t)
		res := b.run(ctx, t, "list", "--outbox")
		require.Equal(t, exitOK, res.code, res.stderr)
		require.Empty(t, res.stderr)
		require.Equal(t, `ID  KIND        QUEUE  ARGS                                      CREATED              AGE
1   test.alpha  -      {"id": 10}                                2026-11-26 09:31:00  <age>
2   test.beta   q1     {"id": 11, "note": "a long note that th…  2026-11-26 09:30:00  <age>
3   test.alpha  -      {"id": 12}                                2026-11-26 09:32:00  <age>
`, outboxAges.ReplaceAllString(res.stdout, "  <age>"), "by id, the order the relay takes them (not created_at's)")
		require.Len(t, outboxAges.FindAllString(res.stdout, -1), 3)

		start := time.Now()
		res = b.run(ctx, t, "list", "--outbox", "--kind", "test.alpha", "--json")
		end := time.Now()
		require.Equal(t, exitOK, res.code, res.stderr)
		var got []outboxRowView
		require.NoError(t, json.Unmarshal([]byte(res.stdout), &got))
		require.Len(t, got, 2)
		for i, want := range []struct {
			id      int64
			created time.Time
		}{{1, jobsT0.Add(time.Minute)}, {3, jobsT0.Add(2 * time.Minute)}} {
			// The age is now() - created_at at the read, between the
			// command's start and end.
			require.GreaterOrEqual(t, got[i].AgeMs, msf(start.Sub(want.created))-1)
			require.LessOrEqual(t, got[i].AgeMs, msf(end.Sub(want.created))+1)
			require.JSONEq(t, fmt.Sprintf(`{"id": %d}`, 9+want.id), string(got[i].Args))
			got[i].Args, got[i].AgeMs = nil, 0
			require.Equal(t, outboxRowView{ID: want.id, Kind: "test.alpha", Metadata: json.RawMessage("null"),
				Options: json.RawMessage("null"), CreatedAt: want.created}, got[i])
		}

		res = b.run(ctx, t, "list", "--outbox", "--queue", "q1", "--json")
		require.Equal(t, exitOK, res.code, res.stderr)
		require.NoError(t, json.Unmarshal([]byte(res.stdout), &got))
		require.Len(t, got, 1)
		require.Equal(t, int64(2), got[0].ID)
		require.Equal(t, "q1", *got[0].Queue)
		require.Equal(t, 3, *got[0].Priority)

		res = b.run(ctx, t, "list", "--outbox", "--limit", "1")
		require.Equal(t, exitOK, res.code, res.stderr)
		require.Equal(t, 2, strings.Count(res.stdout, "\n"), res.stdout)
		require.Equal(t, "aftercommit jobs list: showing the first 1; raise --limit or narrow the filters for more\n", res.stderr)

		// An empty outbox: the header alone.
		_, err := b.schema.Pool.Exec(ctx, `DELETE FROM outbox_jobs`)
		require.NoError(t, err)
		res = b.run(ctx, t, "list", "--outbox")
		require.Equal(t, exitOK, res.code, res.stderr)
		require.Equal(t, "ID  KIND  QUEUE  ARGS  CREATED  AGE\n", res.stdout)
	})

	t.Run("ListDead", func(t *testing.T) {
		t.Parallel()
		b := setupOutbox(ctx, t)
		res := b.run(ctx, t, "list", "--dead")
		require.Equal(t, exitOK, res.code, res.stderr)
		require.Empty(t, res.stderr)
		require.Equal(t, `ID  KIND        QUEUE  ARGS         CREATED              DEAD AT              REASON
8   test.alpha  q1     {"id": "x"}  2026-11-26 09:30:00  2026-11-26 09:37:00  args do not decode: json: cannot unmarshal string into Go struct field .id of t…
9   test.alpha  -      {"id": 0}    2026-11-26 09:30:00  2026-11-26 09:36:00  too large
7   test.nope   -      {}           2026-11-26 09:30:00  2026-11-26 09:35:00  unknown kind "test.nope"
`, res.stdout, "newest dead first")

		res = b.run(ctx, t, "list", "--dead", "--kind", "test.alpha", "--queue", "q1", "--json")
		require.Equal(t, exitOK, res.code, res.stderr)
		var got []outboxRowView
		require.NoError(t, json.Unmarshal([]byte(res.stdout), &got))
		require.Len(t, got, 1)
		require.JSONEq(t, `{"id": "x"}`, string(got[0].Args))
		got[0].Args = nil
		q1, deadAt := "q1", jobsT0.Add(7*time.Minute)
		require.Equal(t, []outboxRowView{{
			ID: 8, Kind: "test.alpha", Queue: &q1, Metadata: json.RawMessage("null"), Options: json.RawMessage("null"),
			CreatedAt: jobsT0, AgeMs: 7 * 60 * 1000, DeadAt: &deadAt,
			Reason: "args do not decode:\njson: cannot unmarshal string into Go struct field .id of type int64",
		}}, got, "a dead row's age is how long it waited until it died")
	})

	t.Run("BadUsage", func(t *testing.T) {
		t.Parallel()
		environ := map[string]string{"DATABASE_URL": "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable"}
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"jobs"}, "aftercommit jobs: missing action: list, show, retry, cancel or batch\n"},
			{[]string{"jobs", "frob"}, `aftercommit jobs: unknown action "frob": want list, show, retry, cancel or batch` + "\n"},
			{[]string{"jobs", "show"}, "aftercommit jobs: jobs show takes one job ID\n"},
			{[]string{"jobs", "retry", "1", "2"}, "aftercommit jobs: jobs retry takes one job ID\n"},
			{[]string{"jobs", "show", "abc"}, `aftercommit jobs: job ID must be a positive integer, got "abc"` + "\n"},
			{[]string{"jobs", "cancel", "0"}, `aftercommit jobs: job ID must be a positive integer, got "0"` + "\n"},
			{[]string{"jobs", "list", "x"}, "aftercommit jobs: jobs list takes no arguments, got x\n"},
			{[]string{"jobs", "list", "--limit", "0"}, "aftercommit jobs: --limit must be in 1..10000, got 0\n"},
			{[]string{"jobs", "list", "--state", "done"}, `aftercommit jobs: unknown state "done": want one of available, cancelled, completed, discarded, pending, retryable, running, scheduled` + "\n"},
			{[]string{"jobs", "list", "--outbox", "--dead"}, "aftercommit jobs: --outbox and --dead list different tables: choose one\n"},
			{[]string{"jobs", "list", "--dead", "--state", "available"}, "aftercommit jobs: --state applies to River's jobs, not to outbox rows (--outbox, --dead)\n"},
			{[]string{"jobs", "show", "1", "--outbox"}, "aftercommit jobs: --outbox and --dead apply to jobs list only\n"},
		} {
			res := runCLI(ctx, t, environ, tc.args...)
			require.Equal(t, exitUsage, res.code, "%v", tc.args)
			require.Empty(t, res.stdout)
			require.Equal(t, tc.want+"Run 'aftercommit jobs --help' for usage.\n", res.stderr, "%v", tc.args)
		}
		res := runCLI(ctx, t, environ, "jobs", "list", "--verbose")
		require.Equal(t, exitUsage, res.code)
		require.Contains(t, res.stderr, "flag provided but not defined: -verbose")

		res = runCLI(ctx, t, environ, "jobs", "--help")
		require.Equal(t, exitOK, res.code)
		require.Contains(t, res.stdout, "aftercommit jobs show ID [--json]")
		require.Contains(t, res.stdout, "-state")
		require.Contains(t, res.stdout, "aftercommit jobs list --outbox [--kind K] [--queue Q] [--limit N] [--json]")
		require.Contains(t, res.stdout, "aftercommit jobs list --dead [--kind K] [--queue Q] [--limit N] [--json]")
	})

	t.Run("UnreachableDatabase", func(t *testing.T) {
		t.Parallel()
		environ := map[string]string{"DATABASE_URL": "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=2"}
		res := runCLI(ctx, t, environ, "jobs", "list")
		require.Equal(t, exitFailure, res.code)
		require.Empty(t, res.stdout)
		requireOneLine(t, res.stderr)
		require.Contains(t, res.stderr, "cannot reach")
	})
}

// countRows runs a query returning one integer.
func countRows(ctx context.Context, t *testing.T, s *dbtest.Schema, sql string) int {
	t.Helper()
	var n int
	require.NoError(t, s.Pool.QueryRow(ctx, sql).Scan(&n))
	return n
}

// TestJobsBatchShow: jobs batch show prints a batch's state, counts,
// callback and finished members (table and JSON); an unknown batch is a
// failure, a malformed ID bad usage.
func TestJobsBatchShow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setupJobs(ctx, t)
	const id = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"
	pool := b.schema.Pool
	_, err := pool.Exec(ctx, `SELECT job_batch_add_many(ARRAY[$1::uuid], ARRAY[3], ARRAY[true], ARRAY[true],
		ARRAY['{"kind": "test.done", "args": {"import": 1}}'::jsonb], ARRAY[NULL::jsonb])`, id)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `INSERT INTO river_job (id, args, kind, queue, state, max_attempts, metadata)
		SELECT 10 + g, jsonb_build_object('part', g), 'test.part', 'default', 'running', 25,
		       jsonb_build_object('aftercommit_batch', $1::text)
		  FROM generate_series(1, 3) AS g`, id)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `UPDATE river_job SET state = 'completed', finalized_at = now(),
		metadata = metadata || jsonb_build_object('output', jsonb_build_object('rows', 100 * (id - 10)))
		WHERE id IN (11, 12)`)
	require.NoError(t, err)

	res := b.run(ctx, t, "batch", "show", id)
	require.Equal(t, exitOK, res.code, res.stderr)
	require.Contains(t, res.stdout, "State     running\n")
	require.Contains(t, res.stdout, "Members   3 expected, 1 unfinished, 2 completed, 0 discarded, 0 cancelled\n")
	require.Contains(t, res.stdout, "Callback  not yet\n")
	require.Regexp(t, `(?m)^  11   test.part  completed  .*  \{"rows": 100\}$`, res.stdout)
	require.Regexp(t, `(?m)^  12   test.part  completed  .*  \{"rows": 200\}$`, res.stdout)

	_, err = pool.Exec(ctx, `UPDATE river_job SET state = 'discarded', finalized_at = now() WHERE id = 13`)
	require.NoError(t, err)
	res = b.run(ctx, t, "batch", "show", id, "--json")
	require.Equal(t, exitOK, res.code, res.stderr)
	var v batchView
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &v))
	require.Equal(t, "failed", v.State)
	require.Equal(t, []int{3, 0, 2, 1, 0}, []int{v.Expected, v.Unfinished, v.Completed, v.Discarded, v.Cancelled})
	require.Nil(t, v.CallbackJobID, "no failure callback")
	require.NotNil(t, v.FinishedAt)
	require.Len(t, v.Members, 3)
	require.Equal(t, "discarded", v.Members[2].State)

	res = b.run(ctx, t, "batch", "show", "0b7e4a4e-5c1e-4f3a-9d7e-2b1c0a9f8e7d")
	require.Equal(t, exitFailure, res.code)
	require.Contains(t, res.stderr, "no such job batch")
	res = b.run(ctx, t, "batch", "show", "batch-1")
	require.Equal(t, exitUsage, res.code)
	require.Contains(t, res.stderr, `a batch ID is a UUID, got "batch-1"`)
}
