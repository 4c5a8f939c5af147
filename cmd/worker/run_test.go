package main

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/testlog"
	"github.com/aftercommit/aftercommit/jobs"
)

// noEnv keeps the test process's environment (DATABASE_URL, …) out of run.
func noEnv(string) string { return "" }

// runHandle is one run of the worker in a goroutine of the test.
type runHandle struct {
	cancel   context.CancelFunc
	finished chan struct{} // closed once run returned; code is set then
	code     int
	stdout   *testlog.Buffer
	stderr   *testlog.Buffer
}

// startRun runs the worker with args until stop or the end of the test.
func startRun(ctx context.Context, t *testing.T, args ...string) *runHandle {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	h := &runHandle{cancel: cancel, finished: make(chan struct{}), stdout: &testlog.Buffer{}, stderr: &testlog.Buffer{}}
	go func() {
		defer close(h.finished)
		h.code = run(ctx, args, noEnv, h.stdout, h.stderr)
	}()
	t.Cleanup(func() {
		// A test that failed half way must not leave the worker running.
		cancel()
		select {
		case <-h.finished:
		case <-time.After(30 * time.Second):
			t.Errorf("worker still running 30s after the end of the test; stderr:\n%s", h.stderr)
		}
	})
	return h
}

// stop sends the "signal" and returns run's exit code, failing the test when
// run takes longer than within.
func (h *runHandle) stop(t *testing.T, within time.Duration) int {
	t.Helper()
	h.cancel()
	select {
	case <-h.finished:
		return h.code
	case <-time.After(within):
		t.Fatalf("run did not return within %s of the signal; stderr:\n%s", within, h.stderr)
		return -1
	}
}

// waitFor polls cond until it holds, failing the test after timeout or as
// soon as run returns on its own.
func (h *runHandle) waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-h.finished:
			t.Fatalf("run returned %d while waiting for %s; stderr:\n%s", h.code, what, h.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s; stderr:\n%s", timeout, what, h.stderr)
		}
		<-tick.C
	}
}

// workerURL is the schema's URL with a small pool, so parallel tests stay
// well below the server's max_connections.
func workerURL(t *testing.T, s *dbtest.Schema) string {
	t.Helper()
	if !strings.Contains(s.URL, "://") {
		return s.URL + " pool_max_conns=6"
	}
	u, err := url.Parse(s.URL)
	require.NoError(t, err)
	q := u.Query()
	q.Set("pool_max_conns", "6")
	u.RawQuery = q.Encode()
	return u.String()
}

type testBundle struct {
	schema *dbtest.Schema
	// inserter is an insert-only River client on the schema.
	inserter *river.Client[pgx.Tx]
}

func setup(ctx context.Context, t *testing.T) *testBundle {
	t.Helper()
	s := dbtest.TestSchema(ctx, t, nil)
	inserter, err := river.NewClient(riverpgxv5.New(s.Pool), &river.Config{Schema: s.Name})
	require.NoError(t, err)
	return &testBundle{schema: s, inserter: inserter}
}

// insertPings writes one pings row per sleepMS and its PingArgs job in one
// transaction, the way an application enqueues, and returns the row and job
// ids in order.
func (b *testBundle) insertPings(ctx context.Context, t *testing.T, sleepMS ...int) (pingIDs, jobIDs []int64) {
	t.Helper()
	tx, err := b.schema.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()

	params := make([]river.InsertManyParams, 0, len(sleepMS))
	for _, ms := range sleepMS {
		var id int64
		require.NoError(t, tx.QueryRow(ctx, `INSERT INTO pings (note) VALUES ($1) RETURNING id`,
			"cmd/worker test "+t.Name()).Scan(&id))
		pingIDs = append(pingIDs, id)
		params = append(params, river.InsertManyParams{Args: jobs.PingArgs{PingID: id, SleepMS: ms}})
	}
	res, err := b.inserter.InsertManyTx(ctx, tx, params)
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))
	for _, r := range res {
		jobIDs = append(jobIDs, r.Job.ID)
	}
	return pingIDs, jobIDs
}

