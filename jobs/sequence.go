package jobs

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"

	"github.com/aftercommit/aftercommit/outbox/relay"
)

// Sequence puts a job in a sequence: the jobs of one (Namespace, Key) run
// one at a time, in the order their transactions committed, across every
// process; jobs of other keys are unaffected. A zero Key: the job is in no
// sequence.
//
// The order is the order in which the relay saw the transactions commit.
// Two transactions that conflict — one waited for a lock the other held,
// such as the row of the checkout or payer the key names — always keep
// their commit order, because the outbox writes its rows in the flush
// right before COMMIT. Transactions that do not conflict have no order to
// keep and get the one the relay saw.
//
// Sequences work on jobs the relay moves from the outbox table: the
// default path of package outbox, aftercommit_enqueue and plain INSERTs
// into outbox_jobs. A job of a sequenced kind inserted straight into
// river_job (outbox.Config.DirectInsert, River's own Insert, periodic
// jobs) is in no sequence and runs as any other.
type Sequence struct {
	// Namespace groups keys; kinds that share a namespace and key share a
	// sequence. Defaults to the job's kind. At most SequenceNameMax bytes.
	Namespace string
	// Key names the sequence within Namespace: a checkout, a payer, an
	// account. At most SequenceNameMax bytes.
	Key string
	// OnFailure says what a failed attempt of the sequence's head does to
	// the jobs behind it. Defaults to SequenceHold.
	OnFailure SequenceOnFailure
}

// SequenceNameMax is the longest Sequence.Namespace or Key, in bytes.
const SequenceNameMax = relay.SequenceNameMax

// SequenceOnFailure is what a failed attempt of a sequence's head does to
// the jobs behind it.
type SequenceOnFailure int

const (
	// SequenceHold keeps the jobs behind a failing head waiting until it
	// completes, or is discarded (its attempts ran out) or cancelled; then
	// the next one starts. The default.
	SequenceHold SequenceOnFailure = iota
	// SequenceContinue starts the next job as soon as the head fails an
	// attempt; the failed job retries on its own, out of order.
	SequenceContinue
)

// Sequencer is implemented by a worker whose jobs run in sequences.
// SequenceFor is called by the relay when it moves a job's outbox row into
// River, with the args alone: a sequence's key comes from args (an ID the
// job carries), never from the database, since the order is fixed before
// the job exists.
type Sequencer[T river.JobArgs] interface {
	SequenceFor(args T) Sequence
}

// FairShare keeps one key's backlog — a tenant's, a customer's — from
// pushing other keys' jobs behind it in a shared queue: at most InFlight
// jobs of the key are ever available or running at once, across every
// process. The key's other jobs wait as River 'pending' jobs, which no
// producer fetches, and the next one (in commit order) is made available
// when one of the InFlight finishes or fails an attempt (it retries on its
// own). A job of another key therefore waits behind at most InFlight jobs
// of each busy key, however many they have queued. Keys are independent;
// give a key more weight with a larger InFlight.
//
// The key's jobs are spread over InFlight sequences ("key#0" …
// "key#<InFlight-1>" in job_sequence_status) by outbox id, each running one
// job at a time and moving on when it fails (SequenceContinue): so the
// completions of one busy key never queue for one row. They start about
// in commit order, not strictly. A released job's scheduled_at is its
// release, so River's fetch puts it behind the jobs other keys had ready
// before.
//
// The trade-off: a key alone in the queue also runs at most InFlight jobs
// at once, and its next job is made available only when one finishes (in
// the finishing transaction: no poll, but one more step than a job already
// queued). Pick InFlight about the number of workers one key may fill.
//
// Like Sequence, it works on jobs the relay moves from the outbox table,
// with a key from args; a worker is a Sequencer or a FairSharer, not both.
type FairShare struct {
	// Namespace groups keys. Defaults to the job's kind. At most
	// SequenceNameMax bytes.
	Namespace string
	// Key names the tenant. Empty: no cap. At most SequenceNameMax bytes.
	Key string
	// InFlight is the most jobs of Key available or running at once, 1 to
	// FairShareMax. Defaults to FairShareInFlightDefault.
	InFlight int
}

