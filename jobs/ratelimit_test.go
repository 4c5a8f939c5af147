package jobs_test

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/jobstest"
	"github.com/aftercommit/aftercommit/jobs"
)

// admit calls job_rate_admit as the middleware does.
func admit(ctx context.Context, t *testing.T, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, key string, limit int, period time.Duration, at time.Time,
) (bool, time.Duration) {
	t.Helper()
	var ok bool
	var waitUS int64
	require.NoError(t, q.QueryRow(ctx, `SELECT admitted, wait_us FROM job_rate_admit('test', $1, $2, $3::bigint * interval '1 microsecond', $4)`,
		key, limit, period.Microseconds(), at).Scan(&ok, &waitUS))
	return ok, time.Duration(waitUS) * time.Microsecond
}

// keepGoing is the loop condition of the concurrency tests: true for 1.5 s,
// then until done (a loaded machine answers fewer decisions a second, and
// the tests need enough of them), at most 30 s.
func keepGoing(done func() bool) func() bool {
	soft, hard := time.Now().Add(1500*time.Millisecond), time.Now().Add(30*time.Second)
	return func() bool {
		now := time.Now()
		return now.Before(soft) || (now.Before(hard) && !done())
	}
}

// requireWindows fails when any window of period, both ends included,
// holds more than limit of the times ts (any limit+1 consecutive ones
// within period). The times are taken as the limiter has them: a
// timestamptz, the wall clock to the microsecond. A time.Time from
// time.Now also holds a monotonic reading, which Sub and Compare prefer
// and the database never sees; time.Now reads the two clocks one after the
// other, and a thread descheduled in between (a loaded machine) gets a
// monotonic reading that is off its wall clock by as long. Windows
// measured by those readings are not the limiter's, and the limiter fills
// windows to within a microsecond: a loaded CI run counted 41 starts
// within 199.085 ms that way, for a limit of 40 per 200 ms.
func requireWindows(t *testing.T, ts []time.Time, limit int, period time.Duration) {
	t.Helper()
	// Truncate drops the monotonic reading and cuts to the microsecond, as
	// pgx does when it sends a time.
	at := make([]time.Time, len(ts))
	for i, ti := range ts {
		at[i] = ti.Truncate(time.Microsecond)
	}
	slices.SortFunc(at, time.Time.Compare)
	for i := 0; i+limit < len(at); i++ {
		require.Greater(t, at[i+limit].Sub(at[i]), period,
			"starts %d..%d (%s .. %s) are %d in one window of %s", i, i+limit, at[i], at[i+limit], limit+1, period)
	}
}

