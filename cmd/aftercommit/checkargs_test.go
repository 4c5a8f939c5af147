package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/donations"
	"github.com/aftercommit/aftercommit/internal/app"
	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/jobs/argcheck"
)

type checkArgsBundle struct {
	schema *dbtest.Schema
	// flags point the command at the schema.
	flags []string
}

func setupCheckArgs(ctx context.Context, t *testing.T) *checkArgsBundle {
	t.Helper()
	s := dbtest.TestSchema(ctx, t, nil)
	return &checkArgsBundle{schema: s, flags: []string{"--database-url", s.URL, "--schema", s.Name}}
}

// insert writes river_job rows as (args, kind, state) triples, in order;
// their ids are 1, 2, … in a fresh schema.
func (b *checkArgsBundle) insert(ctx context.Context, t *testing.T, rows ...[3]string) {
	t.Helper()
	for _, r := range rows {
		_, err := b.schema.Pool.Exec(ctx, `
			INSERT INTO river_job (args, kind, max_attempts, priority, queue, state, scheduled_at, finalized_at)
			VALUES ($1::jsonb, $2, 25, 1, 'default', $3::text::river_job_state, now(),
			        CASE WHEN $3 IN ('completed', 'cancelled', 'discarded') THEN now() END)`, r[0], r[1], r[2])
		require.NoError(t, err)
	}
}

func (b *checkArgsBundle) run(ctx context.Context, t *testing.T, args ...string) cliResult {
	t.Helper()
	// The environment points elsewhere: the flags must win.
	environ := map[string]string{"DATABASE_URL": "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable"}
	return runCLI(ctx, t, environ, append(append([]string{"check-args"}, args...), b.flags...)...)
}

