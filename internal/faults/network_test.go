//go:build long

package faults_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbconn"
	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/testlog"
	"github.com/aftercommit/aftercommit/jobs"
)

// Bounds of the network fault test. River's elector tries every 5 s (+ up to
// 1 s jitter) and its leader TTL is 15 s; the client polls for jobs every
// netPollInterval, so a job that starts within netFastStart of its insert
// was fetched on its insert notification, which proves the LISTEN
// connection is back.
const (
	netPollInterval    = 5 * time.Second
	netFastStart       = time.Second
	netFastSpan        = netPollInterval + time.Second // a run of fast starts longer than one poll
	netLeaderTTL       = 15 * time.Second
	netNotifierBound   = 15 * time.Second
	netLeaderBound     = 25 * time.Second
	netRecoveryTimeout = 30 * time.Second
	netInsertEvery     = 50 * time.Millisecond // 20 jobs/s
	// netDrainTimeout leaves room for a rescue: RescueStuckJobsAfter 15 s,
	// River's rescuer every 30 s, its scheduler every 5 s.
	netDrainTimeout = 90 * time.Second
)

// netFault is one phase of TestNetworkFaults: toxics added to both
// directions of the proxy for a while, then removed.
type netFault struct {
	name   string
	toxic  string // toxiproxy type
	attrs  string // its attributes, JSON
	length time.Duration
}

// netPhase is a stretch of the run, in database time.
type netPhase struct {
	name       string
	start, end time.Time
	// set on the recovery phase that follows a fault
	notifier, leader time.Duration
}

func (p *netPhase) isRecovery() bool { return strings.HasPrefix(p.name, "after ") }

func (p *netPhase) isFault() bool {
	return p.name != "baseline" && p.name != "drain" && !p.isRecovery()
}

