package jobstats_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbroles/dbrolestest"
	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/jobs/jobstats"
)

// flowFixture is a schema holding flow-control rows whose every time is
// relative to base, the database's now() truncated to the second:
//
//   - job_locks: ns.a/acct-1 with two live leases (taken 90 s and 30 s
//     ago) and an expired one; ns.a/acct-2 and ns.b/mutex with one live
//     lease each (10 s and 5 min ago); ns.b/gone with an expired lease only.
//   - job_rate_limits: ns.r/api, 2 starts per hour, decided by
//     job_rate_admit: starts 10 and 5 minutes ago admitted, one a minute
//     ago refused and booked ahead; ns.r/busy (3 starts in its hour, 7
//     delayed), ns.q/api (its only start 30 hours ago, 2 delayed) and
//     ns.r/idle (no start), inserted as they are.
//   - sequences: ns.s/order-1 (a running head, 3 waiting); ns.s/order-2 (a
//     retryable head with 3 errors, 1 waiting: held and stuck);
//     ns.s/order-3 (2 waiting and none released: stuck, no head);
//     ns.s/order-4 (an available head with an error: held, 1 waiting); the
//     stripes ns.f/tenant#0 (an available head, 4 waiting) and
//     ns.f/tenant#1 (a running head with an error, none waiting).
type flowFixture struct {
	schema *dbtest.Schema
	base   time.Time

	// the head jobs of the sequences
	order1, order2, order4, tenant0, tenant1 int64
	// the rate limit decided by job_rate_admit: its latest decision
	apiUpdatedAt time.Time
}

