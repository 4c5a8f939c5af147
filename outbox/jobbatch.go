package outbox

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"regexp"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/outbox/internal/outboxrow"
)

// MetadataKeyJobBatch is the key of a job batch member's metadata that names
// its batch (a UUID); migration 0025's trigger on river_job counts the
// member's finish by it.
const MetadataKeyJobBatch = "aftercommit_batch"

// MetadataKeyJobBatchDone is the key of a batch callback's metadata that
// holds its batch's ID and counts (see jobs.JobBatchDoneOf).
const MetadataKeyJobBatchDone = "aftercommit_batch_done"

var (
	// ErrJobBatchSealed is returned by a flush that adds members to a
	// sealed (or finished) job batch; nothing of the transaction is written.
	ErrJobBatchSealed = errors.New("outbox: job batch is sealed")
	// ErrJobBatchUnknown is returned by a flush that adds to, or seals, a
	// job batch that does not exist.
	ErrJobBatchUnknown = errors.New("outbox: job batch does not exist")
	// ErrInvalidJobBatch is returned for a malformed job batch ID or
	// callback.
	ErrInvalidJobBatch = errors.New("outbox: invalid job batch")
)

// JobBatchOpts are a job batch's callbacks and whether it stays open.
type JobBatchOpts struct {
	// OnSuccess is enqueued when every member completed. Nil: none.
	OnSuccess river.JobArgs
	// OnSuccessOpts are OnSuccess's insert options: Queue, Priority,
	// MaxAttempts and Tags are used (the kind's defaults apply as for any
	// job); the callback is available as soon as the batch finishes.
	OnSuccessOpts *river.InsertOpts
	// OnFailure is enqueued instead when a member was discarded or
	// cancelled (or deleted before it finished). Nil: none.
	OnFailure river.JobArgs
	// OnFailureOpts are OnFailure's insert options, as OnSuccessOpts.
	OnFailureOpts *river.InsertOpts
	// Open leaves the batch open: later transactions (a member job's, say)
	// may add members with Tx.EnqueueInJobBatch until one seals it with
	// Tx.SealJobBatch; the callback cannot run before. A batch that is not
	// open is sealed when its transaction commits.
	Open bool
}

// JobBatch is a job batch being created in a transaction: its members are
// enqueued with its Enqueue, and the batch is written with the
// transaction's jobs when it commits. See Tx.NewJobBatch.
type JobBatch struct {
	id string
	b  *Batch
}

// ID is the batch's ID, a UUID: the handle to add members to it or seal it
// later (when open), and the ID its callback and the views show.
func (jb *JobBatch) ID() string { return jb.id }

// Enqueue buffers args as a member of the batch, as Tx.Enqueue does (opts
// may be nil). A member identical to one already buffered in the batch is
// dropped as a duplicate and not counted; members are never de-duplicated
// against jobs outside the batch. A member may not carry unique options
// (a job skipped at insert would never finish), nor be of a kind
// de-duplicated at insert by its queue lock.
func (jb *JobBatch) Enqueue(args river.JobArgs, opts *river.InsertOpts) error {
	return jb.b.addMember(jb.id, args, opts)
}

// pendingJobBatch is what a transaction does to one job batch.
type pendingJobBatch struct {
	id        string
	create    bool
	members   int
	seal      bool
	onSuccess []byte // JSON, or nil
	onFailure []byte
}

// NewJobBatch starts a job batch in b's transaction (see Tx.NewJobBatch).
func (b *Batch) NewJobBatch(opts *JobBatchOpts) (*JobBatch, error) {
	if opts == nil {
		opts = &JobBatchOpts{}
	}
	onSuccess, err := b.ob.callbackSpec(opts.OnSuccess, opts.OnSuccessOpts)
	if err != nil {
		return nil, b.fail(err)
	}
	onFailure, err := b.ob.callbackSpec(opts.OnFailure, opts.OnFailureOpts)
	if err != nil {
		return nil, b.fail(err)
	}
	id := newUUID()
	b.mu.Lock()
	defer b.mu.Unlock()
	p := b.jobBatch(id)
	p.create, p.seal, p.onSuccess, p.onFailure = true, !opts.Open, onSuccess, onFailure
	return &JobBatch{id: id, b: b}, nil
}

