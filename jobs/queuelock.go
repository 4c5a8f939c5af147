package jobs

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivershared/uniquestates"
	"github.com/riverqueue/river/rivertype"
)

// QueueLocker is implemented by the args of a kind with a queue lock whose
// key is computed: while one job of the kind with the same key is waiting
// (available, scheduled, retryable, pending), enqueueing another is a no-op
// (reported as FlushResult.UniqueSkipped). Once the waiting job starts
// running the key is free again, because the source of truth may have
// changed since the job read it.
//
// A kind can instead tag the fields that make up its key: any field tagged
// `jobs:"queue_lock"` joins the key. An empty key means no lock for that job.
//
// A job inserted with River's own UniqueOpts (from InsertOpts, or by River's
// client in another language) keeps River's uniqueness instead: the queue
// lock neither replaces its unique key on insert nor clears it on start.
type QueueLocker interface {
	QueueLockKey() string
}

// queueLockTag marks the args fields that make up a queue-lock key.
const queueLockTag = "queue_lock"

// queueLockStates are the states in which a job holds its kind's queue lock.
// Their bits in unique_states, River's unique index and its ON CONFLICT
// match are River internals, watched by internal/riverseam's canary.
// Running is included on purpose: the worker middleware clears the key as
// the job starts, and until it does, a concurrent enqueue must match the
// job's row — it then waits on that row's lock until the clearing
// transaction commits, or is matched before the job reads the source of
// truth. Either way no change goes unseen.
var queueLockStates = uniquestates.UniqueStatesToBitmask([]rivertype.JobState{
	rivertype.JobStateAvailable,
	rivertype.JobStatePending,
	rivertype.JobStateRetryable,
	rivertype.JobStateRunning,
	rivertype.JobStateScheduled,
})

// queueLockKeyFunc returns how to compute the queue-lock key of args of type
// t, or nil when the kind has no queue lock.
func queueLockKeyFunc(t reflect.Type) func(args river.JobArgs) string {
	if t.Implements(reflect.TypeFor[QueueLocker]()) {
		return func(args river.JobArgs) string { return args.(QueueLocker).QueueLockKey() } //nolint:errcheck,forcetypeassert // args is a t, and t implements QueueLocker (checked above)
	}
	st := t
	if st.Kind() == reflect.Pointer {
		st = st.Elem()
	}
	if st.Kind() != reflect.Struct {
		return nil
	}
	var fields []int
	for i := range st.NumField() {
		for _, opt := range strings.Split(st.Field(i).Tag.Get("jobs"), ",") {
			if opt == queueLockTag {
				fields = append(fields, i)
			}
		}
	}
	if len(fields) == 0 {
		return nil
	}
	return func(args river.JobArgs) string {
		v := reflect.ValueOf(args)
		if v.Kind() == reflect.Pointer {
			if v.IsNil() {
				return ""
			}
			v = v.Elem()
		}
		parts := make([]any, len(fields))
		for i, f := range fields {
			parts[i] = v.Field(f).Interface()
		}
		raw, err := json.Marshal(parts)
		if err != nil {
			return fmt.Sprint(parts...)
		}
		return string(raw)
	}
}

// queueLockKey returns the queue-lock key of args, if its kind has a lock
// and the key is not empty.
func (r *Registry) queueLockKey(args river.JobArgs) (string, bool) {
	args = unwrapArgs(args)
	if args == nil {
		return "", false
	}
	e, ok := r.kinds[args.Kind()]
	if !ok || e.queueLock == nil {
		return "", false
	}
	key := e.queueLock(args)
	return key, key != ""
}

// queueLockMiddleware implements queue locks on River's unique-key column,
// which a unique index guards: on insert it gives jobs of queue-locked kinds
// a key derived from their lock key and the waiting states, so River's
// INSERT … ON CONFLICT matches a waiting job instead of adding one (race-safe
// across transactions: the second waits for the first and then matches it);
// when a job starts it clears its own key, freeing the lock. A cancelled or
// deleted job leaves the index by itself. NewClient installs it.
//
// The human-readable key is kept in the job's metadata ("queue_lock"), so
// the waiting lock holders are visible with SQL:
//
//	SELECT id, kind, state, metadata->>'queue_lock' AS lock_key
//	  FROM river_job WHERE unique_key IS NOT NULL AND metadata ? 'queue_lock';
type queueLockMiddleware struct {
	river.MiddlewareDefaults

	reg      *Registry
	pool     *pgxpool.Pool
	clearSQL string
}