func setupFlowFixture(ctx context.Context, t *testing.T) *flowFixture {
	t.Helper()
	f := &flowFixture{schema: dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 4})}
	pool := f.schema.Pool
	require.NoError(t, pool.QueryRow(ctx, `SELECT date_trunc('second', now())`).Scan(&f.base))
	f.base = f.base.UTC()
	base := f.base

	_, err := pool.Exec(ctx, `
		INSERT INTO job_locks (namespace, lock_key, slot, holder_job_id, holder_client, acquired_at, expires_at)
		VALUES ('ns.a', 'acct-1', 0, 11, 'host-1', $1::timestamptz - interval '90 s', $1::timestamptz + interval '1 h'),
		       ('ns.a', 'acct-1', 1, 12, 'host-2', $1::timestamptz - interval '30 s', $1::timestamptz + interval '1 h'),
		       ('ns.a', 'acct-1', 2, 13, 'host-3', $1::timestamptz - interval '2 h', $1::timestamptz - interval '1 h'),
		       ('ns.a', 'acct-2', 0, 14, 'host-1', $1::timestamptz - interval '10 s', $1::timestamptz + interval '1 h'),
		       ('ns.b', 'gone', 0, 15, 'host-9', $1::timestamptz - interval '3 h', $1::timestamptz - interval '2 h'),
		       ('ns.b', 'mutex', 0, 16, 'host-2', $1::timestamptz - interval '5 min', $1::timestamptz + interval '1 h')`, base)
	require.NoError(t, err)

	for _, c := range []struct {
		ago      time.Duration
		admitted bool
	}{{10 * time.Minute, true}, {5 * time.Minute, true}, {time.Minute, false}} {
		var admitted bool
		var waitUS int64
		require.NoError(t, pool.QueryRow(ctx, `SELECT admitted, wait_us FROM job_rate_admit('ns.r', 'api', 2, interval '1 hour', $1)`,
			base.Add(-c.ago)).Scan(&admitted, &waitUS))
		require.Equal(t, c.admitted, admitted, "the start %s ago", c.ago)
	}
	require.NoError(t, pool.QueryRow(ctx, `SELECT updated_at FROM job_rate_limits WHERE namespace = 'ns.r' AND rate_key = 'api'`).
		Scan(&f.apiUpdatedAt))
	_, err = pool.Exec(ctx, `
		INSERT INTO job_rate_limits (namespace, rate_key, max_starts, period, starts, next_slot, admitted, delayed, updated_at)
		VALUES ('ns.r', 'busy', 100, interval '1 hour',
		        ARRAY[$1::timestamptz - interval '20 min', $1::timestamptz - interval '15 min', $1::timestamptz - interval '2 min'],
		        $1::timestamptz - interval '1 min', 3, 7, $1::timestamptz - interval '2 min'),
		       ('ns.q', 'api', 1, interval '1 day', ARRAY[$1::timestamptz - interval '30 h'], '-infinity', 1, 2,
		        $1::timestamptz - interval '30 h'),
		       ('ns.r', 'idle', 5, interval '1 min', '{}', '-infinity', 10, 0, $1::timestamptz - interval '1 h')`, base)
	require.NoError(t, err)

	ago := func(d time.Duration) time.Time { return base.Add(-d) }
	seqJob := func(state rivertype.JobState, attempt int, errs ...string) statsJob {
		j := statsJob{kind: "flow.seq", queue: "flow", state: state, attempt: attempt, scheduledAt: ago(time.Hour)}
		if attempt > 0 {
			j.attemptedAt = ago(time.Minute)
		}
		for i, e := range errs {
			j.errors = append(j.errors, rivertype.AttemptError{At: ago(time.Duration(len(errs)-i) * time.Minute), Attempt: i + 1, Error: e})
		}
		return j
	}
	pending := seqJob(rivertype.JobStatePending, 0)
	ids := insertStatsJobs(ctx, t, pool,
		seqJob(rivertype.JobStateRunning, 1), pending, pending, pending, // order-1
		seqJob(rivertype.JobStateRetryable, 3, "boom 1", "boom 2", "boom 3"), pending, // order-2
		pending, pending, // order-3
		seqJob(rivertype.JobStateAvailable, 1, "try again"), pending, // order-4
		seqJob(rivertype.JobStateAvailable, 0), pending, pending, pending, pending, // tenant#0
		seqJob(rivertype.JobStateRunning, 2, "flaky"), // tenant#1
	)
	f.order1, f.order2, f.order4, f.tenant0, f.tenant1 = ids[0], ids[4], ids[8], ids[10], ids[15]
	_, err = pool.Exec(ctx, `
		INSERT INTO job_sequences (namespace, seq_key, width, next_pos, release_pos, released, released_at)
		VALUES ('ns.s', 'order-1', 1, 4, 1, 1, $1::timestamptz - interval '2 min'),
		       ('ns.s', 'order-2', 1, 2, 1, 1, $1::timestamptz - interval '1 h'),
		       ('ns.s', 'order-3', 1, 2, 0, 0, NULL),
		       ('ns.s', 'order-4', 1, 2, 1, 1, $1::timestamptz - interval '3 min'),
		       ('ns.f', 'tenant#0', 1, 5, 1, 1, $1::timestamptz - interval '10 s'),
		       ('ns.f', 'tenant#1', 1, 1, 1, 1, $1::timestamptz - interval '30 s')`, base)
	require.NoError(t, err)
	_, err = pool.Exec(ctx, `
		INSERT INTO job_sequence_members (namespace, seq_key, pos, job_id)
		SELECT m.ns, m.k, m.pos, ($1::bigint[])[m.i]
		  FROM (VALUES ('ns.s', 'order-1', 0, 1), ('ns.s', 'order-1', 1, 2), ('ns.s', 'order-1', 2, 3), ('ns.s', 'order-1', 3, 4),
		               ('ns.s', 'order-2', 0, 5), ('ns.s', 'order-2', 1, 6),
		               ('ns.s', 'order-3', 0, 7), ('ns.s', 'order-3', 1, 8),
		               ('ns.s', 'order-4', 0, 9), ('ns.s', 'order-4', 1, 10),
		               ('ns.f', 'tenant#0', 0, 11), ('ns.f', 'tenant#0', 1, 12), ('ns.f', 'tenant#0', 2, 13),
		               ('ns.f', 'tenant#0', 3, 14), ('ns.f', 'tenant#0', 4, 15),
		               ('ns.f', 'tenant#1', 0, 16)) AS m (ns, k, pos, i)`, ids)
	require.NoError(t, err)
	return f
}

// lockKey is one expected key of the fixture's locks, as of r.At.
func (f *flowFixture) lockKey(r *jobstats.Report, ns, key string, holders, expired int64, oldestAgo time.Duration) jobstats.LockKey {
	k := jobstats.LockKey{Namespace: ns, Key: key, Holders: holders, Expired: expired}
	if holders > 0 {
		k.OldestAcquiredAt = f.base.Add(-oldestAgo)
		k.HeldFor = r.At.Sub(k.OldestAcquiredAt)
	}
	return k
}

