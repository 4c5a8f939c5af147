//go:build long

package faults_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbmigrate"
	"github.com/aftercommit/aftercommit/internal/testlog"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/outbox"
)

// replicaPair is a primary and a streaming standby of its own, on loopback
// ports.
type replicaPair struct {
	primary, standby *privateServer
	// link carries the replication stream of an asynchronous pair, 200 ms
	// late, so that a crash of the primary finds transactions it
	// acknowledged still on their way.
	link *toxiproxy.Proxy
}

// replicationLag is how late link delivers the primary's WAL.
const replicationLag = 200 * time.Millisecond

// startReplicaPair starts a primary, takes a base backup of it into a
// standby (pg_basebackup -R) and starts the standby streaming. With sync,
// the primary waits for the standby's flush at every commit
// (synchronous_standby_names, synchronous_commit on).
func startReplicaPair(t *testing.T, sync bool) *replicaPair {
	t.Helper()
	p := &replicaPair{primary: newPrivateServer(t), standby: newPrivateServer(t)}
	p.primary.Options = "-c wal_level=replica -c max_wal_senders=4 -c wal_keep_size=256MB"
	if sync {
		p.primary.Options += " -c synchronous_standby_names=standby1"
	}
	p.primary.run(t, "initdb", "-D", p.primary.Data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
	p.primary.pgctl(t, "start")
	t.Cleanup(func() { p.primary.stopQuietly() })

	p.standby.run(t, "pg_basebackup", "-h", "127.0.0.1", "-p", fmt.Sprint(p.primary.Port), "-U", "postgres",
		"-D", p.standby.Data, "-X", "stream", "-R", "--no-sync")
	// The standby's name, for synchronous_standby_names; the last
	// primary_conninfo in postgresql.auto.conf wins over -R's.
	walPort := p.primary.Port
	if !sync {
		p.link = toxiproxy.NewProxy(toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop()),
			"replication", "127.0.0.1:0", fmt.Sprintf("127.0.0.1:%d", p.primary.Port))
		require.NoError(t, p.link.Start())
		t.Cleanup(p.link.Stop)
		_, err := p.link.Toxics.AddToxicJson(strings.NewReader(fmt.Sprintf(
			`{"name": "lag", "type": "latency", "stream": "downstream", "attributes": {"latency": %d}}`, replicationLag.Milliseconds())))
		require.NoError(t, err)
		_, portStr, err := net.SplitHostPort(p.link.Listen)
		require.NoError(t, err)
		walPort, err = strconv.Atoi(portStr)
		require.NoError(t, err)
	}
	conninfo := fmt.Sprintf("\nprimary_conninfo = 'host=127.0.0.1 port=%d user=postgres application_name=standby1'\n", walPort)
	p.standby.appendFile(t, filepath.Join(p.standby.Data, "postgresql.auto.conf"), conninfo)
	p.standby.Options = "-c hot_standby=on"
	p.standby.pgctl(t, "start")
	t.Cleanup(func() { p.standby.stopQuietly() })

	ctx := context.Background()
	conn, err := pgx.Connect(ctx, p.primary.url())
	require.NoError(t, err)
	defer func() { _ = conn.Close(ctx) }()
	want := "async"
	if sync {
		want = "sync"
	}
	require.Eventually(t, func() bool {
		var state string
		err := conn.QueryRow(ctx, `SELECT coalesce((SELECT state || '/' || sync_state FROM pg_stat_replication WHERE application_name = 'standby1'), '')`).Scan(&state)
		return err == nil && state == "streaming/"+want
	}, 30*time.Second, 50*time.Millisecond, "the standby streams (%s)", want)
	return p
}

// url is a multi-host URL that connects to whichever of the two accepts
// writes, as clients of a failover pair do.
func (p *replicaPair) url() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/postgres?sslmode=disable&target_session_attrs=read-write&connect_timeout=2",
		p.primary.Port, p.standby.Port)
}

// appendFile appends text to a file of the server's data directory, as the
// server's user.
func (srv *privateServer) appendFile(t *testing.T, path, text string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteString(text)
	require.NoError(t, err)
	require.NoError(t, f.Close())
}

// stopQuietly stops the server if it runs (-m immediate), whatever state
// the test left it in.
func (srv *privateServer) stopQuietly() {
	_ = srv.Run(context.Background(), "pg_ctl", "-D", srv.Data, "-m", "immediate", "-w", "stop")
}