var (
	_ rivertype.JobInsertMiddleware = (*queueLockMiddleware)(nil)
	_ rivertype.WorkerMiddleware    = (*queueLockMiddleware)(nil)
)

// newQueueLockMiddleware returns the middleware for reg's kinds; schema is
// River's schema ("" for the search_path).
func newQueueLockMiddleware(reg *Registry, pool *pgxpool.Pool, schema string) *queueLockMiddleware {
	table := "river_job"
	if schema != "" {
		table = pgx.Identifier{schema, "river_job"}.Sanitize()
	}
	return &queueLockMiddleware{
		reg:  reg,
		pool: pool,
		// The table name is configuration, sanitized as an identifier. The
		// metadata condition repeats ownsUniqueKey's in SQL: a row whose key
		// the queue lock did not set is never cleared.
		clearSQL: `UPDATE ` + table + ` SET unique_key = NULL, unique_states = NULL WHERE id = $1 AND unique_key IS NOT NULL AND metadata ? 'queue_lock'`,
	}
}

// InsertMany gives queue-locked jobs their unique key before River inserts
// them.
func (m *queueLockMiddleware) InsertMany(ctx context.Context, manyParams []*rivertype.JobInsertParams, doInner func(context.Context) ([]*rivertype.JobInsertResult, error)) ([]*rivertype.JobInsertResult, error) {
	for _, p := range manyParams {
		if len(p.UniqueKey) > 0 {
			continue // the caller's own River UniqueOpts: River's uniqueness, not ours
		}
		key, ok := m.reg.queueLockKey(p.Args)
		if !ok {
			continue
		}
		sum := sha256.Sum256([]byte("aftercommit.queue_lock\x00" + p.Kind + "\x00" + key))
		p.UniqueKey = sum[:]
		p.UniqueStates = queueLockStates
		meta := map[string]any{}
		if len(p.Metadata) > 0 {
			if err := json.Unmarshal(p.Metadata, &meta); err != nil {
				return nil, fmt.Errorf("jobs: reading metadata of a %s job: %w", p.Kind, err)
			}
		}
		meta["queue_lock"] = key
		raw, err := json.Marshal(meta)
		if err != nil {
			return nil, fmt.Errorf("jobs: writing metadata of a %s job: %w", p.Kind, err)
		}
		p.Metadata = raw
	}
	return doInner(ctx)
}

// Work frees the queue lock of a starting job before it runs. Only a key
// the queue lock set is cleared: a job of the same kind inserted with River's
// own UniqueOpts (by River's client in any language, or through NewClient's
// client with explicit UniqueOpts) keeps its key, so River's uniqueness
// holds as River promises.
func (m *queueLockMiddleware) Work(ctx context.Context, job *rivertype.JobRow, doInner func(context.Context) error) error {
	if !ownsUniqueKey(job) {
		return doInner(ctx)
	}
	if e, ok := m.reg.kinds[job.Kind]; !ok || e.queueLock == nil {
		return doInner(ctx) // a kind this registry does not lock
	}
	// Should this fail, the job keeps its key while it retries: it is still
	// the only holder, because running is one of the locking states.
	if _, err := m.pool.Exec(ctx, m.clearSQL, job.ID); err != nil {
		return fmt.Errorf("jobs: freeing the queue lock of %s job %d: %w", job.Kind, job.ID, err)
	}
	return doInner(ctx)
}

// ownsUniqueKey reports whether job's unique key was set by the queue lock:
// the job carries the lock's metadata key and exactly the lock's unique
// states. River's own unique jobs (UniqueOpts) have neither.
func ownsUniqueKey(job *rivertype.JobRow) bool {
	if len(job.UniqueKey) == 0 || uniquestates.UniqueStatesToBitmask(job.UniqueStates) != queueLockStates {
		return false
	}
	var meta struct {
		QueueLock *string `json:"queue_lock"`
	}
	if err := json.Unmarshal(job.Metadata, &meta); err != nil {
		return false
	}
	return meta.QueueLock != nil
}