// Limits of FairShare.InFlight.
const (
	FairShareInFlightDefault = 10
	FairShareMax             = relay.SequenceWidthMax
)

// FairSharer is implemented by a worker whose jobs share a queue fairly
// between keys. FairShareFor is called by the relay with the args alone.
type FairSharer[T river.JobArgs] interface {
	FairShareFor(args T) FairShare
}

// seqFunc is the untyped form of Sequencer and FairSharer that the relay
// calls.
type seqFunc func(args river.JobArgs) (relay.Sequence, bool)

// seqFuncFor returns w's seqFunc and true when w implements Sequencer[T]
// or FairSharer[T]; an error when it implements both.
func seqFuncFor[T river.JobArgs](kind string, w river.Worker[T]) (seqFunc, bool, error) {
	s, isSeq := w.(Sequencer[T])
	f, isFair := w.(FairSharer[T])
	switch {
	case isSeq && isFair:
		return nil, false, fmt.Errorf("kind %q: a worker is a Sequencer or a FairSharer, not both", kind)
	case !isSeq && !isFair:
		return nil, false, nil
	}
	return func(args river.JobArgs) (relay.Sequence, bool) {
		var typed T
		switch a := any(unwrapArgs(args)).(type) {
		case T:
			typed = a
		case *T:
			typed = *a
		default:
			return relay.Sequence{}, false
		}
		var out relay.Sequence
		if isSeq {
			seq := s.SequenceFor(typed)
			out = relay.Sequence{Namespace: seq.Namespace, Key: seq.Key, Width: 1, Continue: seq.OnFailure == SequenceContinue}
		} else {
			fair := f.FairShareFor(typed)
			out = relay.Sequence{Namespace: fair.Namespace, Key: fair.Key, Width: 1, Stripes: cmp.Or(fair.InFlight, FairShareInFlightDefault), Continue: true}
		}
		if out.Key == "" {
			return relay.Sequence{}, false
		}
		out.Namespace = cmp.Or(out.Namespace, kind)
		return out, true
	}, true, nil
}

// sequenceOf returns the sequence of decoded args, for relay.Config.
func (r *Registry) sequenceOf(args river.JobArgs) (relay.Sequence, bool) {
	e, ok := r.kinds[unwrapArgs(args).Kind()]
	if !ok || e.seq == nil {
		return relay.Sequence{}, false
	}
	return e.seq(args)
}

// sequenced reports whether args are in a sequence, for the outbox.
func (r *Registry) sequenced(args river.JobArgs) bool {
	_, ok := r.sequenceOf(args)
	return ok
}

// checkSequenced fails the registration of a sequenced kind that also has
// a queue lock: a queue lock merges jobs, a sequence keeps each.
func checkSequenced(kind string, e *kindEntry) error {
	if e.seq != nil && e.queueLock != nil {
		return fmt.Errorf("kind %q is a Sequencer and has a queue lock: a queue lock merges waiting jobs, a sequence runs each one", kind)
	}
	return nil
}