// TestNetworkFaults runs an in-process worker (the jobs package's River
// client, 20 workers) whose every database connection goes through an
// in-process toxiproxy, while the test inserts 20 ping jobs a second
// directly. The network is made faulty three times: 2 s of latency each
// way, a stall (every byte dropped, connections left open), and resets
// (every connection reset as soon as it sends). After each fault is
// removed the test waits until the notifier is back (jobs start on their
// insert notification again, not on the 5 s poll) and the client has
// refreshed its leadership, and reports how long each took. At the end
// every job has completed and every row was marked exactly once, by the
// same client, which never stopped.
func TestNetworkFaults(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 4})

	u, err := url.Parse(s.URL)
	require.NoError(t, err, "the test database must be given as a URL")
	upstream := u.Host
	if _, _, err := net.SplitHostPort(upstream); err != nil {
		upstream = net.JoinHostPort(upstream, "5432")
	}
	proxy := toxiproxy.NewProxy(toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop()),
		"postgres", "127.0.0.1:0", upstream)
	require.NoError(t, proxy.Start())
	t.Cleanup(proxy.Stop)
	u.Host = proxy.Listen

	// The worker's pool, through the proxy. ConnectTimeout bounds a connect
	// into a stalled network (pgx has none by default).
	// dbconn gives it cmd/worker's dead-peer detection (keepalives, TCP
	// user timeout).
	wcfg, err := dbconn.ParseConfig(u.String(), &dbconn.Opts{MaxConns: 8, ConnectTimeout: 5 * time.Second})
	require.NoError(t, err)
	wcfg.ConnConfig.RuntimeParams["application_name"] = "aftercommit-netfaults-" + s.Name
	wpool, err := pgxpool.NewWithConfig(ctx, wcfg)
	require.NoError(t, err)
	t.Cleanup(wpool.Close)

	var logBuf testlog.Buffer
	logger := slog.New(slog.NewTextHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelWarn}))
	reg := jobs.NewRegistry()
	jobs.RegisterPing(reg, wpool)
	client, err := jobs.NewClient(wpool, reg, &jobs.ClientConfig{
		Schema:     s.Name,
		Queues:     []string{river.QueueDefault},
		MaxWorkers: 20,
		Logger:     logger,
		// A job whose statement the stalled network swallowed waits for
		// its job timeout, which cancels it. A job fetched (set running)
		// by a fetch whose answer the fault lost is known to no process:
		// the rescuer retries it after RescueStuckJobsAfter. Both are
		// short here so the backlog drains within the test.
		River: &river.Config{FetchPollInterval: netPollInterval, JobTimeout: 10 * time.Second, RescueStuckJobsAfter: 15 * time.Second},
	})
	require.NoError(t, err)
	clientID := client.ID()
	require.NoError(t, client.Start(ctx))
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			stopCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			_ = client.Stop(stopCtx)
		}
	})

	// The inserter writes each ping row and its job in one transaction,
	// directly (not through the proxy), 20 a second, until told to stop.
	inserter, err := river.NewClient(riverpgxv5.New(s.Pool), &river.Config{Schema: s.Name})
	require.NoError(t, err)
	insertCtx, stopInserting := context.WithCancel(ctx)
	insertDone := make(chan error, 1)
	go func() {
		ticker := time.NewTicker(netInsertEvery)
		defer ticker.Stop()
		for {
			select {
			case <-insertCtx.Done():
				insertDone <- nil
				return
			case <-ticker.C:
			}
			// Under ctx, not insertCtx: stopping the inserter never cuts a
			// transaction short, so none can commit on the server after
			// the inserter said it is done (an in-doubt COMMIT would land
			// a job after the drain was counted).
			err := pgx.BeginFunc(ctx, s.Pool, func(tx pgx.Tx) error {
				var id int64
				if err := tx.QueryRow(ctx, `INSERT INTO pings (note) VALUES ('net') RETURNING id`).Scan(&id); err != nil {
					return err
				}
				_, err := inserter.InsertTx(ctx, tx, jobs.PingArgs{PingID: id, SleepMS: 10}, nil)
				return err
			})
			if err != nil {
				insertDone <- err
				return
			}
		}
	}()
	defer stopInserting()

	dbNow := func() time.Time {
		var now time.Time
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT now()`).Scan(&now))
		return now
	}
	checkAlive := func() {
		select {
		case err := <-insertDone:
			t.Fatalf("the inserter stopped: %v", err)
		case <-client.Stopped():
			t.Fatalf("the client stopped by itself; log:\n%s", &logBuf)
		default:
		}
	}
	wait := func(d time.Duration) {
		deadline := time.Now().Add(d)
		for time.Now().Before(deadline) {
			checkAlive()
			time.Sleep(100 * time.Millisecond)
		}
	}

	var phases []*netPhase
	begin := func(name string) *netPhase {
		now := dbNow()
		if len(phases) > 0 {
			phases[len(phases)-1].end = now
		}
		p := &netPhase{name: name, start: now}
		phases = append(phases, p)
		return p
	}

	begin("baseline")
	wait(4 * time.Second)
	for _, f := range []netFault{
		{"latency 2 s each way", "latency", `{"latency": 2000}`, 8 * time.Second},
		{"stall (bytes dropped)", "timeout", `{"timeout": 0}`, 6 * time.Second},
		{"reset_peer", "reset_peer", `{"timeout": 0}`, 6 * time.Second},
	} {
		begin(f.name)
		for _, stream := range []string{"upstream", "downstream"} {
			_, err := proxy.Toxics.AddToxicJson(strings.NewReader(fmt.Sprintf(
				`{"name": %q, "type": %q, "stream": %q, "attributes": %s}`, f.toxic+"_"+stream, f.toxic, stream, f.attrs)))
			require.NoError(t, err)
		}
		wait(f.length)
		for _, stream := range []string{"upstream", "downstream"} {
			require.NoError(t, proxy.Toxics.RemoveToxic(ctx, f.toxic+"_"+stream))
		}
		p := begin("after " + f.name)
		var notifierOK, leaderOK bool
		deadline := time.Now().Add(netRecoveryTimeout)
		for !notifierOK || !leaderOK {
			checkAlive()
			require.True(t, time.Now().Before(deadline),
				"%s: not recovered %s after the fault was removed (notifier %t, leader %t); log:\n%s",
				f.name, netRecoveryTimeout, notifierOK, leaderOK, &logBuf)
			time.Sleep(200 * time.Millisecond)
			if !notifierOK {
				p.notifier, notifierOK = notifierRecovery(ctx, t, s.Pool, p.start)
			}
			if !leaderOK {
				p.leader, leaderOK = leaderRecovery(ctx, t, s.Pool, clientID, p.start)
			}
		}
	}
	end := begin("drain")
	stopInserting()
	require.NoError(t, <-insertDone)
	checkAlive()

	// The jobs are counted while they drain, not once before.
	var n int
	drained := false
	for deadline := time.Now().Add(netDrainTimeout); !drained && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		var done int
		err := s.Pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE state = 'completed') FROM river_job WHERE kind = $1`, jobs.PingKind).Scan(&n, &done)
		drained = err == nil && done == n
	}
	if !drained {
		var states, conns string
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT string_agg(state::text || '=' || n, ' ') FROM (SELECT state, count(*) AS n FROM river_job GROUP BY state) c`).Scan(&states))
		require.NoError(t, s.Pool.QueryRow(ctx, `
SELECT coalesce(string_agg(state || ' ' || coalesce(wait_event, '-') || ' ' || left(query, 60), E'\n'), '')
  FROM pg_stat_activity WHERE application_name = left($1, 63)`, "aftercommit-netfaults-"+s.Name).Scan(&conns))
		t.Fatalf("not every one of %d jobs completed within %s: %s\nthe worker's connections:\n%s\nlog:\n%s", n, netDrainTimeout, states, conns, &logBuf)
	}
	end.end = dbNow()

	// Still the same client: it never stopped, it is the leader, and it
	// stops cleanly.
	checkAlive()
	var leader string
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT leader_id FROM river_leader`).Scan(&leader))
	require.Equal(t, clientID, leader)
	stopCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	stopped = true
	require.NoError(t, client.Stop(stopCtx), "log:\n%s", &logBuf)

	var nRows, marked, twice, retried, rescued int
	require.NoError(t, s.Pool.QueryRow(ctx, `
SELECT count(*), count(*) FILTER (WHERE ping_count = 1), count(*) FILTER (WHERE ping_count > 1),
       (SELECT count(*) FROM river_job WHERE kind = $1 AND attempt > 1),
       (SELECT count(*) FROM river_job WHERE kind = $1 AND metadata ? 'river:rescue_count')
  FROM pings`, jobs.PingKind).Scan(&nRows, &marked, &twice, &retried, &rescued))

	// Each job is counted under the fault it was in flight during, else
	// under the phase it was inserted in.
	rows, err := s.Pool.Query(ctx, `
SELECT created_at, attempted_at, finalized_at, attempt FROM river_job WHERE kind = $1 ORDER BY id`, jobs.PingKind)
	require.NoError(t, err)
	type jobTimes struct {
		created, attempted, finalized time.Time
		attempt                       int
	}
	all, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (jobTimes, error) {
		var j jobTimes
		return j, r.Scan(&j.created, &j.attempted, &j.finalized, &j.attempt)
	})
	require.NoError(t, err)
	type stat struct {
		jobs                  int
		worstDone, worstStart time.Duration
	}
	stats := make([]stat, len(phases))
	for _, j := range all {
		at := -1
		for i, p := range phases {
			if p.isFault() && j.created.Before(p.end) && j.finalized.After(p.start) {
				at = i
				break
			}
		}
		for i := len(phases) - 1; at < 0 && i >= 0; i-- {
			if !j.created.Before(phases[i].start) {
				at = i
			}
		}
		st := &stats[at]
		st.jobs++
		st.worstDone = max(st.worstDone, j.finalized.Sub(j.created))
		if j.attempt == 1 {
			st.worstStart = max(st.worstStart, j.attempted.Sub(j.created))
		}
	}

	var b strings.Builder
	fmt.Fprintf(&b, "%d jobs inserted at 20/s; worker through toxiproxy (poll %s, 20 workers, pool of 8):\n", n, netPollInterval)
	fmt.Fprintf(&b, "| %-27s | %6s | %4s | %11s | %11s | %13s | %11s |\n", "phase", "length", "jobs", "worst done", "worst start", "notifier back", "leader back")
	for i, p := range phases {
		notifier, leaderBack := "", ""
		if p.isRecovery() {
			notifier, leaderBack = seconds(p.notifier), seconds(p.leader)
		}
		fmt.Fprintf(&b, "| %-27s | %6s | %4d | %11s | %11s | %13s | %11s |\n", p.name, seconds(p.end.Sub(p.start)), stats[i].jobs,
			seconds(stats[i].worstDone), seconds(stats[i].worstStart), notifier, leaderBack)
	}
	fmt.Fprintf(&b, "rows %d, jobs %d, all completed, rows marked once %d, twice or more %d, jobs retried %d (of which rescued, their fetch's answer lost: %d); client log lines at warn or above: %d",
		nRows, n, marked, twice, retried, rescued, strings.Count(logBuf.String(), "\n"))
	t.Log(b.String())
	if testing.Verbose() {
		t.Logf("client log:\n%s", &logBuf)
	}

	require.Equal(t, nRows, n, "one job per row")
	require.Equal(t, n, marked, "every row marked once")
	require.Zero(t, twice, "no row marked twice")
	require.Less(t, stats[0].worstDone, netPollInterval, "baseline: jobs start on their insert notification")
	for i, p := range phases {
		if p.isFault() {
			require.Greater(t, stats[i].worstDone, 2*time.Second, "%s: the fault delayed the jobs in flight (the proxy is in the path)", p.name)
		}
		if !p.isRecovery() {
			continue
		}
		require.LessOrEqual(t, p.notifier, netNotifierBound, "%s: notifier recovery", p.name)
		require.LessOrEqual(t, p.leader, netLeaderBound, "%s: leader recovery", p.name)
	}
}

