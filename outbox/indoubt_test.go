package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/outbox"
)

// commitPaths are the ways InTx commits: the outbox table's INSERT and
// COMMIT in one pipelined batch (the default), River's insert and COMMIT in
// one batch (DirectInsert), River's insert then a COMMIT of its own, and a
// COMMIT alone when nothing was enqueued.
var commitPaths = []struct {
	name string
	cfg  *outbox.Config
	jobs bool
}{
	{"OutboxTable", nil, true},
	{"Direct", &outbox.Config{DirectInsert: true}, true},
	{"DirectPlainCommit", &outbox.Config{DirectInsert: true, DisablePipelinedCommit: true}, true},
	{"NoJobs", nil, false},
}

// jobNotesSQL reads the notes of the jobs written, by either path: relayed
// or not, a job is a row in river_job or in outbox_jobs.
const jobNotesSQL = `SELECT args->>'note' FROM river_job UNION ALL SELECT args->>'note' FROM outbox_jobs`

// TestCommitInDoubt cuts transactions with deadlines of 0–4 ms, so that some
// expire while InTx waits for the answer to its COMMIT. Afterwards the
// database is the judge: every transaction whose row (and job) exists but
// that returned an error must have returned ErrCommitInDoubt, and one that
// returned nil must have committed. The run goes on until it has seen a
// transaction that committed although its deadline expired, or 3,000
// transactions (300 in the quick suite: every cut costs a new connection):
// on a loaded machine few reach their COMMIT in time, so
// TestCommitInDoubtAnswerLost covers that window for certain.
func TestCommitInDoubt(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	for _, tc := range commitPaths {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(ctx, t, &setupOpts{cfg: tc.cfg, maxConns: 4})

			const batch = 100
			maxTx := 300
			if dbtest.Long {
				maxTx = 3000
			}
			errs := map[string]error{}
			committedWithError := 0
			for n := 0; n < maxTx && committedWithError == 0; n += batch {
				for i := n; i < n+batch; i++ {
					note := fmt.Sprint("tx-", i)
					txCtx, cancel := context.WithTimeout(ctx, time.Duration(rand.IntN(4001))*time.Microsecond)
					_, errs[note] = b.ob.InTx(txCtx, nil, func(ctx context.Context, tx *outbox.Tx) error {
						if _, err := tx.Exec(ctx, `INSERT INTO pings (note) VALUES ($1)`, note); err != nil {
							return err
						}
						if !tc.jobs {
							return nil
						}
						return tx.Enqueue(noteArgs{Note: note}, nil)
					})
					cancel()
				}
				committedWithError = 0
				rows, err := b.schema.Pool.Query(ctx, `SELECT note FROM pings`)
				require.NoError(t, err)
				committed, err := pgx.CollectRows(rows, pgx.RowTo[string])
				require.NoError(t, err)
				for _, note := range committed {
					if errs[note] != nil {
						committedWithError++
					}
				}
			}
			rows, err := b.schema.Pool.Query(ctx, `SELECT note FROM pings`)
			require.NoError(t, err)
			notes, err := pgx.CollectRows(rows, pgx.RowTo[string])
			require.NoError(t, err)
			committed := map[string]bool{}
			for _, note := range notes {
				committed[note] = true
			}
			if tc.jobs {
				rows, err := b.schema.Pool.Query(ctx, jobNotesSQL)
				require.NoError(t, err)
				jobNotes, err := pgx.CollectRows(rows, pgx.RowTo[string])
				require.NoError(t, err)
				require.ElementsMatch(t, notes, jobNotes, "a row for every job and a job for every row")
			}

			var inDoubtCommitted, inDoubtAbsent, knownAbsent int
			for note, err := range errs {
				switch {
				case err == nil:
					require.True(t, committed[note], "%s returned nil but did not commit", note)
				case committed[note]:
					require.ErrorIs(t, err, outbox.ErrCommitInDoubt, "%s committed but returned %v", note, err)
					inDoubtCommitted++
				case errors.Is(err, outbox.ErrCommitInDoubt):
					inDoubtAbsent++
				default:
					knownAbsent++
				}
			}
			t.Logf("%d transactions: %d committed, %d in doubt and committed, %d in doubt and absent, %d failed for sure",
				len(errs), len(notes), inDoubtCommitted, inDoubtAbsent, knownAbsent)
		})
	}
}

