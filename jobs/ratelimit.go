package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/aftercommit/aftercommit/internal/riverseam"
)

const (
	// RateLimitMax is the largest number of starts a RateLimit may allow
	// per period: the log of a key holds up to twice as many timestamps and
	// is rewritten at each decision.
	RateLimitMax = 1000
	// RatePeriodMin is the shortest period a RateLimit may have.
	RatePeriodMin = 10 * time.Millisecond //nolint:revive // time-naming: Min is minimum, not minutes
	// RatePeriodMax is the longest period a RateLimit may have.
	RatePeriodMax = 7 * 24 * time.Hour
)

// ErrRateLimitInvalid is wrapped by the error a job fails with when its
// worker's RateLimitFor returns a RateLimit with out-of-range fields.
var ErrRateLimitInvalid = errors.New("jobs: invalid rate limit")

// RateLimit allows at most Limit starts of Key in Namespace in any window of
// length Period, across every process on every machine: "5 emails per
// second per provider", "60 calls per minute per customer".
//
// A start is the fetch that runs the job, river_job.attempted_at on the
// database's clock, so the limit can be checked from river_job alone: no
// window of Period holds more than Limit attempted_at of admitted jobs. It
// is a sliding window, not a token bucket: a bucket of Limit tokens lets
// twice Limit starts into one period (a full bucket, then its refill).
// Retries count as starts. A job over the limit snoozes (river.JobSnooze,
// which does not use up an attempt) until the slot it was given, period /
// Limit after the previous waiting job's, so waiting jobs are fetched about
// twice each rather than polled; the order in which waiting jobs start is
// not kept (a sequence keeps order).
type RateLimit struct {
	// Namespace separates keys. Defaults to the job's kind; kinds that name
	// the same namespace and key share one limit.
	Namespace string
	// Key is computed from args or the source of truth (the provider of an
	// email, the customer of a call). "" means no limit: the job runs
	// straight away.
	Key string
	// Limit is the most starts of Key in any window of Period, 1 to
	// RateLimitMax. All jobs of a key should agree on Limit and Period; the
	// last decision's values are the key's.
	Limit int
	// Period is the window's length, RatePeriodMin to RatePeriodMax.
	Period time.Duration
}

// RateLimiter is implemented by a worker whose jobs are rate limited.
// RateLimitFor is called before each attempt, outside any transaction, and
// may read the database.
type RateLimiter[T river.JobArgs] interface {
	RateLimitFor(ctx context.Context, job *river.Job[T]) (RateLimit, error)
}

// rateFunc is the untyped form of RateLimiter that rateMiddleware calls.
type rateFunc func(ctx context.Context, job *rivertype.JobRow) (RateLimit, error)

// rateFuncFor returns w's rateFunc and true when w implements RateLimiter[T].
func rateFuncFor[T river.JobArgs](w river.Worker[T]) (rateFunc, bool) {
	limiter, ok := w.(RateLimiter[T])
	if !ok {
		return nil, false
	}
	return func(ctx context.Context, row *rivertype.JobRow) (RateLimit, error) {
		var args T
		if err := json.Unmarshal(row.EncodedArgs, &args); err != nil {
			return RateLimit{}, fmt.Errorf("jobs: decoding args of %s job %d: %w", row.Kind, row.ID, err)
		}
		return limiter.RateLimitFor(ctx, &river.Job[T]{JobRow: row, Args: args})
	}, true
}

// rateMiddleware runs a job whose worker is a RateLimiter only when its
// RateLimit admits the start, decided in the database in batches
// (job_rate_admit_many, see migrations/0021_job_rate_limits.up.sql);
// otherwise the job waits, in its worker for a moment or snoozed until its
// slot. It is River worker middleware.
type rateMiddleware struct {
	river.MiddlewareDefaults

	lookup  func(kind string) (rateFunc, bool)
	wake    *waker
	batch   *rateBatcher
	leases  rateLeases
	onDelay func(kind, control string) // nil: not counted
}

var _ rivertype.WorkerMiddleware = (*rateMiddleware)(nil)