// notifierRecovery reports whether jobs inserted since removed start on
// their insert notification again, and how long after removed that began:
// the created_at of the first job of a run of jobs, all started within
// netFastStart, that spans more than one poll interval.
func notifierRecovery(ctx context.Context, t *testing.T, pool *pgxpool.Pool, removed time.Time) (time.Duration, bool) {
	t.Helper()
	rows, err := pool.Query(ctx, `
SELECT created_at, attempted_at - created_at, now() - created_at
  FROM river_job WHERE kind = $1 AND created_at >= $2 ORDER BY created_at, id`, jobs.PingKind, removed)
	require.NoError(t, err)
	type jobStart struct {
		created    time.Time
		start, age *time.Duration
	}
	starts, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (jobStart, error) {
		var j jobStart
		return j, r.Scan(&j.created, &j.start, &j.age)
	})
	require.NoError(t, err)
	run := -1
	for i, j := range starts {
		switch {
		case j.start == nil && *j.age < netFastStart:
			return 0, false // too young to tell yet
		case j.start == nil || *j.start >= netFastStart:
			run = -1
		case run < 0:
			run = i
		}
		if run >= 0 && j.created.Sub(starts[run].created) >= netFastSpan {
			return starts[run].created.Sub(removed), true
		}
	}
	return 0, false
}

// leaderRecovery reports whether the client has been (re)elected or has
// refreshed its leadership since removed, and how long after removed: the
// leader row's expires_at is set to now() + TTL by each election.
func leaderRecovery(ctx context.Context, t *testing.T, pool *pgxpool.Pool, clientID string, removed time.Time) (time.Duration, bool) {
	t.Helper()
	var id string
	var expires time.Time
	err := pool.QueryRow(ctx, `SELECT leader_id, expires_at FROM river_leader`).Scan(&id, &expires)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false
	}
	require.NoError(t, err)
	at := expires.Add(-netLeaderTTL)
	if id != clientID || at.Before(removed) {
		return 0, false
	}
	return at.Sub(removed), true
}

func seconds(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }
