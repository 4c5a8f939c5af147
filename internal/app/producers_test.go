package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/app"
	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/jobstest"
	"github.com/aftercommit/aftercommit/jobs"
)

// These tests enqueue the way a user outside Go does: psql, a trigger, a
// Python program with psycopg 3. Each writes outbox rows with plain SQL in
// its own transaction over its own connection; the registry's Go workers,
// fed by the relay jobstest.Client starts, run what committed and nothing
// else. No test measures how soon a job starts after COMMIT: they wait
// (generously) for the outcome and then assert exact rows.

// python is the interpreter that has psycopg 3 (Debian's python3-psycopg).
// A python3 found on PATH may be another one (a pyenv shim) without it.
const python = "/usr/bin/python3"

// producerWait bounds every wait for a job to run: generous, since only
// the outcome is asserted, never the time it took.
const producerWait = 60 * time.Second

type producerBundle struct {
	s      *dbtest.Schema
	client *river.Client[pgx.Tx]
	reg    *jobs.Registry
	url    string // libpq's form of s.URL, for psql and psycopg
}

func producerSetup(ctx context.Context, t *testing.T) *producerBundle {
	t.Helper()
	s := dbtest.TestSchema(ctx, t, nil)
	reg := app.Registry(s.Pool, nil)
	require.NoError(t, reg.Err())
	client, _ := jobstest.Client(ctx, t, s, reg, jobstest.Opts{
		Work:  true,
		River: &river.Config{FetchCooldown: 10 * time.Millisecond, FetchPollInterval: 50 * time.Millisecond},
	})
	return &producerBundle{s: s, client: client, reg: reg, url: libpqURL(t, s)}
}

// libpqURL turns s.URL, whose search_path query parameter only pgx
// understands (libpq refuses it: `invalid URI query parameter`), into the
// URL libpq programs take: the same server with
// options=-c search_path=<schema>.
func libpqURL(t *testing.T, s *dbtest.Schema) string {
	t.Helper()
	u, err := url.Parse(s.URL)
	require.NoError(t, err, "dbtest's schema URL must be a URL for psql and psycopg")
	q := u.Query()
	require.Equal(t, s.Name, q.Get("search_path"), "dbtest's schema URL carries search_path")
	q.Del("search_path")
	q.Set("options", "-c search_path="+s.Name)
	// libpq decodes %20, not the '+' Encode writes for a space (a literal
	// '+' is encoded as %2B, so this touches spaces only).
	u.RawQuery = strings.ReplaceAll(q.Encode(), "+", "%20")
	return u.String()
}

func lookPsql(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("psql")
	if err != nil {
		t.Fatalf("psql is not on PATH (%v): install the PostgreSQL client, e.g. `apt-get install postgresql-client`", err)
	}
	return path
}

// psqlCmd is psql as a user runs a script: no ~/.psqlrc, stop at the
// first error, quiet (no command tags), unaligned tuples only, script on
// stdin.
func psqlCmd(ctx context.Context, t *testing.T, dsn, script string, vars ...string) *exec.Cmd {
	t.Helper()
	args := []string{"-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"}
	for _, v := range vars {
		args = append(args, "-v", v)
	}
	args = append(args, "-d", dsn, "-f", "-")
	cmd := exec.CommandContext(ctx, lookPsql(t), args...)
	cmd.Stdin = strings.NewReader(script)
	cmd.Env = append(os.Environ(), "PGAPPNAME=aftercommit-producers-test")
	return cmd
}

// runPsql runs script and returns its stdout; psql failing fails t.
func runPsql(ctx context.Context, t *testing.T, dsn, script string) string {
	t.Helper()
	cmd := psqlCmd(ctx, t, dsn, script)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), "psql: %s", stderr.String())
	return stdout.String()
}

// int64Fields parses the whitespace-separated integers psql printed.
func int64Fields(t *testing.T, out string) []int64 {
	t.Helper()
	var ids []int64
	for _, f := range strings.Fields(out) {
		id, err := strconv.ParseInt(f, 10, 64)
		require.NoError(t, err, "psql printed %q", out)
		ids = append(ids, id)
	}
	return ids
}

