package outbox

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/outbox/internal/outboxrow"
)

// Deduper is implemented by job args that choose their own de-duplication
// key. Two jobs of the same kind with the same key, enqueued in one
// transaction, are written once. Args without it are keyed by their JSON
// encoding (struct fields in declaration order, map keys sorted), so equal
// args are written once.
type Deduper interface {
	DedupeKey() string
}

// Batch buffers jobs, drops duplicates (same kind and de-duplication key) as
// they are added, and writes them all with one River insert when flushed.
// The first job added with a given key wins, options included.
//
// A Batch remembers the first error Add returned; Flush returns it and writes
// nothing, so a transaction never commits a partial set of jobs.
//
// A Batch is safe for concurrent use.
type Batch struct {
	ob *Outbox

	mu     sync.Mutex
	jobs   []pendingJob
	events []pendingEvent
	// jobBatches are the job batches the transaction creates, adds
	// members to or seals, in the order it first named them.
	jobBatches []*pendingJobBatch
	keys       map[dedupeKind]map[string]struct{}
	dups       int
	err        error
}

// pendingJob is a job buffered until the flush.
type pendingJob struct {
	args river.JobArgs
	// opts are the caller's options: the outbox row's columns hold only
	// these (the relay applies the kind's defaults); the direct path merges
	// the kind's defaults into them.
	opts *river.InsertOpts
	kind string
	// encoded is the JSON of args, written to the outbox row.
	encoded string
	// cols are opts as the outbox row's nullable columns.
	cols outboxrow.Opts
}

// dedupeKind separates keys of different kinds, and keys chosen by Deduper
// from JSON encodings.
type dedupeKind struct {
	kind   string
	custom bool
	batch  string // a job batch's members are de-duplicated among themselves
}

// jsonEncoder encodes args into a reusable buffer, exactly as json.Marshal
// (and so River) does, plus a trailing newline that is cut off.
type jsonEncoder struct {
	buf bytes.Buffer
	enc *json.Encoder
}

var encoders = sync.Pool{New: func() any {
	e := &jsonEncoder{}
	e.enc = json.NewEncoder(&e.buf)
	return e
}}

func getEncoder() *jsonEncoder { return encoders.Get().(*jsonEncoder) } //nolint:errcheck,forcetypeassert // the pool holds only *jsonEncoder: New and putEncoder put nothing else

func putEncoder(e *jsonEncoder) {
	if e.buf.Cap() > 64<<10 { // don't keep the buffers of huge args alive
		return
	}
	e.buf.Reset()
	encoders.Put(e)
}

func (e *jsonEncoder) encode(v any) ([]byte, error) {
	e.buf.Reset()
	if err := e.enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(e.buf.Bytes(), []byte("\n")), nil
}

// NewBatch returns an empty batch that validates and inserts jobs with o's
// settings and River client.
func (o *Outbox) NewBatch() *Batch {
	return &Batch{ob: o}
}

// Add validates args and buffers them unless a job of the same kind and
// de-duplication key is already buffered. It writes nothing.
//
// It returns ErrNilArgs, ErrInvalidArgs (empty kind, args that do not encode
// to JSON), a *PayloadTooLargeError, ErrInvalidQueue, ErrUnknownQueue,
// ErrInvalidOptions or ErrSequencedDirect, all naming the job's kind. After an error the batch refuses to flush.
//
// Args implementing Deduper are not encoded when their key is already
// buffered: a dropped duplicate costs a map lookup.
func (b *Batch) Add(args river.JobArgs, opts *river.InsertOpts) error {
	_, err := b.add(args, opts, "")
	return err
}

// add is Add for a member of job batch batch ("" for none), reporting
// whether args were buffered (not dropped as a duplicate).
func (b *Batch) add(args river.JobArgs, opts *river.InsertOpts, batch string) (bool, error) {
	kind, err := b.ob.check(args, opts)
	if err != nil {
		return false, b.fail(err)
	}
	kind.batch = batch

	var key []byte
	if custom, ok := b.ob.customKey(args); ok {
		key = []byte(custom)
		kind.custom = true
		if b.dropIfDuplicate(kind, key) {
			return false, nil
		}
	}

	enc := getEncoder()
	defer putEncoder(enc)
	encoded, err := enc.encode(args)
	if err != nil {
		return false, b.fail(fmt.Errorf("%w: kind %q: %w", ErrInvalidArgs, kind.kind, err))
	}
	if len(encoded) > b.ob.cfg.MaxPayloadBytes {
		return false, b.fail(&PayloadTooLargeError{Kind: kind.kind, Size: len(encoded), Limit: b.ob.cfg.MaxPayloadBytes})
	}
	if hasNUL(encoded) {
		return false, b.fail(fmt.Errorf("%w: kind %q: a string holds a NUL character (\\u0000), which Postgres' jsonb refuses", ErrInvalidArgs, kind.kind))
	}
	if !kind.custom {
		key = encoded
	}
	var cols outboxrow.Opts
	if !b.ob.cfg.DirectInsert {
		if cols, err = outboxrow.FromInsertOpts(b.ob.rowOpts(args, opts)); err != nil {
			return false, b.fail(fmt.Errorf("%w: kind %q: %w", ErrInvalidOptions, kind.kind, err))
		}
	}

	b.mu.Lock()
	defer b.mu.Unlock()
	if b.keys == nil {
		b.keys = make(map[dedupeKind]map[string]struct{})
	}
	seen := b.keys[kind]
	if seen == nil {
		seen = make(map[string]struct{})
		b.keys[kind] = seen
	}
	// string(key) in a map index does not allocate: duplicates cost no
	// allocation, only new keys are copied.
	if _, dup := seen[string(key)]; dup {
		b.dups++
		return false, nil
	}
	seen[string(key)] = struct{}{}
	b.jobs = append(b.jobs, pendingJob{args: args, opts: opts, kind: kind.kind, encoded: string(encoded), cols: cols})
	return true, nil
}

