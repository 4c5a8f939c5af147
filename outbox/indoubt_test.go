package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/outbox"
)

// TestCommitInDoubt cuts transactions with deadlines of 0–4 ms, so that many
// expire while InTx waits for the answer to its COMMIT. Afterwards the
// database is the judge: every transaction whose row (and job) exists but
// that returned an error must have returned ErrCommitInDoubt, and one that
// returned nil must have committed. The run goes on until it has seen at
// least one transaction that committed although its deadline expired, so the
// window it tests is never missed on a fast or a slow machine.
func TestCommitInDoubt(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	for _, tc := range []struct {
		name string
		cfg  *outbox.Config
		jobs bool
	}{
		{"Pipelined", nil, true},
		{"PlainCommit", &outbox.Config{DisablePipelinedCommit: true}, true},
		{"NoJobs", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(ctx, t, &setupOpts{cfg: tc.cfg, maxConns: 4})

			const batch, maxTx = 100, 3000
			errs := map[string]error{}
			committedWithError := 0
			for n := 0; n < maxTx && committedWithError == 0; n += batch {
				for i := n; i < n+batch; i++ {
					note := fmt.Sprint("tx-", i)
					txCtx, cancel := context.WithTimeout(ctx, time.Duration(rand.IntN(4001))*time.Microsecond)
					errs[note] = b.ob.InTx(txCtx, func(ctx context.Context, tx *outbox.Tx) error {
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
			require.Positive(t, committedWithError, "no transaction committed after its deadline expired in %d tries", maxTx)

			rows, err := b.schema.Pool.Query(ctx, `SELECT note FROM pings`)
			require.NoError(t, err)
			notes, err := pgx.CollectRows(rows, pgx.RowTo[string])
			require.NoError(t, err)
			committed := map[string]bool{}
			for _, note := range notes {
				committed[note] = true
			}
			if tc.jobs {
				rows, err := b.schema.Pool.Query(ctx, `SELECT args->>'note' FROM river_job`)
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

// TestCommitOutcomeKnown: errors whose outcome is known never match
// ErrCommitInDoubt, and nothing of the transaction is left.
func TestCommitOutcomeKnown(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	for _, tc := range []struct {
		name string
		cfg  *outbox.Config
	}{
		{"Pipelined", nil},
		{"PlainCommit", &outbox.Config{DisablePipelinedCommit: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(ctx, t, &setupOpts{cfg: tc.cfg})
			_, err := b.schema.Pool.Exec(ctx, `CREATE TABLE ping_notes (
				ping_id bigint NOT NULL REFERENCES pings (id) DEFERRABLE INITIALLY DEFERRED)`)
			require.NoError(t, err)

			// A deferred constraint fails at COMMIT: the server answered,
			// the transaction rolled back.
			err = b.ob.InTx(ctx, func(ctx context.Context, tx *outbox.Tx) error {
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
			err = b.ob.InTx(ctx, func(ctx context.Context, tx *outbox.Tx) error {
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
			err = b.ob.InTx(expired, func(ctx context.Context, tx *outbox.Tx) error {
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