// TestRateAdmit: job_rate_admit's decisions, exactly, on times it is given.
func TestRateAdmit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
	var now time.Time
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT now()`).Scan(&now))
	const hour = time.Hour

	// 3 per hour: three starts in one hour, the fourth waits until the
	// first is an hour old.
	for i, at := range []time.Duration{-30 * time.Minute, -20 * time.Minute, -10 * time.Minute} {
		ok, wait := admit(ctx, t, s.Pool, "a", 3, hour, now.Add(at))
		require.True(t, ok, "start %d", i)
		require.Zero(t, wait)
	}
	ok, wait := admit(ctx, t, s.Pool, "a", 3, hour, now.Add(-5*time.Minute))
	require.False(t, ok)
	require.InDelta(t, (30 * time.Minute).Seconds(), wait.Seconds(), 5, "until the first start is an hour old")
	// The next refused job gets the slot after it, (an hour + 18 s of
	// margin) / 3 later, and so does a job that waited already: it goes
	// behind the others.
	ok, wait = admit(ctx, t, s.Pool, "a", 3, hour, now)
	require.False(t, ok)
	require.InDelta(t, (50*time.Minute + 6*time.Second).Seconds(), wait.Seconds(), 5)
	ok, wait = admit(ctx, t, s.Pool, "a", 3, hour, now)
	require.False(t, ok)
	require.InDelta(t, (70*time.Minute + 12*time.Second).Seconds(), wait.Seconds(), 5)

	// Out of order: a start between two admitted ones is checked against
	// every window that holds it.
	for _, at := range []time.Duration{-10 * time.Minute, -50 * time.Minute} {
		ok, _ := admit(ctx, t, s.Pool, "b", 2, hour, now.Add(at))
		require.True(t, ok)
	}
	ok, _ = admit(ctx, t, s.Pool, "b", 2, hour, now.Add(-30*time.Minute))
	require.False(t, ok, "three starts within an hour")

	// A start older than a period is refused, to be fetched again at once.
	ok, wait = admit(ctx, t, s.Pool, "c", 5, time.Minute, now.Add(-2*time.Minute))
	require.False(t, ok)
	require.Equal(t, time.Microsecond, wait)

	// Bad limits are refused with SQLSTATE 22023 and write nothing.
	for _, bad := range []struct {
		limit  int
		period time.Duration
	}{{0, hour}, {-1, hour}, {3, 0}, {3, -time.Second}} {
		_, err := s.Pool.Exec(ctx, `SELECT job_rate_admit('test', 'bad', $1, $2::bigint * interval '1 microsecond', now())`,
			bad.limit, bad.period.Microseconds())
		var pgErr *pgconn.PgError
		require.True(t, errors.As(err, &pgErr), "%v", err)
		require.Equal(t, "22023", pgErr.Code)
	}

	rows, err := s.Pool.Query(ctx, `SELECT rate_key, max_starts, starts_in_period, admitted, delayed, booked_ahead > interval '0'
		FROM job_rate_limit_status ORDER BY rate_key`)
	require.NoError(t, err)
	type status struct {
		Key               string
		Max, InPeriod     int
		Admitted, Delayed int64
		Booked            bool
	}
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[status])
	require.NoError(t, err)
	require.Equal(t, []status{
		{"a", 3, 3, 3, 3, true},
		{"b", 2, 2, 2, 1, true},
		{"c", 5, 0, 0, 1, false},
	}, got)
}

// TestRateAdmitMany: one statement decides starts of several keys, each
// key's in the order of their times, and says which start each decision is
// for; arrays of different lengths are refused and decide nothing.
func TestRateAdmitMany(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
	var now time.Time
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT now()`).Scan(&now))
	at := now.Add
	// Key "x" allows 2 per hour, key "y" 1 per hour. The batch lists x's
	// starts out of time order: the two earliest are admitted.
	rows, err := s.Pool.Query(ctx, `SELECT ord, admitted, wait_us > 0 FROM job_rate_admit_many($1, $2, $3,
		ARRAY(SELECT interval '1 hour' FROM generate_series(1, 5)), $4) ORDER BY ord`,
		[]string{"t", "t", "t", "t", "t"}, []string{"x", "y", "x", "x", "y"}, []int32{2, 1, 2, 2, 1},
		[]time.Time{at(-time.Minute), at(-3 * time.Minute), at(-2 * time.Minute), at(-4 * time.Minute), at(-2 * time.Minute)})
	require.NoError(t, err)
	type decision struct {
		Ord      int32
		Admitted bool
		Waits    bool
	}
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[decision])
	require.NoError(t, err)
	require.Equal(t, []decision{{1, false, true}, {2, true, false}, {3, true, false}, {4, true, false}, {5, false, true}}, got)

	// A job that waited for its slot and is refused because the start
	// before it came late waits only for that start to leave the window
	// (a moment, in its worker), keeping its turn; new jobs book slots.
	// Key "w": 2 per second, starts 800 and 700 ms ago.
	var w0 time.Time
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&w0))
	for _, d := range []time.Duration{-800 * time.Millisecond, -700 * time.Millisecond} {
		ok, _ := admit(ctx, t, s.Pool, "w", 2, time.Second, w0.Add(d))
		require.True(t, ok)
	}
	rows, err = s.Pool.Query(ctx, `SELECT ord, wait_us FROM job_rate_admit_many(ARRAY['test', 'test', 'test', 'test'], ARRAY['w', 'w', 'w', 'w'],
		ARRAY[2, 2, 2, 2], ARRAY[interval '1 s', interval '1 s', interval '1 s', interval '1 s'],
		ARRAY[$1::timestamptz, $1, $1, $1], NULL, ARRAY[false, true, false, true]) ORDER BY ord`, w0)
	require.NoError(t, err)
	waits := map[int32]float64{}
	var ord int32
	var waitUS int64
	_, err = pgx.ForEachRow(rows, []any{&ord, &waitUS}, func() error {
		waits[ord] = (time.Duration(waitUS) * time.Microsecond).Seconds()
		return nil
	})
	require.NoError(t, err)
	// The wait counts from the decision, some time between w0 and now.
	var w1 time.Time
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&w1))
	require.LessOrEqual(t, waits[1], 0.2, "a new job: when the first start is a second old")
	require.GreaterOrEqual(t, waits[1], 0.2-w1.Sub(w0).Seconds(), "a new job: when the first start is a second old")
	require.InDelta(t, waits[1], waits[2], 0.001, "a job that waited: the same moment, no slot of its own")
	require.InDelta(t, waits[1]+0.5025, waits[3], 0.001, "the next new job: one slot, (1 s + 5 ms) / 2, later")
	require.InDelta(t, waits[1], waits[4], 0.001, "another job that waited: still the first free start")

	_, err = s.Pool.Exec(ctx, `SELECT * FROM job_rate_admit_many(ARRAY['t'], ARRAY['x', 'y'], ARRAY[1], ARRAY[interval '1 s'], ARRAY[now()])`)
	var pgErr *pgconn.PgError
	require.True(t, errors.As(err, &pgErr), "%v", err)
	require.Equal(t, "22023", pgErr.Code)
	var admitted, delayed int64
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT sum(admitted), sum(delayed) FROM job_rate_limits`).Scan(&admitted, &delayed))
	require.Equal(t, []int64{5, 6}, []int64{admitted, delayed})
}

// TestRateAdmitConcurrent: eight connections ask for starts as fast as they
// can for at least 1.5 s under 5 per 200 ms; the starts admitted never put 6 in one
// window, and a start is refused only when a window around it is full: the
// limit is used, not starved, however fast the machine answers.
func TestRateAdmitConcurrent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 8})
	const limit, period = 5, 200 * time.Millisecond
	var mu sync.Mutex
	var admitted, refused []time.Time // refused: decided within a period of its start
	// At least 1.5 s, then until 5 starts were refused within a period of
	// their time (a loaded machine decides many only later, as stale).
	running := keepGoing(func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(refused) >= 5
	})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for running() {
				var ok bool
				var at, decided time.Time
				if err := s.Pool.QueryRow(ctx, `SELECT a.admitted, t.at, clock_timestamp() FROM (SELECT clock_timestamp() AS at) t,
					job_rate_admit('test', 'hot', $1, $2::bigint * interval '1 microsecond', t.at) a`,
					limit, period.Microseconds()).Scan(&ok, &at, &decided); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				switch {
				case ok:
					admitted = append(admitted, at)
				case decided.Sub(at) < period:
					refused = append(refused, at)
				default:
					// Decided a period or more after its start (it waited
					// for the key's row on a loaded machine): refused as
					// stale, whatever the windows hold.
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	slices.SortFunc(admitted, time.Time.Compare)
	requireWindows(t, admitted, limit, period)
	require.NotEmpty(t, admitted)
	// The span of the admitted starts holds at most limit per period
	// begun (requireWindows implies it; this says it as a count).
	span := admitted[len(admitted)-1].Truncate(time.Microsecond).Sub(admitted[0].Truncate(time.Microsecond))
	require.LessOrEqual(t, len(admitted), limit*(int(span/period)+1))
	require.NotEmpty(t, refused, "the limit was never reached: the test proves nothing")
	// A refused start lies in a window that already holds limit starts,
	// and every such window lies within a period either side of it.
	for _, at := range refused {
		around := 0
		for _, a := range admitted {
			if !a.Before(at.Add(-period)) && !a.After(at.Add(period)) {
				around++
			}
		}
		require.GreaterOrEqual(t, around, limit, "a start at %s was refused with room in every window around it", at)
	}
	var logged int64
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT admitted FROM job_rate_limits WHERE rate_key = 'hot'`).Scan(&logged))
	require.Equal(t, int64(len(admitted)), logged)
}