// dropIfDuplicate counts and reports a key that is already buffered.
func (b *Batch) dropIfDuplicate(kind dedupeKind, key []byte) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, dup := b.keys[kind][string(key)]; dup {
		b.dups++
		return true
	}
	return false
}

// fail remembers the first error, so the batch refuses to flush.
func (b *Batch) fail(err error) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == nil {
		b.err = err
	}
	return err
}

// Len is the number of distinct jobs buffered.
func (b *Batch) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.jobs)
}

// Duplicates is the number of Add calls dropped as duplicates.
func (b *Batch) Duplicates() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.dups
}

// Err is the first error Add returned, if any.
func (b *Batch) Err() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// Flush writes every buffered event and job in tx, in one round trip, and
// empties the batch. The jobs go to the outbox table (one INSERT), to be
// relayed into River once tx commits; with Config.DirectInsert they go to
// River's job table through River's insert, keeping River's semantics at
// once (defaults, unique options, insert notifications). The caller commits
// tx.
//
// It returns the first Add or Publish error, if any, without writing. An
// empty batch writes nothing.
func (b *Batch) Flush(ctx context.Context, tx pgx.Tx) (FlushResult, error) {
	jobs, events, jobBatches, dups, err := b.take()
	if err != nil || (len(jobs) == 0 && len(events) == 0 && len(jobBatches) == 0) {
		return FlushResult{}, err
	}
	res, err := b.ob.write(ctx, tx, jobs, events, jobBatches, false)
	if err != nil {
		return FlushResult{}, err
	}
	res.Enqueued, res.Duplicates = len(jobs)+dups, dups
	if b.ob.cfg.OnFlush != nil {
		b.ob.cfg.OnFlush(ctx, res)
	}
	return res, nil
}

// take returns the buffered jobs, events and job batch operations and the
// number of duplicates dropped, and empties the batch; or the first Add or
// Publish error.
func (b *Batch) take() ([]pendingJob, []pendingEvent, []*pendingJobBatch, int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return nil, nil, nil, 0, b.err
	}
	jobs, events, jobBatches, dups := b.jobs, b.events, b.jobBatches, b.dups
	b.jobs, b.events, b.jobBatches, b.keys, b.dups = nil, nil, nil, nil, 0
	return jobs, events, jobBatches, dups, nil
}

// Enqueue validates and inserts one job in tx (any pgx.Tx, not only an
// InTx one), with the same options and checks as Tx.Enqueue, in one round
// trip. opts may be nil. It is River's InsertTx for the outbox: the job is
// written where InTx would write it (the outbox table, or River's table
// with Config.DirectInsert).
func (o *Outbox) Enqueue(ctx context.Context, tx pgx.Tx, args river.JobArgs, opts *river.InsertOpts) (FlushResult, error) {
	b := o.NewBatch()
	if err := b.Add(args, opts); err != nil {
		return FlushResult{}, err
	}
	return b.Flush(ctx, tx)
}

// EnqueueMany validates, de-duplicates and inserts jobs in tx in one round
// trip, as Enqueue does one. It is River's InsertManyTx for the outbox. No
// job is written when any of them is refused.
func (o *Outbox) EnqueueMany(ctx context.Context, tx pgx.Tx, params []river.InsertManyParams) (FlushResult, error) {
	b := o.NewBatch()
	for _, p := range params {
		if err := b.Add(p.Args, p.InsertOpts); err != nil {
			return FlushResult{}, err
		}
	}
	return b.Flush(ctx, tx)
}

// hasNUL reports whether JSON text holds the escape of a NUL character,
// \u0000, which Postgres' jsonb refuses (SQLSTATE 22P05) when the row is
// written: a "\u0000" preceded by an even number of backslashes (an escaped
// backslash followed by "u0000" is text, not a NUL).
func hasNUL(json []byte) bool {
	for i := 0; ; {
		j := bytes.Index(json[i:], []byte(`\u0000`))
		if j < 0 {
			return false
		}
		at := i + j
		backslashes := 0
		for k := at - 1; k >= 0 && json[k] == '\\'; k-- {
			backslashes++
		}
		if backslashes%2 == 0 {
			return true
		}
		i = at + 1
	}
}