// producerOut is what testdata/producer.py prints.
type producerOut struct {
	PingID       int64 `json:"ping_id"`
	OutboxID     int64 `json:"outbox_id"`
	GoodOutboxID int64 `json:"good_outbox_id"`
}

// runProducer runs testdata/producer.py against dsn in mode.
func runProducer(ctx context.Context, t *testing.T, dsn, mode string) producerOut {
	t.Helper()
	if _, err := os.Stat(python); err != nil {
		t.Fatalf("%s is missing (%v): the Python producer test needs Debian's python3 with psycopg 3: `apt-get install python3 python3-psycopg`", python, err)
	}
	script, err := filepath.Abs(filepath.Join("testdata", "producer.py"))
	require.NoError(t, err)
	cmd := exec.CommandContext(ctx, python, script, dsn, mode)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s %s: %v\n%s(psycopg 3 missing? `apt-get install python3-psycopg`)", python, script, mode, err, stderr.String())
	}
	var out producerOut
	require.NoError(t, json.Unmarshal(stdout.Bytes(), &out), "producer.py printed %q", stdout.String())
	require.Positive(t, out.PingID)
	require.Positive(t, out.OutboxID)
	return out
}

// waitPinged waits until the ping job of each of ids has completed, then
// asserts exactly one river_job row per ping, completed, of the ping kind
// with args {"ping_id": id}, and ping_count = 1 on its row.
func waitPinged(ctx context.Context, t *testing.T, s *dbtest.Schema, ids ...int64) {
	t.Helper()
	require.Eventually(t, func() bool {
		var done int
		require.NoError(t, s.Pool.QueryRow(ctx, `
			SELECT count(*) FROM river_job
			 WHERE kind = $1 AND state = 'completed' AND args->'ping_id' = ANY (SELECT to_jsonb(i) FROM unnest($2::bigint[]) AS i)`,
			jobs.PingKind, ids).Scan(&done))
		return done == len(ids)
	}, producerWait, 20*time.Millisecond, "ping jobs for %v never completed", ids)

	for _, id := range ids {
		rows, err := s.Pool.Query(ctx, `
			SELECT kind, args::text, state::text FROM river_job
			 WHERE args->'ping_id' = to_jsonb($1::bigint) ORDER BY id`, id)
		require.NoError(t, err)
		type jobRow struct {
			Kind, Args, State string
		}
		got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[jobRow])
		require.NoError(t, err)
		require.Len(t, got, 1, "ping %d: one job", id)
		require.Equal(t, jobs.PingKind, got[0].Kind)
		require.Equal(t, "completed", got[0].State)
		require.JSONEq(t, fmt.Sprintf(`{"ping_id": %d}`, id), got[0].Args)

		var count int
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT ping_count FROM pings WHERE id = $1`, id).Scan(&count))
		require.Equal(t, 1, count, "ping %d marked once", id)
	}
}

// requireNothing asserts that the rolled-back pings left no trace: no pings
// row, no outbox row (waiting or dead), no job.
func requireNothing(ctx context.Context, t *testing.T, s *dbtest.Schema, pingIDs []int64, outboxIDs []int64) {
	t.Helper()
	var pings, outbox, dead, jobRows int
	require.NoError(t, s.Pool.QueryRow(ctx, `
		SELECT (SELECT count(*) FROM pings WHERE id = ANY ($1)),
		       (SELECT count(*) FROM outbox_jobs WHERE id = ANY ($2) OR args->'ping_id' = ANY (SELECT to_jsonb(i) FROM unnest($1::bigint[]) AS i)),
		       (SELECT count(*) FROM outbox_dead_jobs WHERE id = ANY ($2) OR args->'ping_id' = ANY (SELECT to_jsonb(i) FROM unnest($1::bigint[]) AS i)),
		       (SELECT count(*) FROM river_job WHERE args->'ping_id' = ANY (SELECT to_jsonb(i) FROM unnest($1::bigint[]) AS i))`,
		pingIDs, outboxIDs).Scan(&pings, &outbox, &dead, &jobRows))
	require.Equal(t, [4]int{0, 0, 0, 0}, [4]int{pings, outbox, dead, jobRows},
		"rolled back: pings, outbox rows, dead rows, jobs for pings %v / outbox rows %v", pingIDs, outboxIDs)
}

// requireSettled asserts the end state of a test: the outbox is empty, no
// row died unless expected, and exactly wantPings ping jobs exist, all
// completed.
func requireSettled(ctx context.Context, t *testing.T, s *dbtest.Schema, wantPings, wantDead int) {
	t.Helper()
	var depth, dead, pingJobs, completed int
	require.NoError(t, s.Pool.QueryRow(ctx, `
		SELECT (SELECT depth FROM outbox_depth), (SELECT dead FROM outbox_depth),
		       (SELECT count(*) FROM river_job WHERE kind = $1),
		       (SELECT count(*) FROM river_job WHERE kind = $1 AND state = 'completed')`,
		jobs.PingKind).Scan(&depth, &dead, &pingJobs, &completed))
	require.Equal(t, [4]int{0, wantDead, wantPings, wantPings}, [4]int{depth, dead, pingJobs, completed},
		"outbox depth, dead rows, ping jobs, completed ping jobs")
}

// psqlCommitScript writes two pings and enqueues a job for each in ONE
// transaction — one with aftercommit_enqueue, one with a plain INSERT into
// outbox_jobs — and prints both ping ids. Before COMMIT it waits for the
// advisory lock :gate, which the test holds to look at the database while
// the transaction is open.
const psqlCommitScript = `
BEGIN;
INSERT INTO pings (note) VALUES ('from psql, aftercommit_enqueue') RETURNING id AS a \gset
SELECT aftercommit_enqueue('aftercommit.ping', jsonb_build_object('ping_id', :a)) AS outbox_a \gset
INSERT INTO pings (note) VALUES ('from psql, plain INSERT') RETURNING id AS b \gset
INSERT INTO outbox_jobs (kind, args) VALUES ('aftercommit.ping', jsonb_build_object('ping_id', :b));
SELECT 1 AS gated FROM pg_advisory_xact_lock(:gate) \gset
COMMIT;
\echo :a :b
`

// psqlRollbackScript is the same transaction ending in ROLLBACK; it prints
// the ping ids and outbox ids that never came to exist.
const psqlRollbackScript = `
BEGIN;
INSERT INTO pings (note) VALUES ('from psql, rolled back') RETURNING id AS a \gset
SELECT aftercommit_enqueue('aftercommit.ping', jsonb_build_object('ping_id', :a)) AS outbox_a \gset
INSERT INTO pings (note) VALUES ('from psql, rolled back plain') RETURNING id AS b \gset
INSERT INTO outbox_jobs (kind, args) VALUES ('aftercommit.ping', jsonb_build_object('ping_id', :b)) RETURNING id AS outbox_b \gset
ROLLBACK;
\echo :a :b :outbox_a :outbox_b
`

// psqlOneScript commits one ping and its job; the tests use it as a
// barrier: once its job ran, the relay has passed everything before it.
const psqlOneScript = `
BEGIN;
INSERT INTO pings (note) VALUES ('from psql, barrier') RETURNING id AS a \gset
SELECT aftercommit_enqueue('aftercommit.ping', jsonb_build_object('ping_id', :a)) AS outbox_a \gset
COMMIT;
\echo :a
`

// psqlTriggerDDL is the trigger example: every row inserted into
// producer_signups enqueues a ping job for its ping, in the inserting
// transaction.
const psqlTriggerDDL = `
CREATE TABLE producer_signups (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ping_id bigint NOT NULL REFERENCES pings (id)
);

CREATE FUNCTION producer_signups_enqueue() RETURNS trigger
    LANGUAGE plpgsql
AS $fn$
BEGIN
    PERFORM aftercommit_enqueue('aftercommit.ping', jsonb_build_object('ping_id', NEW.ping_id));
    RETURN NEW;
END
$fn$;

CREATE TRIGGER producer_signups_enqueue
    AFTER INSERT ON producer_signups
    FOR EACH ROW EXECUTE FUNCTION producer_signups_enqueue();
`

// psqlTriggerScript inserts three pings and three signups in one
// transaction, and prints the ping ids.
const psqlTriggerScript = `
BEGIN;
WITH p AS (
    INSERT INTO pings (note) SELECT 'from a trigger ' || i FROM generate_series(1, 3) AS i RETURNING id
)
INSERT INTO producer_signups (ping_id) SELECT id FROM p ORDER BY id RETURNING ping_id;
COMMIT;
`

// TestEnqueueFromPsql enqueues with psql as a user runs it: a committed
// transaction's jobs (aftercommit_enqueue and a plain INSERT INTO
// outbox_jobs) run on the Go worker, and are invisible to the relay until
// COMMIT; a rolled-back one leaves nothing; a trigger enqueues one job per
// inserted row.
func TestEnqueueFromPsql(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := producerSetup(ctx, t)

	t.Run("CommitRunsBoth", func(t *testing.T) {
		// Hold the gate, run the script up to it, look, then let it commit.
		gate := rand.Int64N(1<<31-1) + 1
		conn, err := b.s.Pool.Acquire(ctx)
		require.NoError(t, err)
		defer conn.Release()
		_, err = conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, gate)
		require.NoError(t, err)

		cmd := psqlCmd(ctx, t, b.url, psqlCommitScript, fmt.Sprintf("gate=%d", gate))
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		require.NoError(t, cmd.Start())
		waited := make(chan error, 1)
		go func() { waited <- cmd.Wait() }()
		unlocked := false
		defer func() {
			if !unlocked { // failed midway: let psql finish, reap it
				_, _ = conn.Exec(ctx, `SELECT pg_advisory_unlock($1)`, gate)
				if err := <-waited; err != nil { // reaped; the test has failed already
					t.Logf("psql, after the failure: %v", err)
				}
			}
		}()

		require.Eventually(t, func() bool {
			var waiting bool
			require.NoError(t, b.s.Pool.QueryRow(ctx, `
				SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
				                 AND classid = 0 AND objid::bigint = $1 AND objsubid = 1)`, gate).Scan(&waiting))
			return waiting
		}, producerWait, 10*time.Millisecond, "psql never reached the gate (its stderr is read once it exits)")

		// The psql transaction has written both outbox rows and not
		// committed: no one else sees them and a relay moves nothing.
		var depth, pingJobs int
		require.NoError(t, b.s.Pool.QueryRow(ctx, `
			SELECT (SELECT depth FROM outbox_depth), (SELECT count(*) FROM river_job WHERE kind = $1)`,
			jobs.PingKind).Scan(&depth, &pingJobs))
		require.Equal(t, [2]int{0, 0}, [2]int{depth, pingJobs}, "outbox depth and ping jobs before COMMIT")
		moved, err := jobstest.Relay(t, b.s, b.client, b.reg).MoveBatch(ctx)
		require.NoError(t, err)
		require.Zero(t, moved.Rows, "a relay moves nothing before COMMIT")

		_, err = conn.Exec(ctx, `SELECT pg_advisory_unlock($1)`, gate)
		require.NoError(t, err)
		unlocked = true
		require.NoError(t, <-waited, "psql: %s", stderr.String())

		ids := int64Fields(t, stdout.String())
		require.Len(t, ids, 2)
		waitPinged(ctx, t, b.s, ids...)
	})

	t.Run("RollbackLeavesNothing", func(t *testing.T) {
		ids := int64Fields(t, runPsql(ctx, t, b.url, psqlRollbackScript))
		require.Len(t, ids, 4)
		// A later committed job ran, so the relay has passed the point
		// where the rolled-back rows would have been.
		barrier := int64Fields(t, runPsql(ctx, t, b.url, psqlOneScript))
		require.Len(t, barrier, 1)
		waitPinged(ctx, t, b.s, barrier...)
		requireNothing(ctx, t, b.s, ids[:2], ids[2:])
	})

	t.Run("TriggerEnqueuesPerRow", func(t *testing.T) {
		runPsql(ctx, t, b.url, psqlTriggerDDL)
		ids := int64Fields(t, runPsql(ctx, t, b.url, psqlTriggerScript))
		require.Len(t, ids, 3)
		waitPinged(ctx, t, b.s, ids...)
	})

	// 2 committed + 1 barrier + 3 from the trigger; nothing dead or waiting.
	requireSettled(ctx, t, b.s, 6, 0)
}

// TestEnqueueFromPython enqueues from a Python program (psycopg 3,
// testdata/producer.py) in one transaction with its business row: a commit
// runs on the Go worker, a rollback leaves nothing, and rows the registry
// cannot decode (an unknown kind, a string ping_id) die in outbox_dead_jobs
// with the reason while the good row committed with them, and one committed
// after them, still run.
func TestEnqueueFromPython(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := producerSetup(ctx, t)

	t.Run("CommitRuns", func(t *testing.T) {
		out := runProducer(ctx, t, b.url, "commit")
		waitPinged(ctx, t, b.s, out.PingID)
	})

	t.Run("RollbackLeavesNothing", func(t *testing.T) {
		out := runProducer(ctx, t, b.url, "rollback")
		barrier := runProducer(ctx, t, b.url, "commit")
		waitPinged(ctx, t, b.s, barrier.PingID)
		requireNothing(ctx, t, b.s, []int64{out.PingID}, []int64{out.OutboxID})
	})

	t.Run("BadRowsDieGoodRowsRun", func(t *testing.T) {
		unknown := runProducer(ctx, t, b.url, "unknown-kind")
		badArgs := runProducer(ctx, t, b.url, "bad-args")
		after := runProducer(ctx, t, b.url, "commit")
		// Each bad row's transaction also enqueued a good ping for its row.
		waitPinged(ctx, t, b.s, unknown.PingID, badArgs.PingID, after.PingID)

		type deadRow struct {
			ID     int64
			Kind   string
			Args   string
			Reason string
		}
		rows, err := b.s.Pool.Query(ctx, `SELECT id, kind, args::text, reason FROM outbox_dead_jobs ORDER BY id`)
		require.NoError(t, err)
		dead, err := pgx.CollectRows(rows, pgx.RowToStructByPos[deadRow])
		require.NoError(t, err)
		require.Len(t, dead, 2)
		for _, d := range dead {
			t.Logf("dead outbox row %d (%s %s): %s", d.ID, d.Kind, d.Args, d.Reason)
		}

		require.Equal(t, unknown.OutboxID, dead[0].ID)
		require.Equal(t, "no.such.kind", dead[0].Kind)
		require.JSONEq(t, fmt.Sprintf(`{"ping_id": %d}`, unknown.PingID), dead[0].Args)
		require.Contains(t, dead[0].Reason, "unknown kind")
		require.Contains(t, dead[0].Reason, "no.such.kind")

		require.Equal(t, badArgs.OutboxID, dead[1].ID)
		require.Equal(t, jobs.PingKind, dead[1].Kind)
		require.JSONEq(t, `{"ping_id": "x"}`, dead[1].Args)
		require.Contains(t, dead[1].Reason, "ping_id")
		require.Contains(t, dead[1].Reason, "wrong type")

		var strayJobs int
		require.NoError(t, b.s.Pool.QueryRow(ctx, `
			SELECT count(*) FROM river_job WHERE kind = 'no.such.kind' OR args->>'ping_id' = 'x'`).Scan(&strayJobs))
		require.Zero(t, strayJobs, "a dead row never becomes a job")
	})

	// commit + barrier + the good rows of the two bad transactions + the
	// one after them; the two bad rows are dead.
	requireSettled(ctx, t, b.s, 5, 2)
}