// TestRateAdmitManyConcurrent: six connections send batches of starts of
// three keys, with times up to 60 ms in the past and out of order (as
// fetches of several processes arrive), for 1.5 s under 5 per 200 ms. Keys
// far from their limit are admitted by the fast path, the rest window by
// window; either way no window of a key's admitted starts holds 6, and
// every admitted start is logged once.
func TestRateAdmitManyConcurrent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 6})
	const limit, period = 5, 200 * time.Millisecond
	keys := []string{"k0", "k1", "k2"}
	var mu sync.Mutex
	admitted := map[string][]time.Time{}
	// At least 1.5 s, then until each key has 20 starts.
	const enough = 20
	running := keepGoing(func() bool {
		mu.Lock()
		defer mu.Unlock()
		return !slices.ContainsFunc(keys, func(k string) bool { return len(admitted[k]) < enough })
	})
	var wg sync.WaitGroup
	for c := range 6 {
		wg.Go(func() {
			for n := 0; running(); n++ {
				// 1 to 4 starts of each of 1 to 3 keys, back in time by
				// 0 to 60 ms, in no order.
				var ks []string
				var backUS []int64
				for i := range 1 + (c+n)%3 {
					for j := range 1 + (c+n+i)%4 {
						ks = append(ks, keys[(c+n+i)%3])
						backUS = append(backUS, int64(((c+1)*(n+1)*(j+7)*7919)%60_000))
					}
				}
				rows, err := s.Pool.Query(ctx, `SELECT u.k, m.admitted, m.started_at
					FROM (SELECT clock_timestamp() AS now) t,
					     LATERAL (SELECT array_agg(t.now - b * interval '1 microsecond' ORDER BY i) AS ats
					                FROM unnest($2::bigint[]) WITH ORDINALITY AS x(b, i)) a,
					     LATERAL job_rate_admit_many(array_fill('test'::text, ARRAY[cardinality($1::text[])]), $1::text[],
					         array_fill($3::int, ARRAY[cardinality($1::text[])]),
					         array_fill($4::bigint * interval '1 microsecond', ARRAY[cardinality($1::text[])]), a.ats) m
					JOIN unnest($1::text[]) WITH ORDINALITY AS u(k, i) ON u.i = m.ord`,
					ks, backUS, limit, period.Microseconds())
				if err != nil {
					t.Error(err)
					return
				}
				var k string
				var ok bool
				var at *time.Time
				_, err = pgx.ForEachRow(rows, []any{&k, &ok, &at}, func() error {
					if ok {
						mu.Lock()
						admitted[k] = append(admitted[k], *at)
						mu.Unlock()
					}
					return nil
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	for _, k := range keys {
		ts := admitted[k]
		slices.SortFunc(ts, time.Time.Compare)
		requireWindows(t, ts, limit, period)
		require.GreaterOrEqual(t, len(ts), enough, "key %s: the limit is used", k)
		var logged int64
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT admitted FROM job_rate_limits WHERE rate_key = $1`, k).Scan(&logged))
		require.Equal(t, int64(len(ts)), logged, "key %s", k)
	}
}

// TestRateLeases: a key far from its limit gets a lease of tokens when a
// batch asks for one, logged as its tokens spent at both ends of the
// lease; leases fill at most half of the limit, and a key that cannot spare
// 2 tokens gets none. A lease lasts half the period, at most 1 s. The
// periods are long (a minute, a second) so that a start's time, read once,
// never turns stale on a loaded machine.
func TestRateLeases(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
	type lease struct {
		Admitted    bool
		Tokens      *int32
		LenMS       *float64
		FromIsStart bool
	}
	ask := func(key string, at time.Time, want int32) lease {
		t.Helper()
		var l lease
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT admitted, lease_tokens,
				extract(epoch FROM lease_until - lease_from) * 1000, lease_from IS NOT NULL AND lease_from >= $2
			FROM job_rate_admit_many(ARRAY['test'], ARRAY[$1::text], ARRAY[100], ARRAY[interval '1 min'], ARRAY[$2::timestamptz],
				NULL, NULL, ARRAY[$3::int])`, key, at, want).Scan(&l.Admitted, &l.Tokens, &l.LenMS, &l.FromIsStart))
		return l
	}
	tokens := func(n int32) *int32 { return &n }
	capped := 1000.0 // half a minute, capped at 1 s
	var now time.Time
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&now))
	// 100 per minute. A lease is at most what was asked for, and at most
	// half of what leases may still fill (half the limit) once the start
	// that asks is logged; it is logged as twice its tokens.
	require.Equal(t, lease{true, tokens(5), &capped, true}, ask("a", now, 5), "1 logged, asked for 5")
	require.Equal(t, lease{true, tokens(19), &capped, true}, ask("a", now, 50), "12 logged")
	require.Equal(t, lease{true, nil, nil, false}, ask("a", now, 50), "51 logged: leases fill half the limit")
	var inPeriod, leased, admitted int64
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT starts_in_period, leased, admitted FROM job_rate_limit_status WHERE rate_key = 'a'`).
		Scan(&inPeriod, &leased, &admitted))
	require.Equal(t, []int64{3 + 2*24, 24, 3}, []int64{inPeriod, leased, admitted})
	// Decisions count the leases: 49 more starts fit in the minute, the
	// 50th waits.
	for i := range 49 {
		require.Equal(t, lease{true, nil, nil, false}, ask("a", now, 0), "start %d", i)
	}
	require.Equal(t, lease{false, nil, nil, false}, ask("a", now, 50))
	// No lease unless asked for; a period of under 2 s gets a lease of half
	// of it.
	require.Equal(t, lease{true, nil, nil, false}, ask("b", now, 0))
	var tok int32
	var lenMS float64
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT lease_tokens, extract(epoch FROM lease_until - lease_from) * 1000
		FROM job_rate_admit_many(ARRAY['test'], ARRAY['c'], ARRAY[1000], ARRAY[interval '1 s'], ARRAY[clock_timestamp()], NULL, NULL, ARRAY[1000])`).
		Scan(&tok, &lenMS))
	require.Equal(t, int32(249), tok)
	require.InDelta(t, 500, lenMS, 0.001)
}