// TestCommitInDoubtAnswerLost loses the answer to COMMIT for certain: the
// test's pool reaches Postgres through a proxy that stops passing the
// server's bytes back as soon as the COMMIT (alone, or at the end of the
// pipelined batch) goes out, and the context is cancelled shortly after. The
// server commits; the client never hears of it. InTx must say
// ErrCommitInDoubt, and the row and its job are there.
func TestCommitInDoubtAnswerLost(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	for _, tc := range commitPaths {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := dbtest.TestSchema(ctx, t, nil)
			proxy := startHoldingProxy(t, s.URL)
			txCtx, cancel := context.WithCancel(ctx)
			defer cancel()
			// Once armed, as the COMMIT is about to be sent, answers are held
			// and the transaction's context ends a little later.
			var armed atomic.Bool
			onCommit := func() {
				if armed.Load() && proxy.hold.CompareAndSwap(false, true) {
					time.AfterFunc(300*time.Millisecond, cancel)
				}
			}
			cfg, err := pgxpool.ParseConfig(s.URL)
			require.NoError(t, err)
			cfg.ConnConfig.Host, cfg.ConnConfig.Port = proxy.host, proxy.port
			cfg.ConnConfig.Tracer = commitTracer{onCommit: onCommit}
			// One connection, warmed up below: pgx prepares a statement the
			// first time a connection runs it, in a round trip of its own
			// before the batch's statements go out.
			cfg.MaxConns = 1
			pool, err := pgxpool.NewWithConfig(ctx, cfg)
			require.NoError(t, err)
			t.Cleanup(pool.Close)
			client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{Schema: s.Name, Logger: discardLogger()})
			require.NoError(t, err)
			ob, err := outbox.New(pool, client, tc.cfg)
			require.NoError(t, err)

			write := func(ctx context.Context, note string) error {
				_, err := ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
					if _, err := tx.Exec(ctx, `INSERT INTO pings (note) VALUES ($1)`, note); err != nil {
						return err
					}
					if !tc.jobs {
						return nil
					}
					return tx.Enqueue(noteArgs{Note: note}, nil)
				})
				return err
			}
			require.NoError(t, write(ctx, "warm-up"))
			_, err = s.Pool.Exec(ctx, `DELETE FROM pings; DELETE FROM river_job; DELETE FROM outbox_jobs`)
			require.NoError(t, err)

			armed.Store(true)
			err = write(txCtx, "answer lost")
			require.True(t, proxy.hold.Load(), "the COMMIT was never sent")
			require.ErrorIs(t, err, outbox.ErrCommitInDoubt)
			require.ErrorIs(t, err, context.Canceled)

			var notes []string
			rows, err := s.Pool.Query(ctx, `SELECT note FROM pings`)
			require.NoError(t, err)
			notes, err = pgx.CollectRows(rows, pgx.RowTo[string])
			require.NoError(t, err)
			require.Equal(t, []string{"answer lost"}, notes, "the server committed")
			var jobs int
			require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FROM (`+jobNotesSQL+`) AS j (note) WHERE note = 'answer lost'`).Scan(&jobs))
			require.Equal(t, map[bool]int{true: 1, false: 0}[tc.jobs], jobs)
		})
	}
}

// commitTracer calls onCommit before pgx sends a COMMIT or a batch (the
// outbox's pipelined batch ends with its COMMIT).
type commitTracer struct{ onCommit func() }

func (c commitTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	if strings.EqualFold(strings.TrimSpace(data.SQL), "commit") {
		c.onCommit()
	}
	return ctx
}

func (commitTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (c commitTracer) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	c.onCommit()
	return ctx
}

func (commitTracer) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (commitTracer) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

// holdingProxy passes TCP both ways between the test's pool and Postgres
// until hold is set; from then on the server's bytes are no longer passed
// back (requests still go through, so the server does what it was asked).
type holdingProxy struct {
	host string
	port uint16
	hold atomic.Bool
}

func startHoldingProxy(t *testing.T, rawURL string) *holdingProxy {
	t.Helper()
	cfg, err := pgx.ParseConfig(rawURL)
	require.NoError(t, err)
	server := net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port)))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var conns sync.WaitGroup
	t.Cleanup(func() {
		_ = ln.Close()
		conns.Wait()
	})
	addr, ok := ln.Addr().(*net.TCPAddr)
	require.True(t, ok, "a tcp listener's address is a *net.TCPAddr")
	p := &holdingProxy{host: "127.0.0.1", port: uint16(addr.Port)}
	go func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Go(func() {
				defer func() { _ = client.Close() }() // the proxied connection is done either way
				upstream, err := net.Dial("tcp", server)
				if err != nil {
					return
				}
				defer func() { _ = upstream.Close() }()
				done := make(chan struct{}, 2)
				go func() { _, _ = io.Copy(upstream, client); done <- struct{}{} }()
				go func() {
					buf := make([]byte, 32<<10)
					for {
						n, err := upstream.Read(buf)
						if n > 0 && !p.hold.Load() {
							if _, werr := client.Write(buf[:n]); werr != nil {
								break
							}
						}
						if err != nil {
							break
						}
					}
					done <- struct{}{}
				}()
				<-done
			})
		}
	}()
	return p
}

// TestCommitOutcomeKnown: errors whose outcome is known never match
// ErrCommitInDoubt, and nothing of the transaction is left.
func TestCommitOutcomeKnown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	for _, tc := range commitPaths {
		if !tc.jobs {
			continue // nothing to pipeline: the same COMMIT as PlainCommit's
		}
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(ctx, t, &setupOpts{cfg: tc.cfg})
			b.schema.Scratch(ctx, t, `CREATE TABLE ping_notes (
				ping_id bigint NOT NULL REFERENCES pings (id) DEFERRABLE INITIALLY DEFERRED)`, `DROP TABLE ping_notes`)

			// A deferred constraint fails at COMMIT: the server answered,
			// the transaction rolled back.
			_, err := b.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
				insertPing(ctx, t, tx, "deferred")
				if _, err := tx.Exec(ctx, `INSERT INTO ping_notes VALUES (-1)`); err != nil {
					return err
				}
				return tx.Enqueue(noteArgs{Note: "deferred"}, nil)
			})
			var pgErr *pgconn.PgError
			require.ErrorAs(t, err, &pgErr)
			require.Equal(t, "23503", pgErr.Code)
			require.NotErrorIs(t, err, outbox.ErrCommitInDoubt)

			// The function fails: rolled back before any COMMIT.
			boom := errors.New("boom")
			_, err = b.ob.InTx(ctx, nil, func(ctx context.Context, tx *outbox.Tx) error {
				insertPing(ctx, t, tx, "fn failed")
				if err := tx.Enqueue(noteArgs{Note: "fn failed"}, nil); err != nil {
					return err
				}
				return boom
			})
			require.ErrorIs(t, err, boom)
			require.NotErrorIs(t, err, outbox.ErrCommitInDoubt)

			// The deadline expired before the COMMIT could be sent.
			expired, cancel := context.WithCancel(ctx)
			_, err = b.ob.InTx(expired, nil, func(ctx context.Context, tx *outbox.Tx) error {
				insertPing(ctx, t, tx, "expired")
				cancel()
				return tx.Enqueue(noteArgs{Note: "expired"}, nil)
			})
			require.ErrorIs(t, err, context.Canceled)
			require.NotErrorIs(t, err, outbox.ErrCommitInDoubt)

			require.Zero(t, b.count(ctx, t, `SELECT count(*) FROM pings`))
			require.Empty(t, b.jobs(ctx, t))
		})
	}
}