func TestCheckArgs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("WarningsOnlyExitZero", func(t *testing.T) {
		t.Parallel()
		b := setupCheckArgs(ctx, t)
		b.insert(ctx, t,
			[3]string{`{"ping_id": 1}`, jobs.PingKind, "available"},
			[3]string{`{"ping_id": 2, "note": "from v1"}`, jobs.PingKind, "scheduled"},
			[3]string{`{"ping_id": 3}`, jobs.PingKind, "completed"}, // not checked
		)

		res := b.run(ctx, t)
		require.Equal(t, cliResult{code: exitOK, stdout: `KIND              CHECKED  FAILING  WARNED  CANCELLED  RAN_WARNED
aftercommit.ping  2        0        1       0          0

JOB  KIND              STATE      QUEUE    SEVERITY  PROBLEM        FIELD  MESSAGE
2    aftercommit.ping  scheduled  default  warning   unknown_field  note   not a field of jobs.PingArgs: its value is dropped when the job is decoded

checked 2 queued jobs: 1 ok, 1 with warnings only, 0 failing; 0 jobs finished in the last 24h with args problems, 0 cancelled; 1 problem
`}, res)
	})

	t.Run("FailuresExitOne", func(t *testing.T) {
		t.Parallel()
		b := setupCheckArgs(ctx, t)
		b.insert(ctx, t,
			[3]string{`{"ping_id": 1}`, jobs.PingKind, "available"},
			[3]string{`{"ping_id": "7"}`, jobs.PingKind, "retryable"},
			[3]string{`{"sleep_ms": 5}`, jobs.PingKind, "pending"},
			[3]string{`{"id": 4}`, "donations.send_thanks", "available"},
		)

		res := b.run(ctx, t)
		require.Equal(t, cliResult{
			code: exitFailure,
			stdout: `KIND                               CHECKED  FAILING  WARNED  CANCELLED  RAN_WARNED
aftercommit.ping                   3        2        0       0          0
donations.send_thanks (no worker)  1        1        0       0          0

JOB  KIND                   STATE      QUEUE    SEVERITY  PROBLEM        FIELD    MESSAGE
2    aftercommit.ping       retryable  default  failure   type_mismatch  ping_id  wrong type: a JSON string where int64 is expected
3    aftercommit.ping       pending    default  failure   missing_field  ping_id  missing (required)
4    donations.send_thanks  available  default  failure   unknown_kind   -        no worker is registered for kind "donations.send_thanks": every attempt fails (UnknownJobKindError) until River discards the job

checked 4 queued jobs: 1 ok, 0 with warnings only, 3 failing; 0 jobs finished in the last 24h with args problems, 0 cancelled; 3 problems
`,
			stderr: "aftercommit check-args: 3 queued jobs would fail with the args types of this build\n",
		}, res)
	})

	t.Run("JSON", func(t *testing.T) {
		t.Parallel()
		b := setupCheckArgs(ctx, t)
		b.insert(ctx, t,
			[3]string{`{"ping_id": 1, "note": "x"}`, jobs.PingKind, "available"},
			[3]string{`{"id": 2}`, "donations.send_thanks", "available"},
		)

		res := b.run(ctx, t, "--json")
		require.Equal(t, exitFailure, res.code)
		require.Equal(t, "aftercommit check-args: 1 queued job would fail with the args types of this build\n", res.stderr)
		var got argcheck.Report
		require.NoError(t, json.Unmarshal([]byte(res.stdout), &got))
		require.Equal(t, argcheck.Report{
			Checked: 2, OK: 0, Warned: 1, Failing: 1, ProblemCount: 2,
			Kinds: []argcheck.KindSummary{
				{Kind: jobs.PingKind, Registered: true, Checked: 1, Warned: 1},
				{Kind: "donations.send_thanks", Registered: false, Checked: 1, Failing: 1},
			},
			Problems: []jobs.ArgsProblem{
				{
					JobID: 1, Kind: jobs.PingKind, State: "available", Queue: "default",
					Problem: jobs.ArgsProblemUnknownField, Severity: jobs.ArgsSeverityWarning, Field: "note",
					Message: "not a field of jobs.PingArgs: its value is dropped when the job is decoded",
				},
				{
					JobID: 2, Kind: "donations.send_thanks", State: "available", Queue: "default",
					Problem: jobs.ArgsProblemUnknownKind, Severity: jobs.ArgsSeverityFailure,
					Message: `no worker is registered for kind "donations.send_thanks": every attempt fails (UnknownJobKindError) until River discards the job`,
				},
			},
		}, got)
		require.Contains(t, res.stdout, `"problem_count": 2`, "snake_case keys")
	})

	t.Run("MaxProblems", func(t *testing.T) {
		t.Parallel()
		b := setupCheckArgs(ctx, t)
		for range 5 {
			b.insert(ctx, t, [3]string{`{}`, jobs.PingKind, "available"})
		}

		res := b.run(ctx, t, "--max-problems", "2")
		require.Equal(t, exitFailure, res.code)
		lines := strings.Split(strings.TrimSuffix(res.stdout, "\n"), "\n")
		require.Equal(t, "checked 5 queued jobs: 0 ok, 0 with warnings only, 5 failing; 0 jobs finished in the last 24h with args problems, 0 cancelled; 5 problems, 2 listed (--max-problems 2)", lines[len(lines)-1])
		require.Equal(t, 2, strings.Count(res.stdout, "missing_field"))

		res = b.run(ctx, t, "--max-problems", "0", "--json")
		require.Equal(t, exitFailure, res.code)
		var got argcheck.Report
		require.NoError(t, json.Unmarshal([]byte(res.stdout), &got))
		require.Equal(t, 5, got.ProblemCount)
		require.Empty(t, got.Problems)
	})

	// The jobs a worker of this build cancelled for bad args, or ran with
	// an unknown field, are listed after they ran, and fail the check.
	t.Run("ListsJobsWorkersCancelledForBadArgs", func(t *testing.T) {
		t.Parallel()
		b := setupCheckArgs(ctx, t)
		reg := app.Registry(b.schema.Pool, nil)
		queue, priority, ok := reg.KindDefaults(donations.UpdateEmailDonationKind)
		require.True(t, ok)
		require.Equal(t, "donations_default", queue)
		var ids []int64 // 1, 2, 3 in a fresh schema
		for _, args := range []string{`{"donationId": 1}`, `{"donation_id": 1, "v2_note": "x"}`, `{"donation_id": 0}`} {
			var id int64
			require.NoError(t, b.schema.Pool.QueryRow(ctx, `
				INSERT INTO river_job (args, kind, max_attempts, priority, queue, state, scheduled_at)
				VALUES ($1::jsonb, $2, 25, $3, $4, 'available', now()) RETURNING id`,
				args, donations.UpdateEmailDonationKind, priority, queue).Scan(&id))
			ids = append(ids, id)
		}
		require.Equal(t, []int64{1, 2, 3}, ids)
		client, err := jobs.NewClient(b.schema.Pool, reg, &jobs.ClientConfig{
			Queues: []string{jobs.AllQueues},
			Schema: b.schema.Name,
			Logger: slog.New(slog.DiscardHandler),
			River:  &river.Config{FetchCooldown: 10 * time.Millisecond, FetchPollInterval: 50 * time.Millisecond},
		})
		require.NoError(t, err)
		require.NoError(t, client.Start(ctx))
		require.Eventually(t, func() bool {
			var left int
			err := b.schema.Pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE id = ANY($1) AND finalized_at IS NULL`, ids).Scan(&left)
			return err == nil && left == 0
		}, 20*time.Second, 20*time.Millisecond)
		// The worker's leader may have enqueued its periodic jobs (the
		// event pruner) meanwhile: stop it, then keep only the test's jobs,
		// so the check sees exactly them.
		require.NoError(t, client.Stop(context.WithoutCancel(ctx)))
		_, err = b.schema.Pool.Exec(ctx, `DELETE FROM river_job WHERE NOT id = ANY($1)`, ids)
		require.NoError(t, err)

		res := b.run(ctx, t)
		require.Equal(t, cliResult{
			code: exitFailure,
			stdout: `KIND                             CHECKED  FAILING  WARNED  CANCELLED  RAN_WARNED
donations.update_email_donation  0        0        0       2          1

JOB  KIND                             STATE      QUEUE              SEVERITY  PROBLEM        FIELD        MESSAGE
1    donations.update_email_donation  cancelled  donations_default  failure   missing_field  donation_id  missing (required)
1    donations.update_email_donation  cancelled  donations_default  warning   unknown_field  donationId   not a field of donations.UpdateEmailDonationArgs: its value is dropped when the job is decoded
2    donations.update_email_donation  completed  donations_default  warning   unknown_field  v2_note      not a field of donations.UpdateEmailDonationArgs: its value is dropped when the job is decoded
3    donations.update_email_donation  cancelled  donations_default  failure   invalid_id     donation_id  must be an ID above 0, got 0

checked 0 queued jobs: 0 ok, 0 with warnings only, 0 failing; 3 jobs finished in the last 24h with args problems, 2 cancelled; 4 problems
`,
			stderr: "aftercommit check-args: 2 jobs were cancelled for bad args in the last 24h\n",
		}, res)

		// Before a deploy, the queued jobs alone.
		res = b.run(ctx, t, "--since", "0")
		require.Equal(t, cliResult{code: exitOK, stdout: "checked 0 queued jobs: 0 ok, 0 with warnings only, 0 failing; 0 problems\n"}, res)
	})

	t.Run("NothingQueued", func(t *testing.T) {
		t.Parallel()
		b := setupCheckArgs(ctx, t)
		res := b.run(ctx, t)
		require.Equal(t, cliResult{code: exitOK, stdout: "checked 0 queued jobs: 0 ok, 0 with warnings only, 0 failing; 0 jobs finished in the last 24h with args problems, 0 cancelled; 0 problems\n"}, res)
		res = b.run(ctx, t, "--since", "0")
		require.Equal(t, cliResult{code: exitOK, stdout: "checked 0 queued jobs: 0 ok, 0 with warnings only, 0 failing; 0 problems\n"}, res)
	})

	t.Run("NoRiverTables", func(t *testing.T) {
		t.Parallel()
		b := setupCheckArgs(ctx, t)
		empty := b.schema.Name + "_empty"
		_, err := b.schema.Pool.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{empty}.Sanitize())
		require.NoError(t, err)
		t.Cleanup(func() {
			_, err := b.schema.Pool.Exec(context.WithoutCancel(ctx), "DROP SCHEMA "+pgx.Identifier{empty}.Sanitize())
			require.NoError(t, err)
		})

		res := runCLI(ctx, t, nil, "check-args", "--database-url", b.schema.URL, "--schema", empty)
		require.Equal(t, cliResult{
			code: exitFailure,
			stderr: fmt.Sprintf("aftercommit check-args: River's job table is not in schema %q (relation \"river_job\" does not exist): "+
				"run 'aftercommit migrate up' or change --schema / AFTERCOMMIT_SCHEMA\n", empty),
		}, res)

		res = runCLI(ctx, t, nil, "check-args", "--database-url", b.schema.URL, "--schema", b.schema.Name+"_missing")
		require.Equal(t, exitFailure, res.code)
		requireOneLine(t, res.stderr)
		require.Contains(t, res.stderr, "does not exist")
	})

	t.Run("Unreachable", func(t *testing.T) {
		t.Parallel()
		res := runCLI(ctx, t, map[string]string{"DATABASE_URL": "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=2"}, "check-args")
		require.Equal(t, exitFailure, res.code)
		require.Empty(t, res.stdout)
		requireOneLine(t, res.stderr)
		require.Contains(t, res.stderr, "aftercommit: cannot reach Postgres at 127.0.0.1:1")
	})

	t.Run("Interrupted", func(t *testing.T) {
		t.Parallel()
		b := setupCheckArgs(ctx, t)
		canceled, cancel := context.WithCancel(ctx)
		cancel()
		res := b.run(canceled, t)
		require.Equal(t, cliResult{code: exitInterrupted, stderr: "aftercommit: interrupted\n"}, res)
	})

	t.Run("Usage", func(t *testing.T) {
		t.Parallel()
		environ := map[string]string{"DATABASE_URL": "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable"}
		for _, tt := range []struct {
			args       []string
			wantCode   int
			wantStdout []string
			wantStderr []string
		}{
			{args: []string{"check-args", "--help"}, wantCode: exitOK, wantStdout: []string{"aftercommit check-args [flags]", "-json", "-max-problems N", "-schema", "-since D", `jobs:"required"`, `jobs:"id"`, "Exit codes"}},
			{args: []string{"help", "check-args"}, wantCode: exitOK, wantStdout: []string{"aftercommit check-args [flags]"}},
			{args: []string{"--help"}, wantCode: exitOK, wantStdout: []string{"check-args"}},
			{args: []string{"check-args", "now"}, wantCode: exitUsage, wantStderr: []string{"check-args takes no arguments, got now", "aftercommit check-args --help"}},
			{args: []string{"check-args", "--max-problems", "-1"}, wantCode: exitUsage, wantStderr: []string{"--max-problems must be 0 or more, got -1"}},
			{args: []string{"check-args", "--max-problems", "many"}, wantCode: exitUsage, wantStderr: []string{"-max-problems"}},
			{args: []string{"check-args", "--since", "-1h"}, wantCode: exitUsage, wantStderr: []string{"--since must be 0 or more, got -1h0m0s"}},
		} {
			res := runCLI(ctx, t, environ, tt.args...)
			require.Equal(t, tt.wantCode, res.code, "%v: %+v", tt.args, res)
			for _, w := range tt.wantStdout {
				require.Contains(t, res.stdout, w, tt.args)
			}
			if tt.wantStdout == nil {
				require.Empty(t, res.stdout, tt.args)
			}
			for _, w := range tt.wantStderr {
				require.Contains(t, res.stderr, w, tt.args)
			}
			if tt.wantStderr == nil {
				require.Empty(t, res.stderr, tt.args)
			}
		}
	})
}