// seqCompleteMiddleware completes a job of a sequence or fair share as
// soon as its worker returns nil, when a job of its sequence waits for it
// and the worker did not complete it already with CompleteTx. River's
// completer records completions in batches: at once when a hundred are
// ready, else every 250 ms; the next job of the sequence is released only
// by the completion (the trigger on river_job), so without this a sequence
// would advance a few jobs a second whenever the process is not busy. It
// is River worker middleware.
//
// When the process finished seqBusyJobs jobs or more in the last
// seqBusyWindow, River's completer has a hundred ready at every tick and
// completes at once: the job is left to it. Otherwise the jobs that finish
// at the same moment are looked at together, in one transaction
// (groupCommit): those with a job waiting behind them are completed there
// (River's JobCompleteTx, one statement each), the others left to River's
// completer. The transaction is committed without
// waiting for the disk (synchronous_commit off): a crash may lose a
// completion, and the job runs again, as when River's completer loses its
// pending batch. It names the jobs' queues in aftercommit.sequence_wakes,
// so the trigger sends no notification for them (a transaction that
// notifies holds Postgres' notification lock until its COMMIT is on disk:
// completions would commit one at a time), and the middleware wakes each
// after the COMMIT, at most once per rateWakeGrid per queue.
type seqCompleteMiddleware struct {
	river.MiddlewareDefaults

	pool   *pgxpool.Pool
	wake   *waker
	logger *slog.Logger
	batch  groupCommit[*seqCompletion]
	busy   finishCounter
}

// River's completer writes a batch as soon as 100 completions wait, else
// every 250 ms: a process that finishes 100 jobs in 250 ms sees its
// completions written within milliseconds.
const (
	seqBusyJobs   = 100
	seqBusyWindow = 250 * time.Millisecond
)

// finishCounter counts the jobs a process finished in the last
// seqBusyWindow, in five buckets.
type finishCounter struct {
	mu      sync.Mutex
	buckets [5]struct {
		slot int64 // the bucket's time, in fifths of the window
		n    int
	}
}

// add counts a job finished now and returns the count over the window.
func (f *finishCounter) add(now time.Time) int {
	slot := now.UnixNano() / int64(seqBusyWindow/5)
	f.mu.Lock()
	defer f.mu.Unlock()
	b := &f.buckets[slot%5]
	if b.slot != slot {
		b.slot, b.n = slot, 0
	}
	b.n++
	total := 0
	for _, x := range f.buckets {
		if slot-x.slot < 5 {
			total += x.n
		}
	}
	return total
}

// seqCompletion is one job to complete.
type seqCompletion struct {
	ctx  context.Context // the job's, with its recorded output
	job  *rivertype.JobRow
	err  error
	done chan struct{}
}

// seqCompleteBatchMax is the most jobs one completion transaction takes;
// seqCompleteParallel the most such transactions out at once (each
// completion runs the sequence's trigger: one transaction at a time would
// bound a process's sequenced jobs to what one connection completes).
const (
	seqCompleteBatchMax = 200
	seqCompleteParallel = 4
)

func newSeqCompleteMiddleware(pool *pgxpool.Pool, schema string, logger *slog.Logger) *seqCompleteMiddleware {
	m := &seqCompleteMiddleware{pool: pool, wake: &waker{pool: pool, schema: schema}, logger: logger}
	m.batch = groupCommit[*seqCompletion]{max: seqCompleteBatchMax, parallel: seqCompleteParallel, send: m.completeBatch}
	return m
}

// seqWakesSQL names the queues whose wake-up the caller sends after its
// COMMIT (see aftercommit_sequence_release).
const seqWakesSQL = `SELECT set_config('aftercommit.sequence_wakes', $1, true)`

// seqCompleteTxSQL prepares the completion transaction: its queues, and
// no wait for the disk at COMMIT.
const seqCompleteTxSQL = `SELECT set_config('aftercommit.sequence_wakes', $1, true), set_config('synchronous_commit', 'off', true)`

var _ rivertype.WorkerMiddleware = (*seqCompleteMiddleware)(nil)

// seqMetadataKey is how a sequenced job's metadata names its sequence.
var seqMetadataKey = []byte(`"` + relay.MetadataKeySequence + `"`)

// completedKey is the context key of the flag CompleteTx sets for
// seqCompleteMiddleware.
type completedKey struct{}

// noArgs stands for a job's args where River's API wants a type and none
// is read.
type noArgs struct{}

func (noArgs) Kind() string { return "" }