// args are the worker's flags for the schema, HTTP on a free loopback port
// (the default port would collide between parallel tests), then extra.
func (b *testBundle) args(t *testing.T, extra ...string) []string {
	return append([]string{"--database-url", workerURL(t, b.schema), "--schema", b.schema.Name,
		"--http", "127.0.0.1:0"}, extra...)
}

// jobState reads the state, attempt and number of recorded errors of a job.
func (b *testBundle) jobState(ctx context.Context, t *testing.T, id int64) (state string, attempt, errs int) {
	t.Helper()
	require.NoError(t, b.schema.Pool.QueryRow(ctx,
		`SELECT state::text, attempt, coalesce(array_length(errors, 1), 0) FROM river_job WHERE id = $1`, id).
		Scan(&state, &attempt, &errs))
	return state, attempt, errs
}

func (b *testBundle) pingCount(ctx context.Context, t *testing.T, id int64) int {
	t.Helper()
	var n int
	require.NoError(t, b.schema.Pool.QueryRow(ctx, `SELECT ping_count FROM pings WHERE id = $1`, id).Scan(&n))
	return n
}

func TestRunWorksEveryJobOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(ctx, t)

	const n = 20
	b.insertPings(ctx, t, make([]int, n)...)

	h := startRun(ctx, t, b.args(t)...)
	h.waitFor(t, 30*time.Second, "every ping marked and every job completed", func() bool {
		var pinged, completed int
		require.NoError(t, b.schema.Pool.QueryRow(ctx, `
			SELECT (SELECT count(*) FROM pings WHERE ping_count = 1),
			       (SELECT count(*) FROM river_job WHERE state = 'completed' AND kind = $1)`, jobs.PingKind).Scan(&pinged, &completed))
		return pinged == n && completed == n
	})
	require.Equal(t, 0, h.stop(t, 15*time.Second), "stderr:\n%s", h.stderr)

	// Exact counts after the worker stopped: each row pinged once, each job
	// completed once, nothing else. (The leader may also have enqueued and
	// worked the periodic events pruner: other kinds are not counted.)
	var rows, pinged, sum, jobsTotal, completed, attempts int
	require.NoError(t, b.schema.Pool.QueryRow(ctx, `
		SELECT (SELECT count(*) FROM pings),
		       (SELECT count(*) FROM pings WHERE ping_count = 1 AND pinged_at IS NOT NULL),
		       (SELECT coalesce(sum(ping_count), 0) FROM pings),
		       (SELECT count(*) FROM river_job WHERE kind = $1),
		       (SELECT count(*) FROM river_job WHERE state = 'completed' AND kind = $1),
		       (SELECT coalesce(sum(attempt), 0) FROM river_job WHERE kind = $1)`, jobs.PingKind).
		Scan(&rows, &pinged, &sum, &jobsTotal, &completed, &attempts))
	require.Equal(t, n, rows)
	require.Equal(t, n, pinged)
	require.Equal(t, n, sum)
	require.Equal(t, n, jobsTotal)
	require.Equal(t, n, completed)
	require.Equal(t, n, attempts, "every job took exactly one attempt")

	logs := h.stderr.String()
	require.Contains(t, logs, "worker: started")
	require.Contains(t, logs, "queues=all max_workers=0")
	require.Contains(t, logs, "worker: stopped")
	require.Empty(t, h.stdout.String())
}