// EnqueueInJobBatch buffers args as a member of the open job batch id (see
// Tx.EnqueueInJobBatch).
func (b *Batch) EnqueueInJobBatch(id string, args river.JobArgs, opts *river.InsertOpts) error {
	if !validUUID(id) {
		return b.fail(fmt.Errorf("%w: ID %q is not a UUID", ErrInvalidJobBatch, id))
	}
	return b.addMember(id, args, opts)
}

// SealJobBatch seals the job batch id when the transaction commits (see
// Tx.SealJobBatch).
func (b *Batch) SealJobBatch(id string) error {
	if !validUUID(id) {
		return b.fail(fmt.Errorf("%w: ID %q is not a UUID", ErrInvalidJobBatch, id))
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.jobBatch(id).seal = true
	return nil
}

// jobBatch returns the pending operations on batch id, created on first
// use. b.mu is held.
func (b *Batch) jobBatch(id string) *pendingJobBatch {
	for _, p := range b.jobBatches {
		if p.id == id {
			return p
		}
	}
	p := &pendingJobBatch{id: id}
	b.jobBatches = append(b.jobBatches, p)
	return p
}

// addMember buffers args as a member of batch id and counts it, unless it
// duplicates a member of the batch already buffered.
func (b *Batch) addMember(id string, args river.JobArgs, opts *river.InsertOpts) error {
	if isNil(args) {
		return b.fail(ErrNilArgs)
	}
	if opts != nil && outboxrow.HasUnique(opts) {
		return b.fail(fmt.Errorf("%w: kind %q: a job batch member cannot be unique", ErrInvalidOptions, args.Kind()))
	}
	if b.ob.dedupeKey != nil {
		if _, ok := b.ob.dedupeKey(args); ok {
			return b.fail(fmt.Errorf("%w: kind %q: its queue lock de-duplicates it at insert, which a job batch member cannot be", ErrInvalidOptions, args.Kind()))
		}
	}
	if a, ok := args.(river.JobArgsWithInsertOpts); ok && !reflect.ValueOf(a.InsertOpts().UniqueOpts).IsZero() {
		return b.fail(fmt.Errorf("%w: kind %q: a job batch member cannot be unique", ErrInvalidOptions, args.Kind()))
	}
	withBatch, err := withMetadata(opts, MetadataKeyJobBatch, id)
	if err != nil {
		return b.fail(fmt.Errorf("%w: kind %q: %w", ErrInvalidOptions, args.Kind(), err))
	}
	added, err := b.add(args, withBatch, id)
	if err != nil || !added {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.jobBatch(id).members++
	return nil
}

// withMetadata returns a copy of opts whose Metadata (a JSON object, or
// none) also holds key: value.
func withMetadata(opts *river.InsertOpts, key string, value any) (*river.InsertOpts, error) {
	var out river.InsertOpts
	if opts != nil {
		out = *opts
	}
	m := map[string]any{}
	if len(out.Metadata) > 0 {
		if err := json.Unmarshal(out.Metadata, &m); err != nil || m == nil {
			return nil, fmt.Errorf("metadata is not a JSON object: %s", out.Metadata)
		}
	}
	m[key] = value
	enc, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	out.Metadata = enc
	return &out, nil
}

// callbackSpec validates a callback and returns it as job_batches stores
// it, or nil for none.
func (o *Outbox) callbackSpec(args river.JobArgs, opts *river.InsertOpts) ([]byte, error) {
	if args == nil || isNil(args) {
		return nil, nil
	}
	if _, err := o.check(args, opts); err != nil {
		return nil, fmt.Errorf("%w: callback: %w", ErrInvalidJobBatch, err)
	}
	encoded, err := json.Marshal(args)
	if err != nil {
		return nil, fmt.Errorf("%w: callback %q: %w", ErrInvalidJobBatch, args.Kind(), err)
	}
	var eff river.InsertOpts
	if a, ok := args.(river.JobArgsWithInsertOpts); ok {
		eff = a.InsertOpts()
	}
	if o.kindDefaults != nil {
		if q, p, ok := o.kindDefaults(args.Kind()); ok {
			if q != "" {
				eff.Queue = q
			}
			if p != 0 {
				eff.Priority = p
			}
		}
	}
	if opts != nil {
		if opts.Queue != "" {
			eff.Queue = opts.Queue
		}
		if opts.Priority != 0 {
			eff.Priority = opts.Priority
		}
		if opts.MaxAttempts != 0 {
			eff.MaxAttempts = opts.MaxAttempts
		}
		if opts.Tags != nil {
			eff.Tags = opts.Tags
		}
	}
	spec := struct {
		Kind        string          `json:"kind"`
		Args        json.RawMessage `json:"args"`
		Queue       string          `json:"queue,omitempty"`
		Priority    int             `json:"priority,omitempty"`
		MaxAttempts int             `json:"max_attempts,omitempty"`
		Tags        []string        `json:"tags,omitempty"`
	}{args.Kind(), encoded, eff.Queue, eff.Priority, eff.MaxAttempts, eff.Tags}
	switch {
	case spec.Priority < 0 || spec.Priority > 4:
		return nil, fmt.Errorf("%w: callback %q: priority %d is not between 1 and 4", ErrInvalidJobBatch, spec.Kind, spec.Priority)
	case spec.MaxAttempts < 0 || spec.MaxAttempts > 32767:
		return nil, fmt.Errorf("%w: callback %q: max attempts %d", ErrInvalidJobBatch, spec.Kind, spec.MaxAttempts)
	}
	return json.Marshal(spec)
}

// jobBatchAddSQL records a transaction's job batch operations; see
// job_batch_add_many (migration 0025).
const jobBatchAddSQL = `SELECT job_batch_add_many($1::uuid[], $2::int[], $3::boolean[], $4::boolean[], $5::jsonb[], $6::jsonb[])`

// jobBatchesAdd is the statement that records ops.
func jobBatchesAdd(ops []*pendingJobBatch) recordedStmt {
	n := len(ops)
	ids, members := make([]string, n), make([]int32, n)
	creates, seals := make([]bool, n), make([]bool, n)
	onSuccess, onFailure := make([]*string, n), make([]*string, n)
	for i, p := range ops {
		ids[i], members[i], creates[i], seals[i] = p.id, int32(p.members), p.create, p.seal //nolint:gosec // members of one transaction
		if p.onSuccess != nil {
			s := string(p.onSuccess)
			onSuccess[i] = &s
		}
		if p.onFailure != nil {
			s := string(p.onFailure)
			onFailure[i] = &s
		}
	}
	return recordedStmt{sql: jobBatchAddSQL, args: []any{ids, members, creates, seals, onSuccess, onFailure}}
}

// jobBatchError maps job_batch_add_many's errors to the outbox's.
func jobBatchError(err error) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || !jobBatchMessage.MatchString(pgErr.Message) {
		return err
	}
	switch pgErr.Code {
	case "55000":
		return fmt.Errorf("%w: %w", ErrJobBatchSealed, err)
	case "P0002":
		return fmt.Errorf("%w: %w", ErrJobBatchUnknown, err)
	}
	return err
}

var jobBatchMessage = regexp.MustCompile(`^job batch [0-9a-f-]{36} `)

var uuidPattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// validUUID reports whether id is a UUID in the lower-case form Postgres
// prints.
func validUUID(id string) bool { return uuidPattern.MatchString(id) }

// newUUID returns a random (version 4) UUID.
func newUUID() string {
	var u [16]byte
	_, _ = rand.Read(u[:]) // crypto/rand.Read never fails
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}