// TestRateLeasesConcurrent: four connections act as processes that start
// jobs of two keys as fast as they can for 1.5 s under 40 per 200 ms, with
// start times up to 30 ms in the past: each start uses a token of the
// process's lease of its key when the lease covers its time, else asks the
// database, asking for a lease of 8 tokens each time (spending its tokens
// late in the lease, the worst case). Every start counted
// together — the database's and the leases' — no window holds 41. A
// start's time is the one the limiter decides on: the wall clock to the
// microsecond, with no monotonic reading (see requireWindows); the
// database's started_at of an admitted start is that same time.
func TestRateLeasesConcurrent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 4})
	const limit, period = 40, 200 * time.Millisecond
	keys := []string{"k0", "k1"}
	var mu sync.Mutex
	started := map[string][]time.Time{}
	leasedStarts := 0
	// At least 1.5 s, then until each key has 100 starts.
	const enough = 100
	running := keepGoing(func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(started["k0"]) >= enough && len(started["k1"]) >= enough
	})
	var wg sync.WaitGroup
	for c := range 4 {
		wg.Go(func() {
			type lease struct {
				from, until time.Time
				left        int
			}
			leases := map[string]*lease{}
			for n := 0; running(); n++ {
				k := keys[(c+n)%2]
				// Truncate drops the monotonic reading: the lease's bounds,
				// the database and requireWindows all compare wall clocks.
				at := time.Now().Truncate(time.Microsecond).Add(-time.Duration(((c+1)*(n+3)*7919)%30_000) * time.Microsecond)
				// Tokens are spent in the second half of the lease only:
				// a process may spend them at any time of it, and late is
				// the hardest case for the log.
				if l := leases[k]; l != nil && l.left > 0 && at.After(l.from.Add(l.until.Sub(l.from)/2)) && !at.After(l.until) {
					l.left--
					mu.Lock()
					started[k] = append(started[k], at)
					leasedStarts++
					mu.Unlock()
					continue
				}
				var ok bool
				var tokens *int32
				var startedAt, from, until *time.Time
				if err := s.Pool.QueryRow(ctx, `SELECT admitted, started_at, lease_tokens, lease_from, lease_until
					FROM job_rate_admit_many(ARRAY['test'], ARRAY[$1::text], ARRAY[$2::int], ARRAY[$3::bigint * interval '1 microsecond'],
						ARRAY[$4::timestamptz], NULL, NULL, ARRAY[8])`, k, limit, period.Microseconds(), at).Scan(&ok, &startedAt, &tokens, &from, &until); err != nil {
					t.Error(err)
					return
				}
				if ok {
					if startedAt == nil || !startedAt.Equal(at) {
						t.Errorf("a start at %s was admitted as started at %v", at, startedAt)
						return
					}
					mu.Lock()
					started[k] = append(started[k], *startedAt)
					mu.Unlock()
				}
				if tokens != nil {
					leases[k] = &lease{from: *from, until: *until, left: int(*tokens)}
				}
			}
		})
	}
	wg.Wait()
	for _, k := range keys {
		ts := started[k]
		slices.SortFunc(ts, time.Time.Compare)
		requireWindows(t, ts, limit, period)
		require.GreaterOrEqual(t, len(ts), enough, "key %s: the limit is used", k)
	}
	require.Positive(t, leasedStarts, "some starts used a lease")
}