// newRateMiddleware returns the rate-limit middleware of the kinds lookup
// knows, deciding in pool; schema is River's (empty: the connections'
// search_path), whose producers it wakes.
func newRateMiddleware(pool *pgxpool.Pool, lookup func(kind string) (rateFunc, bool), schema string) *rateMiddleware {
	return &rateMiddleware{lookup: lookup, wake: &waker{pool: pool, schema: schema}, batch: newRateBatcher(pool)}
}

// Work implements rivertype.WorkerMiddleware.
func (m *rateMiddleware) Work(ctx context.Context, job *rivertype.JobRow, doInner func(context.Context) error) error {
	rateFor, ok := m.lookup(job.Kind)
	if !ok {
		return doInner(ctx)
	}
	limit, err := rateFor(ctx, job)
	if err != nil {
		return fmt.Errorf("jobs: computing the rate limit of %s job %d: %w", job.Kind, job.ID, err)
	}
	if limit.Key == "" {
		return doInner(ctx)
	}
	if limit.Namespace == "" {
		limit.Namespace = job.Kind
	}
	switch {
	case limit.Limit < 1 || limit.Limit > RateLimitMax:
		return fmt.Errorf("%w for %s job %d: limit %d is not between 1 and %d", ErrRateLimitInvalid, job.Kind, job.ID, limit.Limit, RateLimitMax)
	case limit.Period < RatePeriodMin || limit.Period > RatePeriodMax:
		return fmt.Errorf("%w for %s job %d: period %s is not between %s and %s", ErrRateLimitInvalid, job.Kind, job.ID, limit.Period, RatePeriodMin, RatePeriodMax)
	case job.AttemptedAt == nil:
		return fmt.Errorf("jobs: %s job %d has no attempted_at to rate limit", job.Kind, job.ID)
	}
	// The fetch's start first; then, while the wait is short, the job waits
	// here and asks again for a start at the time of the decision, which
	// becomes its attempted_at. A snooze would reach the table only when
	// River's completer writes it (up to 250 ms) and the job would then wait
	// for a fetch: every start that came late would cost the slot N after
	// it.
	key := rateKey{namespace: limit.Namespace, key: limit.Key}
	limit32 := int32(limit.Limit) //nolint:gosec // at most RateLimitMax
	leased, ask := m.leases.take(key, limit32, limit.Period, *job.AttemptedAt)
	if leased {
		return doInner(ctx)
	}
	req := &rateRequest{
		namespace: limit.Namespace, key: limit.Key, limit: limit32,
		period: limit.Period, at: *job.AttemptedAt, waited: snoozedBefore(job.Metadata), lease: ask,
	}
	for asked := 1; ; asked++ {
		d, err := m.batch.decide(ctx, req)
		if req.lease > 0 || d.admitted {
			m.leases.note(key, req, d, err == nil)
		}
		if err != nil {
			return fmt.Errorf("jobs: rate limit %s/%s for %s job %d: %w", limit.Namespace, limit.Key, job.Kind, job.ID, err)
		}
		if d.admitted {
			if req.now {
				job.AttemptedAt = &d.startedAt
			}
			break
		}
		if asked == 1 && m.onDelay != nil {
			m.onDelay(job.Kind, FlowControlRateLimit)
		}
		if d.wait > rateWaitHere || asked >= rateAsksHere {
			m.wake.at(ctx, job.Queue, d.wait)
			if d.wait < rateWakeCompleter {
				m.wake.at(ctx, job.Queue, rateWakeCompleter)
			}
			return river.JobSnooze(d.wait)
		}
		timer := time.NewTimer(d.wait)
		due := time.Now().Add(d.wait)
		select {
		case <-ctx.Done():
			// The client stops (or the job's deadline came): the job waits
			// for its slot snoozed, spending no attempt.
			timer.Stop()
			return river.JobSnooze(max(time.Until(due), 0))
		case <-timer.C:
		}
		req = &rateRequest{namespace: req.namespace, key: req.key, limit: req.limit, period: req.period, now: true, jobID: job.ID, waited: true}
	}
	return doInner(ctx)
}

// snoozedBefore reports whether River counted a snooze of the job (its
// metadata's "snoozes"): it waited for its slot already (or for its lock).
func snoozedBefore(metadata []byte) bool {
	var m struct {
		Snoozes int64 `json:"snoozes"`
	}
	return json.Unmarshal(metadata, &m) == nil && m.Snoozes > 0
}

// rateWaitHere is the longest wait a job spends in its worker for a start
// instead of snoozing: shorter than River's completer takes to write a
// snooze (rateWakeCompleter) plus a fetch.
const rateWaitHere = 500 * time.Millisecond

// rateAsksHere is how many decisions a job asks for in its worker before it
// snoozes.
const rateAsksHere = 5

// rateDecision is what job_rate_admit_many decided for one start.
type rateDecision struct {
	admitted  bool
	wait      time.Duration // refused: until the slot the job was given
	startedAt time.Time     // admitted: the start's time
	// A lease the process asked for: leaseTokens starts of the key with an
	// attempted_at in [leaseFrom, leaseUntil], admitted here.
	leaseTokens           int
	leaseFrom, leaseUntil time.Time
}

// rateBatchMax is the most decisions one statement takes.
const rateBatchMax = 1000

// rateBatchTimeout bounds one batch's statement.
const rateBatchTimeout = 10 * time.Second

// rateRequest is one start to decide.
type rateRequest struct {
	namespace, key string
	limit          int32
	period         time.Duration
	at             time.Time // the start's time; with now, the decision's
	now            bool      // start at the decision, as job jobID's new attempted_at
	jobID          int64
	waited         bool  // the job waited for its slot already
	lease          int32 // tokens of a lease the process asks for; 0: none

	decision rateDecision
	err      error
	done     chan struct{}
}

// rateBatcher sends the decisions its jobs ask for in one statement
// (job_rate_admit_many), in batches (groupCommit): a key's row is locked
// and rewritten once per batch.
type rateBatcher struct {
	pool  *pgxpool.Pool
	batch groupCommit[*rateRequest]
}

func newRateBatcher(pool *pgxpool.Pool) *rateBatcher {
	b := &rateBatcher{pool: pool}
	b.batch = groupCommit[*rateRequest]{max: rateBatchMax, send: b.decideBatch}
	return b
}

// decide queues r and waits for its decision. When ctx ends first, r may
// still be decided, and admitted: the start is then counted though the job
// did not run, which errs on the side of the limit.
func (b *rateBatcher) decide(ctx context.Context, r *rateRequest) (rateDecision, error) {
	r.done = make(chan struct{})
	b.batch.add(ctx, r)
	select {
	case <-r.done:
		return r.decision, r.err
	case <-ctx.Done():
		return rateDecision{}, context.Cause(ctx)
	}
}

// decideBatch runs one statement for batch and hands each request its
// decision, or the statement's error.
func (b *rateBatcher) decideBatch(ctx context.Context, batch []*rateRequest) {
	namespaces := make([]string, len(batch))
	keys := make([]string, len(batch))
	limits := make([]int32, len(batch))
	periods := make([]int64, len(batch))
	ats := make([]*time.Time, len(batch))
	jobIDs := make([]*int64, len(batch))
	waited := make([]bool, len(batch))
	leases := make([]int32, len(batch))
	for i, r := range batch {
		namespaces[i], keys[i], limits[i], periods[i], waited[i], leases[i] = r.namespace, r.key, r.limit, r.period.Microseconds(), r.waited, r.lease
		if r.now {
			jobIDs[i] = &r.jobID
		} else {
			ats[i] = &r.at
		}
	}
	ctx, cancel := context.WithTimeout(ctx, rateBatchTimeout)
	defer cancel()
	err := func() error {
		rows, err := b.pool.Query(ctx, rateAdmitManySQL, namespaces, keys, limits, periods, ats, jobIDs, waited, leases)
		if err != nil {
			return err
		}
		decided := 0
		var ord int32
		var admitted bool
		var waitUS int64
		var startedAt, leaseFrom, leaseUntil *time.Time
		var leaseTokens *int32
		_, err = pgx.ForEachRow(rows, []any{&ord, &admitted, &waitUS, &startedAt, &leaseTokens, &leaseFrom, &leaseUntil}, func() error {
			if ord < 1 || int(ord) > len(batch) {
				return fmt.Errorf("job_rate_admit_many returned ord %d for a batch of %d", ord, len(batch))
			}
			r := batch[ord-1]
			r.decision = rateDecision{admitted: admitted, wait: time.Duration(waitUS) * time.Microsecond}
			if startedAt != nil {
				r.decision.startedAt = *startedAt
			}
			if leaseTokens != nil && leaseFrom != nil && leaseUntil != nil {
				r.decision.leaseTokens, r.decision.leaseFrom, r.decision.leaseUntil = int(*leaseTokens), *leaseFrom, *leaseUntil
			}
			decided++
			return nil
		})
		if err == nil && decided != len(batch) {
			err = fmt.Errorf("job_rate_admit_many decided %d of %d starts", decided, len(batch))
		}
		return err
	}()
	for _, r := range batch {
		if err != nil {
			r.decision, r.err = rateDecision{}, err
		}
		close(r.done)
	}
}

// rateAdmitManySQL decides a batch of starts; see job_rate_admit_many.
const rateAdmitManySQL = `SELECT ord, admitted, wait_us, started_at, lease_tokens, lease_from, lease_until
	FROM job_rate_admit_many($1::text[], $2::text[], $3::int[],
	ARRAY(SELECT p * interval '1 microsecond' FROM unnest($4::bigint[]) WITH ORDINALITY AS u(p, i) ORDER BY i), $5::timestamptz[], $6::bigint[], $7::boolean[],
	$8::int[])`

// rateWakeMax is the longest snooze the waker keeps a wake-up for; a job
// snoozed longer waits for its queue's next poll after its time. River's
// scheduler makes a snoozed job available again up to 5 s before its time
// (keeping the time), so the wake-up finds it.
const rateWakeMax = time.Hour

// rateWakeCompleter is how long River's completer may take to write a
// snooze (it writes small batches every 250 ms): a job snoozed for less is
// woken again then, in case the first wake-up came before its snooze was
// written.
const rateWakeCompleter = 260 * time.Millisecond

// rateWakePending bounds the wake-ups a process keeps pending; past it a
// snoozed job waits for its queue's next poll.
const rateWakePending = 10_000

// rateWakeGrid is the resolution of wake-ups: snoozes that end within the
// same 2 ms share one.
const rateWakeGrid = 2 * time.Millisecond

// waker wakes River's producers of a queue, in every process, when a job
// the rate limit snoozed becomes due (riverseam.WakeSQL), so that it is
// fetched then and not at the next poll (FetchPollInterval, 200 ms by
// default). Its times are this process's clock; the snooze is the
// database's, so a skew between the two delays or advances the wake-up by
// as much (an early one finds nothing due; the poll then fetches it).
type waker struct {
	pool   *pgxpool.Pool
	schema string

	mu      sync.Mutex
	pending map[wakeAt]struct{}
}

type wakeAt struct {
	queue string
	at    int64 // UnixNano, on rateWakeGrid
}

// at sends the wake-up of queue after d, unless d is past rateWakeMax or
// one for the same time is pending.
func (w *waker) at(ctx context.Context, queue string, d time.Duration) {
	if d > rateWakeMax {
		return
	}
	due := time.Now().Add(d + rateWakeGrid - 1).Truncate(rateWakeGrid)
	key := wakeAt{queue: queue, at: due.UnixNano()}
	w.mu.Lock()
	if _, ok := w.pending[key]; ok || len(w.pending) >= rateWakePending {
		w.mu.Unlock()
		return
	}
	if w.pending == nil {
		w.pending = make(map[wakeAt]struct{})
	}
	w.pending[key] = struct{}{}
	w.mu.Unlock()
	time.AfterFunc(time.Until(due), func() {
		w.mu.Lock()
		delete(w.pending, key)
		w.mu.Unlock()
		// Detached from the job, which has returned by then.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		// A failed wake-up (the pool closed with its client) leaves the
		// job to the poll.
		_, _ = w.pool.Exec(ctx, riverseam.WakeSQL, w.schema, queue)
	})
}