func TestRunWaitsForRunningJobOnShutdown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(ctx, t)

	pingIDs, jobIDs := b.insertPings(ctx, t, 1500)

	h := startRun(ctx, t, b.args(t)...)
	h.waitFor(t, 15*time.Second, "the job to be running", func() bool {
		state, _, _ := b.jobState(ctx, t, jobIDs[0])
		return state == "running"
	})
	require.Equal(t, 0, b.pingCount(ctx, t, pingIDs[0]), "the job is still sleeping")

	require.Equal(t, 0, h.stop(t, 15*time.Second), "stderr:\n%s", h.stderr)

	// Stop waited: the job finished its work and completed before run
	// returned.
	state, attempt, errs := b.jobState(ctx, t, jobIDs[0])
	require.Equal(t, "completed", state)
	require.Equal(t, 1, attempt)
	require.Zero(t, errs)
	require.Equal(t, 1, b.pingCount(ctx, t, pingIDs[0]))

	logs := h.stderr.String()
	require.Contains(t, logs, "worker: stopping")
	require.Contains(t, logs, "worker: stopped")
	require.NotContains(t, logs, "cancelling running jobs")
}

func TestRunRequeuesJobsStillRunningAfterShutdownTimeout(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(ctx, t)

	pingIDs, jobIDs := b.insertPings(ctx, t, 20_000)

	h := startRun(ctx, t, b.args(t, "--shutdown-timeout", "200ms")...)
	h.waitFor(t, 15*time.Second, "the job to be running", func() bool {
		state, _, _ := b.jobState(ctx, t, jobIDs[0])
		return state == "running"
	})

	start := time.Now()
	require.Equal(t, 0, h.stop(t, 5*time.Second), "stderr:\n%s", h.stderr)
	require.Less(t, time.Since(start), 5*time.Second)

	// Not lost: River 0.51 treats a job cancelled by the client's stop as
	// interrupted, not failed. It is available again at once, and the
	// interrupted attempt does not count (attempt back to 0, no error).
	state, attempt, errs := b.jobState(ctx, t, jobIDs[0])
	require.Equal(t, "available", state)
	require.Equal(t, 0, attempt)
	require.Zero(t, errs)
	require.Equal(t, 0, b.pingCount(ctx, t, pingIDs[0]), "the cancelled job wrote nothing")

	logs := h.stderr.String()
	require.Contains(t, logs, "worker: shutdown timeout elapsed; cancelling running jobs")
	require.Contains(t, logs, "worker: stopped after cancelling running jobs")

	// A second worker picks the job up again; it runs to completion once.
	_, err := b.schema.Pool.Exec(ctx, `UPDATE river_job SET args = jsonb_set(args, '{sleep_ms}', '0') WHERE id = $1`, jobIDs[0])
	require.NoError(t, err)
	h2 := startRun(ctx, t, b.args(t)...)
	h2.waitFor(t, 15*time.Second, "the requeued job to complete", func() bool {
		state, _, _ := b.jobState(ctx, t, jobIDs[0])
		return state == "completed"
	})
	require.Equal(t, 0, h2.stop(t, 15*time.Second), "stderr:\n%s", h2.stderr)
	require.Equal(t, 1, b.pingCount(ctx, t, pingIDs[0]))
}