// wantLocks is the fixture's locks, the first n keys listed.
func (f *flowFixture) wantLocks(r *jobstats.Report, n int) jobstats.LockStats {
	top := []jobstats.LockKey{
		f.lockKey(r, "ns.a", "acct-1", 2, 1, 90*time.Second),
		// One holder each: by namespace, then key.
		f.lockKey(r, "ns.a", "acct-2", 1, 0, 10*time.Second),
		f.lockKey(r, "ns.b", "mutex", 1, 0, 5*time.Minute),
		f.lockKey(r, "ns.b", "gone", 0, 1, 0),
	}
	return jobstats.LockStats{Keys: 4, Held: 3, Holders: 4, Expired: 2, Top: top[:n]}
}

// wantRateLimits is the fixture's rate limits, the first n keys listed.
func (f *flowFixture) wantRateLimits(r *jobstats.Report, n int) jobstats.RateLimitStats {
	ago := func(d time.Duration) time.Time { return f.base.Add(-d) }
	// The refused start is due once the first start is a period old (+1 µs),
	// and booked a slot after that: (period + period/200) / limit.
	apiNextSlot := ago(10 * time.Minute).Add(time.Hour + time.Microsecond + (time.Hour+18*time.Second)/2)
	top := []jobstats.RateLimit{
		{
			Namespace: "ns.r", Key: "api", MaxStarts: 2, Period: time.Hour, StartsInPeriod: 2, LastStart: ago(5 * time.Minute),
			BookedAhead: apiNextSlot.Sub(r.At), Admitted: 2, Delayed: 1, UpdatedAt: f.apiUpdatedAt.UTC(),
		},
		// None booked ahead: the most starts in the period first.
		{
			Namespace: "ns.r", Key: "busy", MaxStarts: 100, Period: time.Hour, StartsInPeriod: 3, LastStart: ago(2 * time.Minute),
			Admitted: 3, Delayed: 7, UpdatedAt: ago(2 * time.Minute),
		},
		// None in the period: the most delayed first.
		{
			Namespace: "ns.q", Key: "api", MaxStarts: 1, Period: 24 * time.Hour, LastStart: ago(30 * time.Hour),
			Admitted: 1, Delayed: 2, UpdatedAt: ago(30 * time.Hour),
		},
		{Namespace: "ns.r", Key: "idle", MaxStarts: 5, Period: time.Minute, Admitted: 10, UpdatedAt: ago(time.Hour)},
	}
	return jobstats.RateLimitStats{Keys: 4, Throttled: 1, Top: top[:n]}
}

// sequence names the fixture's sequences in the order Collect lists them
// all: the stuck ones, then by waiting.
const (
	seqOrder3 = iota
	seqOrder2
	seqTenant0
	seqOrder1
	seqOrder4
	seqTenant1
)

// wantSequences is the fixture's sequences, those of which listed.
func (f *flowFixture) wantSequences(r *jobstats.Report, which ...int) jobstats.SequenceStats {
	ago := func(d time.Duration) time.Time { return f.base.Add(-d) }
	released := func(s jobstats.SequenceStatus, d time.Duration) jobstats.SequenceStatus {
		s.ReleasedAt = ago(d)
		s.ReleasedAge = r.At.Sub(s.ReleasedAt)
		return s
	}
	all := []jobstats.SequenceStatus{
		seqOrder3: {Namespace: "ns.s", Key: "order-3", Width: 1, Waiting: 2, Stuck: true},
		seqOrder2: released(jobstats.SequenceStatus{
			Namespace: "ns.s", Key: "order-2", Width: 1, Waiting: 1, Running: 1,
			HeadJobID: f.order2, HeadKind: "flow.seq", HeadState: rivertype.JobStateRetryable, HeadAttempt: 3,
			HeadErrors: 3, HeadLastError: "boom 3", Held: true, Stuck: true,
		}, time.Hour),
		seqTenant0: released(jobstats.SequenceStatus{
			Namespace: "ns.f", Key: "tenant#0", Width: 1, Waiting: 4, Running: 1,
			HeadJobID: f.tenant0, HeadKind: "flow.seq", HeadState: rivertype.JobStateAvailable,
		}, 10*time.Second),
		seqOrder1: released(jobstats.SequenceStatus{
			Namespace: "ns.s", Key: "order-1", Width: 1, Waiting: 3, Running: 1,
			HeadJobID: f.order1, HeadKind: "flow.seq", HeadState: rivertype.JobStateRunning, HeadAttempt: 1,
		}, 2*time.Minute),
		seqOrder4: released(jobstats.SequenceStatus{
			Namespace: "ns.s", Key: "order-4", Width: 1, Waiting: 1, Running: 1,
			HeadJobID: f.order4, HeadKind: "flow.seq", HeadState: rivertype.JobStateAvailable, HeadAttempt: 1,
			HeadErrors: 1, HeadLastError: "try again", Held: true,
		}, 3*time.Minute),
		seqTenant1: released(jobstats.SequenceStatus{
			Namespace: "ns.f", Key: "tenant#1", Width: 1, Running: 1,
			HeadJobID: f.tenant1, HeadKind: "flow.seq", HeadState: rivertype.JobStateRunning, HeadAttempt: 2,
			HeadErrors: 1, HeadLastError: "flaky",
		}, 30*time.Second),
	}
	top := []jobstats.SequenceStatus{}
	for _, i := range which {
		top = append(top, all[i])
	}
	return jobstats.SequenceStats{Sequences: 6, Waiting: 11, Running: 5, Held: 2, Stuck: 2, Top: top}
}

// normalizeFlow puts every time of r's flow-control sections in UTC.
func normalizeFlow(r *jobstats.Report) {
	for i := range r.Locks.Top {
		r.Locks.Top[i].OldestAcquiredAt = utcOrZero(r.Locks.Top[i].OldestAcquiredAt)
	}
	for i := range r.RateLimits.Top {
		l := &r.RateLimits.Top[i]
		l.LastStart, l.UpdatedAt = utcOrZero(l.LastStart), utcOrZero(l.UpdatedAt)
	}
	for i := range r.Sequences.Top {
		r.Sequences.Top[i].ReleasedAt = utcOrZero(r.Sequences.Top[i].ReleasedAt)
	}
}

// utcOrZero is t in UTC, or the zero time (whose UTC() is not == to it).
func utcOrZero(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.UTC()
}

func collectFlow(ctx context.Context, t *testing.T, db *pgxpool.Pool, opts *jobstats.Opts) *jobstats.Report {
	t.Helper()
	r, err := jobstats.Collect(ctx, db, opts)
	require.NoError(t, err)
	normalizeFlow(r)
	return r
}

func TestCollectFlowControl(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("ExactValues", func(t *testing.T) {
		t.Parallel()
		f := setupFlowFixture(ctx, t)
		r := collectFlow(ctx, t, f.schema.Pool, nil)
		require.False(t, r.At.Before(f.base))
		require.Equal(t, f.wantLocks(r, 4), r.Locks)
		require.Equal(t, f.wantRateLimits(r, 4), r.RateLimits)
		require.Equal(t, f.wantSequences(r, seqOrder3, seqOrder2, seqTenant0, seqOrder1, seqOrder4, seqTenant1), r.Sequences)
		// The fair share's stripes are sequences of their own.
		require.Equal(t, "tenant#0", r.Sequences.Top[2].Key)
	})

	t.Run("FlowRows", func(t *testing.T) {
		t.Parallel()
		f := setupFlowFixture(ctx, t)
		r := collectFlow(ctx, t, f.schema.Pool, &jobstats.Opts{FlowRows: 2})
		require.Equal(t, f.wantLocks(r, 2), r.Locks)
		require.Equal(t, f.wantRateLimits(r, 2), r.RateLimits)
		// The two with the most waiting, and every stuck one first.
		require.Equal(t, f.wantSequences(r, seqOrder3, seqOrder2, seqTenant0, seqOrder1), r.Sequences)

		r = collectFlow(ctx, t, f.schema.Pool, &jobstats.Opts{FlowRows: 1})
		require.Equal(t, f.wantSequences(r, seqOrder3, seqOrder2, seqTenant0), r.Sequences)

		// None listed: the totals, and still the stuck sequences.
		r = collectFlow(ctx, t, f.schema.Pool, &jobstats.Opts{FlowRows: -1})
		require.Equal(t, f.wantLocks(r, 0), r.Locks)
		require.Equal(t, f.wantRateLimits(r, 0), r.RateLimits)
		require.Equal(t, f.wantSequences(r, seqOrder3, seqOrder2), r.Sequences)
	})

	t.Run("SequencesPlacedByTheDatabase", func(t *testing.T) {
		t.Parallel()
		s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 4})
		var base time.Time
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT now()`).Scan(&base))
		// Five pending jobs noted by the relay: three of the sequence
		// ns.p/k (width 1), two of ns.p/w, of width 2 (relay.Sequence.Width).
		pending := statsJob{kind: "flow.placed", queue: "flow", state: rivertype.JobStatePending, scheduledAt: base.Add(-time.Minute)}
		ids := insertStatsJobs(ctx, t, s.Pool, pending, pending, pending, pending, pending)
		_, err := s.Pool.Exec(ctx, `
			INSERT INTO job_sequence_inbox (outbox_id, namespace, seq_key, width, job_id)
			SELECT i, 'ns.p', CASE WHEN i <= 3 THEN 'k' ELSE 'w' END,
			       CASE WHEN i <= 3 THEN 1 ELSE 2 END, ($1::bigint[])[i]
			  FROM generate_series(1, 5) AS i`, ids)
		require.NoError(t, err)
		var placed int
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT job_sequence_append()`).Scan(&placed))
		require.Equal(t, 5, placed)
		var releasedAt time.Time
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT max(released_at) FROM job_sequences`).Scan(&releasedAt))
		releasedAt = releasedAt.UTC()

		r := collectFlow(ctx, t, s.Pool, nil)
		require.Equal(t, jobstats.SequenceStats{
			Sequences: 2, Waiting: 2, Running: 3,
			Top: []jobstats.SequenceStatus{
				{
					Namespace: "ns.p", Key: "k", Width: 1, Waiting: 2, Running: 1,
					HeadJobID: ids[0], HeadKind: "flow.placed", HeadState: rivertype.JobStateAvailable,
					ReleasedAt: releasedAt, ReleasedAge: r.At.Sub(releasedAt),
				},
				{
					Namespace: "ns.p", Key: "w", Width: 2, Running: 2,
					HeadJobID: ids[3], HeadKind: "flow.placed", HeadState: rivertype.JobStateAvailable,
					ReleasedAt: releasedAt, ReleasedAge: r.At.Sub(releasedAt),
				},
			},
		}, r.Sequences)
	})

	t.Run("Empty", func(t *testing.T) {
		t.Parallel()
		s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 4})
		r := collectFlow(ctx, t, s.Pool, nil)
		require.Equal(t, jobstats.LockStats{Top: []jobstats.LockKey{}}, r.Locks)
		require.Equal(t, jobstats.RateLimitStats{Top: []jobstats.RateLimit{}}, r.RateLimits)
		require.Equal(t, jobstats.SequenceStats{Top: []jobstats.SequenceStatus{}}, r.Sequences)
	})

	t.Run("AppRoleMayNotReadLocks", func(t *testing.T) {
		t.Parallel()
		f := setupFlowFixture(ctx, t)
		app, worker := dbrolestest.Roles(ctx, t, f.schema)

		// The app role is not granted job_locks: Collect reads the rest.
		r := collectFlow(ctx, t, dbrolestest.Pool(ctx, t, app, 2), nil)
		require.Equal(t, jobstats.LockStats{Denied: true}, r.Locks)
		require.Equal(t, f.wantRateLimits(r, 4), r.RateLimits)
		require.Equal(t, f.wantSequences(r, seqOrder3, seqOrder2, seqTenant0, seqOrder1, seqOrder4, seqTenant1), r.Sequences)
		require.Len(t, r.Queues, 4, "flow: available, pending, retryable, running")

		r = collectFlow(ctx, t, dbrolestest.Pool(ctx, t, worker, 2), nil)
		require.Equal(t, f.wantLocks(r, 4), r.Locks)
	})
}