// ratedArgs is a rate-limited job: Limit starts of Key per 300 ms.
type ratedArgs struct {
	Key      string `json:"key"`
	Limit    int    `json:"limit"`
	PeriodMS int    `json:"period_ms,omitempty"` // 0: ratedPeriod
	Seq      int    `json:"seq"`
}

func (ratedArgs) Kind() string { return "test.rated" }

const ratedPeriod = 300 * time.Millisecond

type ratedWorker struct {
	river.WorkerDefaults[ratedArgs]
}

func (ratedWorker) RateLimitFor(_ context.Context, job *river.Job[ratedArgs]) (jobs.RateLimit, error) {
	period := ratedPeriod
	if job.Args.PeriodMS > 0 {
		period = time.Duration(job.Args.PeriodMS) * time.Millisecond
	}
	return jobs.RateLimit{Key: job.Args.Key, Limit: job.Args.Limit, Period: period}, nil
}

func (ratedWorker) Work(context.Context, *river.Job[ratedArgs]) error { return nil }

// TestRateLimitedJobs: two clients work 24 jobs of one key under 4 starts
// per 300 ms, beside 4 jobs of another key and 2 without a key. No window
// of river_job.attempted_at holds more than 4 starts of the key, waiting
// spent no attempt, the other key and the unlimited jobs never waited, and
// a bad limit fails its job with ErrRateLimitInvalid.
func TestRateLimitedJobs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 10})
	reg := jobs.NewRegistry()
	queue := reg.AddQueue("test", "rated", jobs.WeightNormal, nil)
	jobs.AddWorker(reg, queue, ratedWorker{})
	// NewClient's fetch settings: a job that waited is fetched when the
	// rate limit wakes its queue, not by a fast poll.
	client, events := jobstest.Client(ctx, t, s, reg, jobstest.Opts{Work: true})
	_, events2 := jobstest.Client(ctx, t, s, reg, jobstest.Opts{Work: true})

	var params []river.InsertManyParams
	for i := range 24 {
		params = append(params, river.InsertManyParams{Args: ratedArgs{Key: "hot", Limit: 4, Seq: i}})
	}
	for i := range 4 {
		params = append(params, river.InsertManyParams{Args: ratedArgs{Key: "cold", Limit: 4, Seq: i}})
	}
	params = append(params,
		river.InsertManyParams{Args: ratedArgs{Seq: 1}}, river.InsertManyParams{Args: ratedArgs{Seq: 2}},
		river.InsertManyParams{Args: ratedArgs{Key: "bad", Limit: jobs.RateLimitMax + 1}, InsertOpts: &river.InsertOpts{MaxAttempts: 1}})
	_, err := client.InsertMany(ctx, params)
	require.NoError(t, err)

	done := 0
	timeout := time.After(30 * time.Second)
	for done < len(params) {
		select {
		case ev := <-events:
			if ev.Kind != river.EventKindJobSnoozed {
				done++
			}
		case ev := <-events2:
			if ev.Kind != river.EventKindJobSnoozed {
				done++
			}
		case <-timeout:
			t.Fatalf("%d of %d jobs finished in 30 s", done, len(params))
		}
	}

	type row struct {
		Key         string
		State       string
		Attempt     int
		Snoozes     int
		AttemptedAt time.Time
		Error       string
	}
	rows, err := s.Pool.Query(ctx, `SELECT args->>'key', state, attempt, coalesce((metadata->>'snoozes')::int, 0), attempted_at,
		coalesce(errors[array_length(errors, 1)]->>'error', '') FROM river_job ORDER BY attempted_at`)
	require.NoError(t, err)
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[row])
	require.NoError(t, err)
	require.Len(t, got, len(params))
	var hot []time.Time
	waited := 0
	for _, r := range got {
		switch r.Key {
		case "bad":
			require.Equal(t, "discarded", r.State)
			require.Contains(t, r.Error, jobs.ErrRateLimitInvalid.Error())
			continue
		case "hot":
			hot = append(hot, r.AttemptedAt)
			waited += cmp.Compare(r.Snoozes, 0)
		default:
			require.Zero(t, r.Snoozes, "a job of key %q waited", r.Key)
		}
		require.Equal(t, "completed", r.State)
		require.Equal(t, 1, r.Attempt, "waiting spends no attempt")
	}
	require.Len(t, hot, 24)
	requireWindows(t, hot, 4, ratedPeriod)
	t.Logf("%d of the hot jobs snoozed; the others that waited did so in their worker", waited)

	var admitted, delayed int64
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT admitted, delayed FROM job_rate_limits WHERE namespace = 'test.rated' AND rate_key = 'hot'`).Scan(&admitted, &delayed))
	require.Equal(t, int64(24), admitted, "each hot job was admitted once")
	require.GreaterOrEqual(t, delayed, int64(20), "at most 4 hot jobs start without waiting")
	require.GreaterOrEqual(t, delayed, int64(waited))
}

// TestPingRateArgs: a ping's rate-limit fields are checked at the boundary,
// each refusal naming its field and wrapping ErrRateLimitInvalid where the
// value is out of range, and RateLimitFor turns valid ones into the limit.
func TestPingRateArgs(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args  jobs.PingArgs
		field string
		err   error
	}{
		{jobs.PingArgs{RateLimit: 5}, "rate_key", nil},
		{jobs.PingArgs{RatePeriodMS: 1000}, "rate_key", nil},
		{jobs.PingArgs{RateKey: "k", RatePeriodMS: 1000}, "rate_limit", jobs.ErrRateLimitInvalid},
		{jobs.PingArgs{RateKey: "k", RateLimit: jobs.RateLimitMax + 1, RatePeriodMS: 1000}, "rate_limit", jobs.ErrRateLimitInvalid},
		{jobs.PingArgs{RateKey: "k", RateLimit: 5}, "rate_period_ms", jobs.ErrRateLimitInvalid},
		{jobs.PingArgs{RateKey: "k", RateLimit: 5, RatePeriodMS: 8 * 24 * 3600 * 1000}, "rate_period_ms", jobs.ErrRateLimitInvalid},
	} {
		err := tc.args.Validate()
		var fe *jobs.FieldError
		require.True(t, errors.As(err, &fe), "%+v: %v", tc.args, err)
		require.Equal(t, tc.field, fe.Field)
		if tc.err != nil {
			require.ErrorIs(t, err, tc.err)
		}
	}

	ok := jobs.PingArgs{RateKey: "smoke", RateLimit: 10, RatePeriodMS: 1000}
	require.NoError(t, ok.Validate())
	limit, err := (&jobs.PingWorker{}).RateLimitFor(context.Background(), &river.Job[jobs.PingArgs]{Args: ok})
	require.NoError(t, err)
	require.Equal(t, jobs.RateLimit{Key: "smoke", Limit: 10, Period: time.Second}, limit)
	none, err := (&jobs.PingWorker{}).RateLimitFor(context.Background(), &river.Job[jobs.PingArgs]{Args: jobs.PingArgs{}})
	require.NoError(t, err)
	require.Equal(t, jobs.RateLimit{}, none, "a ping without a key has no limit")
}

// TestRateLimitedJobsWithLeases: two clients work 400 jobs of one key under
// a limit they never reach (1,000 starts per 3 s): once the key is busy in
// a client, it starts jobs with the tokens of a lease (1 s long), without a
// decision each, and every job completes once, without waiting. Leases
// fill at most half of the limit, used or not, so 400 starts plus 500
// leased fit one window whatever the timing (with 600 jobs, a run whose
// jobs all started within one period found the limit reached: 87 waited);
// and a start decided more than a period after its fetch is refused as
// stale, which a loaded machine did to 48 starts under 300 ms.
func TestRateLimitedJobsWithLeases(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 10})
	reg := jobs.NewRegistry()
	queue := reg.AddQueue("test", "rated", jobs.WeightNormal, nil)
	jobs.AddWorker(reg, queue, ratedWorker{})
	client, events := jobstest.Client(ctx, t, s, reg, jobstest.Opts{Work: true})
	_, events2 := jobstest.Client(ctx, t, s, reg, jobstest.Opts{Work: true})

	const n = 400
	params := make([]river.InsertManyParams, n)
	for i := range params {
		params[i] = river.InsertManyParams{Args: ratedArgs{Key: "busy", Limit: jobs.RateLimitMax, PeriodMS: 3000, Seq: i}}
	}
	_, err := client.InsertMany(ctx, params)
	require.NoError(t, err)
	done := 0
	timeout := time.After(30 * time.Second)
	for done < n {
		select {
		case ev := <-events:
			require.Equal(t, river.EventKindJobCompleted, ev.Kind)
			done++
		case ev := <-events2:
			require.Equal(t, river.EventKindJobCompleted, ev.Kind)
			done++
		case <-timeout:
			t.Fatalf("%d of %d jobs finished in 30 s", done, n)
		}
	}
	var completed, once int
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE state = 'completed'), count(*) FILTER (WHERE attempt = 1 AND NOT metadata ? 'snoozes')
		FROM river_job`).Scan(&completed, &once))
	require.Equal(t, []int{n, n}, []int{completed, once})
	var admitted, delayed, leased int64
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT admitted, delayed, leased FROM job_rate_limit_status WHERE namespace = 'test.rated' AND rate_key = 'busy'`).
		Scan(&admitted, &delayed, &leased))
	require.Zero(t, delayed)
	require.Less(t, admitted, int64(n), "some jobs started with a lease's tokens")
	require.GreaterOrEqual(t, leased, n-admitted, "no more starts with tokens than were leased")
	t.Logf("%d of %d jobs decided one by one; %d tokens leased", admitted, n, leased)
}

// TestRateFastPathDecidesAfterTheLock: a start that waited for its key's
// row longer than a period is stale by the time it is decided, and is
// refused — also on the fast path, which judged staleness by the clock of
// before the wait (migration 0024) and so could admit it against a log the
// batch before it had pruned by a later clock.
func TestRateFastPathDecidesAfterTheLock(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 3})
	const limit, period = 5, 200 * time.Millisecond
	var now time.Time
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&now))
	ok, _ := admit(ctx, t, s.Pool, "k", limit, period, now) // the key's row, far from its limit
	require.True(t, ok)

	holder, err := s.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = holder.Rollback(ctx) }()
	_, err = holder.Exec(ctx, `SELECT 1 FROM job_rate_limits WHERE rate_key = 'k' FOR UPDATE`)
	require.NoError(t, err)

	type decision struct {
		ok  bool
		err error
	}
	done := make(chan decision, 1)
	go func() {
		var d decision
		d.err = s.Pool.QueryRow(ctx, `SELECT admitted FROM job_rate_admit('test', 'k', $1, $2::bigint * interval '1 microsecond', clock_timestamp())`,
			limit, period.Microseconds()).Scan(&d.ok)
		done <- d
	}()
	// The decision waits for the row for more than a period.
	require.Eventually(t, func() bool {
		var waiting int
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%job_rate_admit(%'
			AND datname = current_database() AND query LIKE '%''k''%'`).Scan(&waiting))
		return waiting >= 1
	}, 10*time.Second, 5*time.Millisecond)
	time.Sleep(period + 100*time.Millisecond)
	require.NoError(t, holder.Commit(ctx))
	d := <-done
	require.NoError(t, d.err)
	require.False(t, d.ok, "a start decided more than a period after its time is refused as stale")
}