// Work implements rivertype.WorkerMiddleware.
func (m *seqCompleteMiddleware) Work(ctx context.Context, job *rivertype.JobRow, doInner func(context.Context) error) error {
	if !bytes.Contains(job.Metadata, seqMetadataKey) {
		err := doInner(ctx)
		m.busy.add(time.Now())
		return err
	}
	completed := new(atomic.Bool)
	err := doInner(context.WithValue(ctx, completedKey{}, completed))
	finished := m.busy.add(time.Now())
	if err != nil {
		return err
	}
	if completed.Load() {
		// CompleteTx committed with the worker's transaction.
		m.wake.at(ctx, job.Queue, 0)
		return nil
	}
	if finished >= seqBusyJobs {
		return nil // busy: River's completer is quick
	}
	c := &seqCompletion{ctx: ctx, job: job, done: make(chan struct{})}
	m.batch.add(ctx, c)
	<-c.done // completeBatch answers within its timeout
	if c.err != nil {
		// River's completer completes it; its sequence waits until then.
		m.logger.WarnContext(ctx, "jobs: completing a job of a sequence at once failed; River's completer will",
			slog.Int64("job_id", job.ID), slog.String("kind", job.Kind), slog.String("err", c.err.Error()))
	}
	return nil
}

// completeBatch completes batch's jobs in one transaction and wakes their
// queues.
func (m *seqCompleteMiddleware) completeBatch(ctx context.Context, batch []*seqCompletion) {
	slices.SortFunc(batch, func(a, b *seqCompletion) int { return cmp.Compare(a.job.ID, b.job.ID) })
	var queues []string
	for _, c := range batch {
		if !slices.Contains(queues, c.job.Queue) {
			queues = append(queues, c.job.Queue)
		}
	}
	ids := make([]int64, len(batch))
	for i, c := range batch {
		ids[i] = c.job.ID
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	completed := false
	err := pgx.BeginFunc(ctx, m.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, seqWaitedForSQL, ids)
		if err != nil {
			return err
		}
		waitedFor, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil || len(waitedFor) == 0 {
			return err
		}
		if _, err := tx.Exec(ctx, seqCompleteTxSQL, strings.Join(queues, ",")); err != nil {
			return err
		}
		for _, c := range batch {
			if !slices.Contains(waitedFor, c.job.ID) {
				continue
			}
			// The job's own context carries the output it recorded (and
			// the client River's JobCompleteTx needs), not ctx.
			jobCtx := context.WithoutCancel(c.ctx)
			if _, err := river.JobCompleteTx[*riverpgxv5.Driver](jobCtx, tx, &river.Job[noArgs]{JobRow: c.job}); err != nil { //nolint:contextcheck // see above
				return fmt.Errorf("job %d: %w", c.job.ID, err)
			}
		}
		completed = true
		return nil
	})
	for _, c := range batch {
		c.err = err
		close(c.done)
	}
	if err == nil && completed {
		for _, q := range queues {
			m.wake.at(ctx, q, 0)
		}
	}
}

// seqWaitedForSQL returns the jobs among $1 that a job of their sequence
// waits for (pending members behind them).
const seqWaitedForSQL = `SELECT m.job_id FROM job_sequence_members m
  JOIN job_sequences s ON s.namespace = m.namespace AND s.seq_key = m.seq_key
 WHERE m.job_id = ANY ($1::bigint[]) AND s.release_pos < s.next_pos`

// beforeComplete prepares the completion of a job of a sequence in the
// worker's transaction tx: the middleware will wake its queue, not the
// trigger. It returns the flag to set once the completion is written; nil
// for a job of no sequence.
func beforeComplete(ctx context.Context, tx pgx.Tx, job *rivertype.JobRow) (*atomic.Bool, error) {
	f, ok := ctx.Value(completedKey{}).(*atomic.Bool)
	if !ok {
		return nil, nil
	}
	if _, err := tx.Exec(ctx, seqWakesSQL, job.Queue); err != nil {
		return nil, fmt.Errorf("jobs: completing %s job %d: %w", job.Kind, job.ID, err)
	}
	return f, nil
}