func TestRunBadFlags(t *testing.T) {
	t.Parallel()

	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"MaxWorkersNegative", []string{"--max-workers", "-1"}, `worker: invalid --max-workers "-1"`},
		{"MaxWorkersTooMany", []string{"--max-workers", "10001"}, `worker: invalid --max-workers "10001"`},
		{"QueuesEmpty", []string{"--queues", ""}, `worker: invalid --queues "": name at least one queue, or "all"`},
		{"QueuesAllAndMore", []string{"--queues", "all,default"}, `queue name "all" is reserved`},
		{"QueuesEmptyEntry", []string{"--queues", "a,,b"}, "empty queue name"},
		{"QueuesDuplicate", []string{"--queues", "a, b,a"}, `queue "a" is listed twice`},
		{"QueuesInvalidName", []string{"--queues", "Big Queue"}, `queue name "Big Queue"`},
		{"ShutdownTimeoutNonsense", []string{"--shutdown-timeout", "nonsense"}, `worker: invalid --shutdown-timeout "nonsense"`},
		{"ShutdownTimeoutNegative", []string{"--shutdown-timeout", "-1s"}, `worker: invalid --shutdown-timeout "-1s"`},
		{"LogLevel", []string{"--log-level", "loud"}, `worker: invalid --log-level "loud"`},
		{"JobTimeoutZero", []string{"--job-timeout", "0s"}, `worker: invalid --job-timeout "0s": want a positive duration`},
		{"RescueAfterNonsense", []string{"--rescue-after", "soon"}, `worker: invalid --rescue-after "soon": want a positive duration`},
		{"RescueNotAfterTimeout", []string{"--job-timeout", "2m", "--rescue-after", "2m"},
			"worker: --rescue-after (2m0s) must be longer than --job-timeout (2m0s): a job would be rescued, and run twice, while it may still be running"},
		{"Reindexer", []string{"--reindexer", "maybe"}, `worker: invalid --reindexer "maybe": want on or off`},
		{"UnknownFlag", []string{"--nope"}, "flag provided but not defined: -nope"},
		{"Argument", []string{"extra"}, `unexpected argument "extra"`},
		{"DatabaseURL", []string{"--database-url", "postgres://u:s3cret@host:99999/db"}, "cannot parse the database URL given by --database-url"},
		{"ListenDatabaseURL", []string{"--listen-database-url", "postgres://u:s3cret@host:99999/db"}, "cannot parse the database URL given by --listen-database-url"},
		{"HTTPNoPort", []string{"--http", "localhost"}, `worker: invalid --http "localhost": want host:port`},
		{"HTTPBadPort", []string{"--http", ":99999"}, `worker: invalid --http ":99999"`},
		{"HTTPNamedPort", []string{"--http", ":http"}, `worker: invalid --http ":http"`},
		{"HTTPUserWithoutPassword", []string{"--http-user", "admin"},
			"worker: --http-user / AFTERCOMMIT_HTTP_USER is set but --http-password / AFTERCOMMIT_HTTP_PASSWORD is not"},
		{"HTTPPasswordWithoutUser", []string{"--http-password", "s3cret"},
			"worker: --http-password / AFTERCOMMIT_HTTP_PASSWORD is set but --http-user / AFTERCOMMIT_HTTP_USER is not"},
		{"HTTPUserWithColon", []string{"--http-user", "ad:min", "--http-password", "s3cret"},
			`worker: invalid --http-user "ad:min": a basic auth user cannot contain ':'`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr testlog.Buffer
			code := run(context.Background(), tt.args, noEnv, &stdout, &stderr)
			require.Equal(t, exitUsage, code)
			require.Empty(t, stdout.String())
			lines := strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n")
			require.Len(t, lines, 1, "want one line, got:\n%s", stderr.String())
			require.Contains(t, lines[0], tt.want)
			require.NotContains(t, lines[0], "s3cret")
		})
	}
}

func TestRunBadEnvironment(t *testing.T) {
	t.Parallel()

	env := map[string]string{"AFTERCOMMIT_MAX_WORKERS": "lots"}
	var stdout, stderr testlog.Buffer
	code := run(context.Background(), nil, func(k string) string { return env[k] }, &stdout, &stderr)
	require.Equal(t, exitUsage, code)
	require.Equal(t, `worker: invalid AFTERCOMMIT_MAX_WORKERS "lots": want a whole number from 0 (each queue's own) to 10000`+"\n", stderr.String())
}

