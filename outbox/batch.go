package outbox

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"regexp"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
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
	params []river.InsertManyParams
	keys   map[dedupeKey]struct{}
	dups   int
	err    error
}

type dedupeKey struct {
	kind string
	key  string
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
// to JSON), a *PayloadTooLargeError, ErrInvalidQueue or ErrUnknownQueue, all
// wrapped with the job's kind. After an error the batch refuses to flush.
func (b *Batch) Add(args river.JobArgs, opts *river.InsertOpts) error {
	key, err := b.ob.validate(args, opts)

	b.mu.Lock()
	defer b.mu.Unlock()
	if err != nil {
		if b.err == nil {
			b.err = err
		}
		return err
	}
	if b.keys == nil {
		b.keys = make(map[dedupeKey]struct{})
	}
	if _, dup := b.keys[key]; dup {
		b.dups++
		return nil
	}
	b.keys[key] = struct{}{}
	b.params = append(b.params, river.InsertManyParams{Args: args, InsertOpts: opts})
	return nil
}

// Len is the number of distinct jobs buffered.
func (b *Batch) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.params)
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

// Flush writes every buffered job in tx with one River insert (one round
// trip; River adds a NOTIFY for queues it has not woken recently) and empties
// the batch. Jobs keep River's semantics: defaults from InsertOpts, unique
// options, insert notifications. The caller commits tx.
//
// It returns the first Add error, if any, without writing. An empty batch
// writes nothing and returns no results.
func (b *Batch) Flush(ctx context.Context, tx pgx.Tx) ([]*rivertype.JobInsertResult, error) {
	params, err := b.take()
	if err != nil || len(params) == 0 {
		return nil, err
	}
	res, err := b.ob.client.InsertManyTx(ctx, tx, params)
	if err != nil {
		return nil, fmt.Errorf("outbox: inserting %d jobs: %w", len(params), err)
	}
	return res, nil
}

// take returns the buffered jobs and empties the batch, or the first Add
// error.
func (b *Batch) take() ([]river.InsertManyParams, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return nil, b.err
	}
	params := b.params
	b.params, b.keys, b.dups = nil, nil, 0
	return params, nil
}

// Enqueue validates, de-duplicates and inserts jobs with default options in
// tx, a transaction the caller owns and commits, in one round trip.
func (o *Outbox) Enqueue(ctx context.Context, tx pgx.Tx, args ...river.JobArgs) ([]*rivertype.JobInsertResult, error) {
	b := o.NewBatch()
	for _, a := range args {
		if err := b.Add(a, nil); err != nil {
			return nil, err
		}
	}
	return b.Flush(ctx, tx)
}

// queueNameRE is the queue name format River accepts.
var queueNameRE = regexp.MustCompile(`^(?:[a-z0-9])+(?:[_|\-]?[a-z0-9]+)*$`)

// validate checks one job at the boundary and returns its de-duplication key.
func (o *Outbox) validate(args river.JobArgs, opts *river.InsertOpts) (dedupeKey, error) {
	if isNil(args) {
		return dedupeKey{}, ErrNilArgs
	}
	kind := args.Kind()
	if kind == "" {
		return dedupeKey{}, fmt.Errorf("%w: %T has an empty kind", ErrInvalidArgs, args)
	}
	encoded, err := json.Marshal(args)
	if err != nil {
		return dedupeKey{}, fmt.Errorf("%w: kind %q: %w", ErrInvalidArgs, kind, err)
	}
	if len(encoded) > o.cfg.MaxPayloadBytes {
		return dedupeKey{}, &PayloadTooLargeError{Kind: kind, Size: len(encoded), Limit: o.cfg.MaxPayloadBytes}
	}

	queue := river.QueueDefault
	if withOpts, ok := args.(river.JobArgsWithInsertOpts); ok && withOpts.InsertOpts().Queue != "" {
		queue = withOpts.InsertOpts().Queue
	}
	if opts != nil && opts.Queue != "" {
		queue = opts.Queue
	}
	if len(queue) > 64 || !queueNameRE.MatchString(queue) {
		return dedupeKey{}, fmt.Errorf("%w: %q (kind %q): use lower-case letters and digits separated by _ or -, at most 64 characters", ErrInvalidQueue, queue, kind)
	}
	if o.queues != nil {
		if _, ok := o.queues[queue]; !ok {
			return dedupeKey{}, fmt.Errorf("%w: %q (kind %q) is not one of the configured queues", ErrUnknownQueue, queue, kind)
		}
	}

	if d, ok := args.(Deduper); ok {
		return dedupeKey{kind: kind, key: "k:" + d.DedupeKey()}, nil
	}
	return dedupeKey{kind: kind, key: "j:" + string(encoded)}, nil
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