// TestFailoverToPromotedStandby runs an app (a ping row, its job and an
// event in each outbox transaction, 100 a second) and a cmd/worker process
// on a multi-host URL (target_session_attrs=read-write) against a primary
// and its streaming standby; stops the primary with -m immediate (a crash)
// and promotes the standby. On the new primary every ping row has exactly
// its job and its event and nothing else is there, every row is marked
// exactly once, and the worker works again by itself. With synchronous
// replication no acknowledged transaction is lost; with asynchronous
// replication what is lost is lost whole. RELIABILITY.md has the figures.
func TestFailoverToPromotedStandby(t *testing.T) {
	t.Parallel()
	for _, sync := range []bool{true, false} {
		name := map[bool]string{true: "Synchronous", false: "Asynchronous"}[sync]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			failover(t, sync)
		})
	}
}

func failover(t *testing.T, syncRep bool) {
	ctx := context.Background()
	pair := startReplicaPair(t, syncRep)

	direct, err := pgxpool.New(ctx, pair.primary.url()+"&pool_max_conns=2")
	require.NoError(t, err)
	_, err = dbmigrate.Up(ctx, direct, nil)
	direct.Close()
	require.NoError(t, err)

	cfg, err := pgxpool.ParseConfig(pair.url() + "&pool_max_conns=4")
	require.NoError(t, err)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	defer pool.Close()
	inserter, err := river.NewClient(riverpgxv5.New(pool), &river.Config{})
	require.NoError(t, err)
	ob, err := outbox.New(pool, inserter, nil) // the outbox table; the worker's relay moves the rows
	require.NoError(t, err)

	worker := exec.Command(workerBinary(t), "--http", "off", "--queues", "default", "--max-workers", "20", "--rescue-after", "3s", "--job-timeout", "2s")
	worker.Env = append(os.Environ(), "DATABASE_URL="+pair.url()+"&pool_max_conns=8")
	wlog := &testlog.Buffer{}
	worker.Stderr = wlog
	require.NoError(t, worker.Start())
	defer func() { _ = worker.Process.Kill(); _ = worker.Wait() }()

	// Each transaction's row carries a note of its own: after an
	// asynchronous failover the new primary hands out again ids that lost
	// transactions had (a sequence is WAL-logged 32 values ahead), so the
	// id does not say which transaction a row is.
	type ack struct {
		id   int64
		note string
	}
	var (
		mu              sync.Mutex
		acked           []ack
		failed, inDoubt int
		txSeq           int
		stopApp         = make(chan struct{})
		appDone         = make(chan struct{})
	)
	go func() {
		defer close(appDone)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopApp:
				return
			case <-tick.C:
			}
			var id int64
			txSeq++
			note := fmt.Sprintf("failover-%d", txSeq)
			tctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			_, err := ob.InTx(tctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
				if err := tx.QueryRow(ctx, `INSERT INTO pings (note) VALUES ($1) RETURNING id`, note).Scan(&id); err != nil {
					return err
				}
				if err := tx.Enqueue(jobs.PingArgs{PingID: id}, nil); err != nil {
					return err
				}
				return tx.Publish("ping.created", map[string]int64{"id": id})
			})
			cancel()
			mu.Lock()
			switch {
			case err == nil:
				acked = append(acked, ack{id, note})
			case errors.Is(err, outbox.ErrCommitInDoubt):
				inDoubt++
			default:
				failed++
			}
			mu.Unlock()
		}
	}()

	completedSince := func(since time.Time) int {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM pings WHERE pinged_at > $1`, since).Scan(&n); err != nil {
			return 0
		}
		return n
	}
	require.Eventually(t, func() bool { return completedSince(time.Now().Add(-time.Second)) > 20 }, 30*time.Second, 20*time.Millisecond,
		"the worker works before the failover; log:\n%s", wlog)
	time.Sleep(2 * time.Second)

	crash := time.Now()
	if pair.link != nil {
		// The replication link goes down with the primary: the WAL still
		// on its way is lost.
		pair.link.Stop()
	}
	pair.primary.run(t, "pg_ctl", "-D", pair.primary.Data, "-m", "immediate", "-w", "stop")
	pair.standby.run(t, "pg_ctl", "-D", pair.standby.Data, "-w", "promote")
	promoted := time.Now()
	require.Eventually(t, func() bool { return completedSince(promoted) > 0 }, 90*time.Second, 20*time.Millisecond,
		"the worker completes jobs on the new primary; log:\n%s", wlog)
	resumed := time.Since(crash)
	time.Sleep(2 * time.Second)
	close(stopApp)
	<-appDone

	// Everything committed on the new primary is worked.
	require.Eventually(t, func() bool {
		var left int
		err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM pings WHERE pinged_at IS NULL) + (SELECT count(*) FROM outbox_jobs)`).Scan(&left)
		return err == nil && left == 0
	}, 90*time.Second, 50*time.Millisecond, "every ping on the new primary is marked; log:\n%s", wlog)

	var rows, once, twice, withoutJob, jobWithoutRow, jobsTwice, withoutEvent, eventWithoutRow int
	require.NoError(t, pool.QueryRow(ctx, `
WITH j AS (SELECT (args->>'ping_id')::bigint AS id FROM river_job WHERE kind = $1
           UNION ALL SELECT (args->>'ping_id')::bigint FROM outbox_jobs WHERE kind = $1),
     e AS (SELECT (payload->>'id')::bigint AS id FROM outbox_events WHERE topic = 'ping.created')
SELECT (SELECT count(*) FROM pings),
       (SELECT count(*) FROM pings WHERE ping_count = 1),
       (SELECT count(*) FROM pings WHERE ping_count > 1),
       (SELECT count(*) FROM pings p WHERE NOT EXISTS (SELECT 1 FROM j WHERE j.id = p.id)),
       (SELECT count(*) FROM j WHERE NOT EXISTS (SELECT 1 FROM pings p WHERE p.id = j.id)),
       (SELECT count(*) FROM (SELECT id FROM j GROUP BY id HAVING count(*) > 1) d),
       (SELECT count(*) FROM pings p WHERE (SELECT count(*) FROM e WHERE e.id = p.id) <> 1),
       (SELECT count(*) FROM e WHERE NOT EXISTS (SELECT 1 FROM pings p WHERE p.id = e.id))`, jobs.PingKind).
		Scan(&rows, &once, &twice, &withoutJob, &jobWithoutRow, &jobsTwice, &withoutEvent, &eventWithoutRow))
	var lost, reused int
	mu.Lock()
	ids, notes := make([]int64, len(acked)), make([]string, len(acked))
	for i, a := range acked {
		ids[i], notes[i] = a.id, a.note
	}
	require.NoError(t, pool.QueryRow(ctx, `
SELECT count(*) FILTER (WHERE p.id IS NULL),
       count(*) FILTER (WHERE p.id IS NULL AND EXISTS (SELECT 1 FROM pings q WHERE q.id = a.id))
  FROM unnest($1::bigint[], $2::text[]) AS a (id, note) LEFT JOIN pings p ON p.note = a.note`, ids, notes).Scan(&lost, &reused))
	nAcked, nFailed, nDoubt := len(acked), failed, inDoubt
	mu.Unlock()

	mode := map[bool]string{true: "synchronous", false: "asynchronous"}[syncRep]
	t.Logf("failover (%s replication): %d transactions acknowledged, %d in doubt at COMMIT, %d failed; on the new primary %d rows, "+
		"%d acknowledged ones lost (%d of their ids given to later rows); %d rows marked once, %d twice; %d without a job, %d jobs without a row, %d rows with two jobs, "+
		"%d rows without exactly one event, %d events without a row; jobs completing again %s after the crash (promotion took %s)",
		mode, nAcked, nDoubt, nFailed, rows, lost, reused, once, twice, withoutJob, jobWithoutRow, jobsTwice, withoutEvent, eventWithoutRow,
		fmtDur(resumed), fmtDur(promoted.Sub(crash)))
	require.Zero(t, withoutJob, "no row without its job")
	require.Zero(t, jobWithoutRow, "no job without its row")
	require.Zero(t, jobsTwice, "no row with two jobs")
	require.Zero(t, withoutEvent, "every row has exactly its event")
	require.Zero(t, eventWithoutRow, "no event without its row")
	require.Equal(t, rows, once, "every row marked exactly once")
	require.Zero(t, twice)
	require.Greater(t, nFailed+nDoubt, 0, "the crash cut some transactions: the test saw the fault")
	if syncRep {
		require.Zero(t, lost, "with synchronous replication no acknowledged transaction is lost")
	} else {
		require.Positive(t, lost, "the lagging standby lost the last acknowledged transactions: the test saw the loss")
	}
	require.LessOrEqual(t, rows, nAcked+nDoubt, "a row is there only if its commit was acknowledged or in doubt")
	require.False(t, strings.Contains(wlog.String(), "panic"), "log:\n%s", wlog)
}