func TestRunHelp(t *testing.T) {
	t.Parallel()

	var stdout, stderr testlog.Buffer
	env := map[string]string{"DATABASE_URL": "postgres://u:s3cret@db/app"}
	code := run(context.Background(), []string{"--help"}, func(k string) string { return env[k] }, &stdout, &stderr)
	require.Equal(t, exitOK, code)
	require.Empty(t, stderr.String())
	env["AFTERCOMMIT_HTTP_PASSWORD"] = "pa55word"
	env["AFTERCOMMIT_HTTP_USER"] = "admin"
	for _, want := range []string{"-database-url", "DATABASE_URL", "-schema", "AFTERCOMMIT_SCHEMA", "-queues",
		"-max-workers", "-shutdown-timeout", "-log-level", "-http", "AFTERCOMMIT_HTTP", "127.0.0.1:9090",
		"-http-user", "AFTERCOMMIT_HTTP_USER", "-http-password", "AFTERCOMMIT_HTTP_PASSWORD",
		"-job-timeout", "AFTERCOMMIT_JOB_TIMEOUT", "-rescue-after", "AFTERCOMMIT_RESCUE_AFTER", "-reindexer", "AFTERCOMMIT_REINDEXER"} {
		require.Contains(t, stdout.String(), want)
	}
	require.NotContains(t, stdout.String(), "s3cret", "--help never prints the environment's URL")
	require.NotContains(t, stdout.String(), "pa55word", "--help never prints the environment's password")
}

func TestRunUnreachableDatabase(t *testing.T) {
	t.Parallel()

	var stdout, stderr testlog.Buffer
	code := run(context.Background(),
		[]string{"--database-url", "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=2"},
		noEnv, &stdout, &stderr)
	require.Equal(t, exitFailure, code)
	require.Empty(t, stdout.String())
	out := stderr.String()
	require.Equal(t, 1, strings.Count(out, "\n"), "want exactly one line, got:\n%s", out)
	require.True(t, strings.HasSuffix(out, "\n"))
	require.Contains(t, out, "127.0.0.1:1")
	require.Contains(t, out, "start Postgres or set DATABASE_URL / --database-url")
}

func TestRunSchemaNotMigrated(t *testing.T) {
	t.Parallel()

	var stdout, stderr testlog.Buffer
	// A schema that does not exist has no tables at all; nothing is created.
	code := run(context.Background(),
		[]string{"--database-url", dbtest.ServerURL(t), "--schema", "aftercommit_worker_test_not_migrated"},
		noEnv, &stdout, &stderr)
	require.Equal(t, exitFailure, code)
	out := stderr.String()
	require.Equal(t, 1, strings.Count(out, "\n"), "want exactly one line, got:\n%s", out)
	require.Contains(t, out, "aftercommit_worker_test_not_migrated")
	require.Contains(t, out, "run `go run ./cmd/aftercommit migrate up` first")
}