// TestRateWindowsAreClosed: a window of period holds both its ends, so a
// start exactly a period after a logged one shares a window with it — on
// the fast path as on the window-by-window one. The fast path counted only
// the logged starts later than (its earliest start - period), and let a
// third start into a limit of 2 whose window, ends included, held three
// (migration 0029).
func TestRateWindowsAreClosed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
	var now time.Time
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&now))
	const limit, hour = 2, time.Hour
	// Keys "fast" and "window" have the same log: starts 80 and 40 minutes
	// ago, admitted when they were fetched. A fetch of 20 minutes ago (not
	// stale under a limit per hour) comes exactly an hour after the first.
	log := []time.Time{now.Add(-80 * time.Minute), now.Add(-40 * time.Minute)}
	for _, k := range []string{"fast", "window"} {
		_, err := s.Pool.Exec(ctx, `INSERT INTO job_rate_limits (namespace, rate_key, max_starts, period, starts)
			VALUES ('test', $1, $2, $3::bigint * interval '1 microsecond', $4)`, k, limit, hour.Microseconds(), log)
		require.NoError(t, err)
	}
	late := now.Add(-20 * time.Minute)
	ok, _ := admit(ctx, t, s.Pool, "fast", limit, hour, late)
	require.False(t, ok, "fast path: a start exactly a period after the first of a full window is in that window")
	// The window-by-window decision (a batch of more starts than the
	// limit goes there) refuses it too, and admits the start a
	// microsecond later.
	rows, err := s.Pool.Query(ctx, `SELECT admitted FROM job_rate_admit_many(ARRAY['test', 'test', 'test'], ARRAY['window', 'window', 'window'],
		ARRAY[2, 2, 2], ARRAY[interval '1 hour', interval '1 hour', interval '1 hour'], ARRAY[$1::timestamptz, $1, $1]) ORDER BY ord`, late)
	require.NoError(t, err)
	decided, err := pgx.CollectRows(rows, pgx.RowTo[bool])
	require.NoError(t, err)
	require.Equal(t, []bool{false, false, false}, decided, "window by window")
	ok, _ = admit(ctx, t, s.Pool, "fast", limit, hour, late.Add(time.Microsecond))
	require.True(t, ok, "fast path: a microsecond more than a period after the first start")
}