// ValidQueueName reports whether River accepts name as a queue name: at most
// 64 characters, lower-case letters and digits, single separators (_, - or |)
// between them. It is River's `^(?:[a-z0-9])+(?:[_|\-]?[a-z0-9]+)*$` without
// a regexp, which cost a fifth of a bulk enqueue.
func ValidQueueName(name string) bool { return outboxrow.ValidQueueName(name) }

// check validates what can be checked without encoding the args: nil args,
// the kind, and the queue the job would go to.
func (o *Outbox) check(args river.JobArgs, opts *river.InsertOpts) (dedupeKind, error) {
	if isNil(args) {
		return dedupeKind{}, ErrNilArgs
	}
	kind := args.Kind()
	if kind == "" {
		return dedupeKind{}, fmt.Errorf("%w: %T has an empty kind", ErrInvalidArgs, args)
	}

	queue := river.QueueDefault
	if withOpts, ok := args.(river.JobArgsWithInsertOpts); ok {
		if q := withOpts.InsertOpts().Queue; q != "" {
			queue = q
		}
	}
	if o.kindDefaults != nil {
		if q, _, ok := o.kindDefaults(kind); ok && q != "" {
			queue = q
		}
	}
	if opts != nil && opts.Queue != "" {
		queue = opts.Queue
	}
	if !ValidQueueName(queue) {
		return dedupeKind{}, fmt.Errorf("%w: %q (kind %q): use lower-case letters and digits separated by _ or -, at most 64 characters", ErrInvalidQueue, queue, kind)
	}
	if !allowed(queue, o.queues, o.regQueues) {
		return dedupeKind{}, fmt.Errorf("%w: %q (kind %q) is not one of the configured queues", ErrUnknownQueue, queue, kind)
	}
	if o.sequenced != nil && o.sequenced(args) {
		switch {
		case o.cfg.DirectInsert:
			return dedupeKind{}, fmt.Errorf("%w: kind %q", ErrSequencedDirect, kind)
		case opts != nil && (opts.Pending || outboxrow.HasUnique(opts)):
			return dedupeKind{}, fmt.Errorf("%w: kind %q: a job of a sequence can be neither unique nor inserted pending", ErrInvalidOptions, kind)
		}
	}
	return dedupeKind{kind: kind}, nil
}

// customKey is the de-duplication key chosen by the registry or by the
// args' own DedupeKey method, if any.
func (o *Outbox) customKey(args river.JobArgs) (string, bool) {
	if o.dedupeKey != nil {
		if key, ok := o.dedupeKey(args); ok {
			return key, true
		}
	}
	if d, ok := args.(Deduper); ok {
		return d.DedupeKey(), true
	}
	return "", false
}

// rowOpts are the options an outbox row records for args: the caller's.
// Without a registry's kind defaults the relay may not know the
// args' Go type either, so the type's own InsertOpts() are recorded too,
// under the caller's; with a registry the relay decodes the args and River
// applies them itself, below the kind's defaults, as on the direct path.
func (o *Outbox) rowOpts(args river.JobArgs, opts *river.InsertOpts) *river.InsertOpts {
	withOpts, ok := args.(river.JobArgsWithInsertOpts)
	if o.kindDefaults != nil || !ok {
		return opts
	}
	merged := withOpts.InsertOpts()
	if opts == nil {
		return &merged
	}
	o2 := *opts
	if o2.Queue == "" {
		o2.Queue = merged.Queue
	}
	if o2.Priority == 0 {
		o2.Priority = merged.Priority
	}
	if o2.MaxAttempts == 0 {
		o2.MaxAttempts = merged.MaxAttempts
	}
	if o2.ScheduledAt.IsZero() {
		o2.ScheduledAt = merged.ScheduledAt
	}
	if o2.Metadata == nil {
		o2.Metadata = merged.Metadata
	}
	if o2.Tags == nil {
		o2.Tags = merged.Tags
	}
	if !o2.Pending {
		o2.Pending = merged.Pending
	}
	if reflect.ValueOf(o2.UniqueOpts).IsZero() {
		o2.UniqueOpts = merged.UniqueOpts
	}
	return &o2
}

// withKindDefaults fills the queue and priority opts leave unset from
// the registry's kind defaults. opts is not modified; a copy is returned.
func (o *Outbox) withKindDefaults(kind string, opts *river.InsertOpts) *river.InsertOpts {
	if o.kindDefaults == nil {
		return opts
	}
	queue, priority, ok := o.kindDefaults(kind)
	if !ok || (opts != nil && (opts.Queue != "" || queue == "") && (opts.Priority != 0 || priority == 0)) {
		return opts
	}
	var merged river.InsertOpts
	if opts != nil {
		merged = *opts
	}
	if merged.Queue == "" {
		merged.Queue = queue
	}
	if merged.Priority == 0 {
		merged.Priority = priority
	}
	return &merged
}

// isNil reports whether args is nil or a nil pointer, on which Kind() would
// panic and which would encode to JSON null.
func isNil(args river.JobArgs) bool {
	if args == nil {
		return true
	}
	v := reflect.ValueOf(args)
	return v.Kind() == reflect.Pointer && v.IsNil()
}