func TestParseConfig(t *testing.T) {
	t.Parallel()

	t.Run("Defaults", func(t *testing.T) {
		t.Parallel()
		cfg, err := parseConfig(nil, noEnv, &testlog.Buffer{})
		require.NoError(t, err)
		require.Equal(t, "127.0.0.1", cfg.pool.ConnConfig.Host)
		require.Equal(t, uint16(5432), cfg.pool.ConnConfig.Port)
		require.Empty(t, cfg.schema)
		require.NotContains(t, cfg.pool.ConnConfig.RuntimeParams, "search_path")
		require.Nil(t, cfg.queues, "every declared queue")
		require.Equal(t, maxWorkersDefault, cfg.maxWorkers)
		require.Equal(t, shutdownTimeoutDefault, cfg.shutdownTimeout)
		require.Equal(t, "INFO", cfg.logLevel.String())
		require.Equal(t, connectTimeoutDefault, cfg.pool.ConnConfig.ConnectTimeout)
		require.Equal(t, int32(maxConnsDefault), cfg.pool.MaxConns)
		require.Equal(t, "127.0.0.1:9090", cfg.httpAddr)
		require.Empty(t, cfg.httpUser)
		require.Empty(t, cfg.httpPassword)
		require.Equal(t, time.Minute, cfg.jobTimeout)
		require.Equal(t, 5*time.Minute, cfg.rescueAfter)
		require.True(t, cfg.reindexer)
		require.Nil(t, cfg.listen, "River and the relay listen on the pool")
		require.False(t, cfg.pollOnly)
	})

	// Behind a pooler in transaction mode: LISTEN on a direct URL, in the
	// schema of the pool, or nowhere.
	t.Run("ListenDatabaseURL", func(t *testing.T) {
		t.Parallel()
		cfg, err := parseConfig([]string{"--database-url", "postgres://app@pgbouncer:6432/app?default_query_exec_mode=exec",
			"--listen-database-url", "postgres://app@db:5432/app", "--schema", "jobs"}, noEnv, &testlog.Buffer{})
		require.NoError(t, err)
		require.Equal(t, "db", cfg.listen.ConnConfig.Host)
		require.Equal(t, int32(listenMaxConns), cfg.listen.MaxConns)
		require.Equal(t, `"jobs"`, cfg.listen.ConnConfig.RuntimeParams["search_path"])
		require.False(t, cfg.pollOnly)
		require.False(t, riverConfig(cfg).PollOnly)

		cfg, err = parseConfig(nil, func(k string) string {
			return map[string]string{"AFTERCOMMIT_LISTEN_DATABASE_URL": "off"}[k]
		}, &testlog.Buffer{})
		require.NoError(t, err)
		require.Nil(t, cfg.listen)
		require.True(t, cfg.pollOnly)
		require.True(t, riverConfig(cfg).PollOnly)
	})

	t.Run("Environment", func(t *testing.T) {
		t.Parallel()
		env := map[string]string{
			"DATABASE_URL":                 "postgres://app@db.internal:6543/app?connect_timeout=3&pool_max_conns=7",
			"AFTERCOMMIT_SCHEMA":           "Tenant One",
			"AFTERCOMMIT_QUEUES":           "default, mail ,reports",
			"AFTERCOMMIT_MAX_WORKERS":      "8",
			"AFTERCOMMIT_SHUTDOWN_TIMEOUT": "2m",
			"AFTERCOMMIT_LOG_LEVEL":        "debug",
			"AFTERCOMMIT_HTTP":             ":9191",
			"AFTERCOMMIT_HTTP_USER":        "admin",
			"AFTERCOMMIT_HTTP_PASSWORD":    "pa55:word",
			"AFTERCOMMIT_JOB_TIMEOUT":      "30s",
			"AFTERCOMMIT_RESCUE_AFTER":     "2m",
			"AFTERCOMMIT_REINDEXER":        "off",
		}
		cfg, err := parseConfig(nil, func(k string) string { return env[k] }, &testlog.Buffer{})
		require.NoError(t, err)
		require.Equal(t, "db.internal", cfg.pool.ConnConfig.Host)
		require.Equal(t, uint16(6543), cfg.pool.ConnConfig.Port)
		require.Equal(t, "Tenant One", cfg.schema)
		require.Equal(t, `"Tenant One"`, cfg.pool.ConnConfig.RuntimeParams["search_path"])
		require.Equal(t, []string{"default", "mail", "reports"}, cfg.queues)
		require.Equal(t, 8, cfg.maxWorkers)
		require.Equal(t, 2*time.Minute, cfg.shutdownTimeout)
		require.Equal(t, "DEBUG", cfg.logLevel.String())
		require.Equal(t, 3*time.Second, cfg.pool.ConnConfig.ConnectTimeout)
		require.Equal(t, int32(7), cfg.pool.MaxConns)
		require.Equal(t, ":9191", cfg.httpAddr)
		require.Equal(t, "admin", cfg.httpUser)
		require.Equal(t, "pa55:word", cfg.httpPassword)
		require.Equal(t, 30*time.Second, cfg.jobTimeout)
		require.Equal(t, 2*time.Minute, cfg.rescueAfter)
		require.False(t, cfg.reindexer)
		rc := riverConfig(cfg)
		require.Equal(t, 30*time.Second, rc.JobTimeout)
		require.Equal(t, 2*time.Minute, rc.RescueStuckJobsAfter)
		require.NotNil(t, rc.ReindexerSchedule, "the reindexer never runs")
		require.True(t, rc.ReindexerSchedule.Next(time.Now()).After(time.Now().AddDate(100, 0, 0)), "never: %s", rc.ReindexerSchedule.Next(time.Now()))
	})

	t.Run("HTTPOff", func(t *testing.T) {
		t.Parallel()
		for _, args := range [][]string{{"--http", ""}, {"--http", "off"}, {"--http=off"}} {
			cfg, err := parseConfig(args, noEnv, &testlog.Buffer{})
			require.NoError(t, err)
			require.Empty(t, cfg.httpAddr, "%q", args)
		}
		// An empty variable is unset; "off" is how the environment turns
		// HTTP off.
		cfg, err := parseConfig(nil, func(k string) string { return map[string]string{"AFTERCOMMIT_HTTP": "off"}[k] },
			&testlog.Buffer{})
		require.NoError(t, err)
		require.Empty(t, cfg.httpAddr)
		// The flag, even empty, overrides the environment.
		cfg, err = parseConfig([]string{"--http", ""},
			func(k string) string { return map[string]string{"AFTERCOMMIT_HTTP": ":9191"}[k] }, &testlog.Buffer{})
		require.NoError(t, err)
		require.Empty(t, cfg.httpAddr)
	})

	t.Run("FlagsOverrideEnvironment", func(t *testing.T) {
		t.Parallel()
		env := map[string]string{"AFTERCOMMIT_QUEUES": "mail", "AFTERCOMMIT_MAX_WORKERS": "0"}
		cfg, err := parseConfig([]string{"--queues", "reports", "--max-workers", "3"},
			func(k string) string { return env[k] }, &testlog.Buffer{})
		require.NoError(t, err)
		require.Equal(t, []string{"reports"}, cfg.queues)
		require.Equal(t, 3, cfg.maxWorkers)
	})
}