// TestRateLeaseDecidedAfterTheLock: a lease begins once its key's row is
// locked, not when the statement began. A lease that began before a wait
// of more than a period (its batch's start given ahead of the database's
// clock, so still admitted after the wait) was sized against a log from
// which the decision that held the row had pruned, by its own later clock,
// starts that windows around the lease still held: once its tokens were
// spent, those windows held more than the limit (migration 0029).
func TestRateLeaseDecidedAfterTheLock(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 3})
	const limit, period = 40, time.Second
	var c0 time.Time
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&c0))
	// 35 starts 900 ms ago: a window ending 100 ms from now has room for 5.
	seeded := make([]time.Time, 35)
	for i := range seeded {
		seeded[i] = c0.Add(-900 * time.Millisecond)
	}
	_, err := s.Pool.Exec(ctx, `INSERT INTO job_rate_limits (namespace, rate_key, max_starts, period, starts)
		VALUES ('test', 'k', $1, $2::bigint * interval '1 microsecond', $3)`, limit, period.Microseconds(), seeded)
	require.NoError(t, err)

	holder, err := s.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = holder.Rollback(ctx) }()
	_, err = holder.Exec(ctx, `SELECT 1 FROM job_rate_limits WHERE rate_key = 'k' FOR UPDATE`)
	require.NoError(t, err)

	// A batch that asks for a lease waits for the row; its start is 1.5 s
	// ahead, so that it is still admitted after the wait.
	type decision struct {
		ok          bool
		tokens      *int32
		from, until *time.Time
		err         error
	}
	done := make(chan decision, 1)
	ahead := c0.Add(1500 * time.Millisecond)
	go func() {
		var d decision
		d.err = s.Pool.QueryRow(ctx, `SELECT admitted, lease_tokens, lease_from, lease_until
			FROM job_rate_admit_many(ARRAY['test'], ARRAY['k'], ARRAY[$1::int], ARRAY[$2::bigint * interval '1 microsecond'],
				ARRAY[$3::timestamptz], NULL, NULL, ARRAY[8])`, limit, period.Microseconds(), ahead).Scan(&d.ok, &d.tokens, &d.from, &d.until)
		done <- d
	}()
	require.Eventually(t, func() bool {
		var waiting int
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'
			AND query LIKE '%job_rate_admit_many(%' AND datname = current_database() AND query LIKE '%ARRAY[8]%'`).Scan(&waiting))
		return waiting >= 1
	}, 10*time.Second, 5*time.Millisecond)
	// More than two periods after the seeded starts, the row's holder
	// decides a start, which prunes them from the log, and lets go.
	var held time.Time
	for {
		require.NoError(t, holder.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&held))
		if held.Sub(c0) > 1150*time.Millisecond {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	var heldAt time.Time
	var ok bool
	require.NoError(t, holder.QueryRow(ctx, `SELECT a.admitted, t.at FROM (SELECT clock_timestamp() AS at) t,
		job_rate_admit('test', 'k', $1, $2::bigint * interval '1 microsecond', t.at) a`, limit, period.Microseconds()).Scan(&ok, &heldAt))
	require.True(t, ok)
	require.NoError(t, holder.Commit(ctx))
	d := <-done
	require.NoError(t, d.err)
	require.True(t, d.ok)
	require.NotNil(t, d.tokens, "a key far from its limit gets a lease")
	// The starts there were, with the lease's tokens spent at either end
	// of it (a process may spend them at any time of it): no window holds
	// more than the limit.
	for _, at := range []time.Time{*d.from, *d.until} {
		ts := append(slices.Clone(seeded), heldAt, ahead)
		for range *d.tokens {
			ts = append(ts, at)
		}
		slices.SortFunc(ts, time.Time.Compare)
		requireWindows(t, ts, limit, period)
	}
}