func TestRunAppTablesNotMigrated(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	// A scratch schema with River's tables only, dropped at the end.
	schema := fmt.Sprintf("worker_test_river_only_%d", time.Now().UnixNano())
	admin, err := pgxpool.New(ctx, dbtest.ServerURL(t))
	require.NoError(t, err)
	t.Cleanup(admin.Close)
	_, err = admin.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize())
	require.NoError(t, err)
	t.Cleanup(func() {
		_, err := admin.Exec(context.Background(), "DROP SCHEMA "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
		require.NoError(t, err)
	})
	migrator, err := rivermigrate.New(riverpgxv5.New(admin), &rivermigrate.Config{Schema: schema})
	require.NoError(t, err)
	_, err = migrator.Migrate(ctx, rivermigrate.DirectionUp, nil)
	require.NoError(t, err)

	var stdout, stderr testlog.Buffer
	code := run(ctx, []string{"--database-url", dbtest.ServerURL(t), "--schema", schema}, noEnv, &stdout, &stderr)
	require.Equal(t, exitFailure, code)
	out := stderr.String()
	require.Equal(t, 1, strings.Count(out, "\n"), "want exactly one line, got:\n%s", out)
	require.Contains(t, out, "aftercommit's tables in schema '"+schema+"' are at migration 0")
	require.Contains(t, out, "run `go run ./cmd/aftercommit migrate up` first")
}

// A well-formed queue that no domain declared is refused at start, naming
// it, instead of a worker that silently never sees a job.
func TestRunUndeclaredQueue(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(ctx, t)

	var stdout, stderr testlog.Buffer
	code := run(ctx, b.args(t, "--queues", "default,mail"), noEnv, &stdout, &stderr)
	require.Equal(t, exitFailure, code)
	out := stderr.String()
	require.Equal(t, 1, strings.Count(out, "\n"), "want exactly one line, got:\n%s", out)
	require.Contains(t, out, "worker: jobs: registry: unknown queue(s) mail; declared: default")
}
