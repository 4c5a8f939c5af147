package outbox

import (
	"fmt"
	"reflect"

	"github.com/riverqueue/river"

	"github.com/aftercommit/aftercommit/outbox/internal/outboxrow"
)

// MetadataKeyJobRef is the key of a job's metadata that holds its
// reference (a UUID), which other jobs name to wait for it.
const MetadataKeyJobRef = "aftercommit_ref"

// MetadataKeyAfter is the key of a job's metadata that names the jobs it
// waits for: {"refs": [...], "run_on_failure": bool}.
const MetadataKeyAfter = "aftercommit_after"

// AfterMax is the most jobs one job may wait for.
const AfterMax = 1000

// JobRef names a job enqueued with Tx.EnqueueRef or Tx.EnqueueAfter, for
// jobs that wait for it, in the same transaction or a later one.
type JobRef string

// After says which jobs a job waits for.
type After struct {
	// Refs are the jobs it waits for: 1 to AfterMax references returned by
	// EnqueueRef or EnqueueAfter.
	Refs []JobRef
	// RunOnFailure runs the job once they all finished, however they did.
	// By default a job waits for them to complete, and is cancelled (the
	// reason in its errors) when one is discarded or cancelled.
	RunOnFailure bool
}

// EnqueueRef buffers args as Enqueue does and returns the job's reference,
// which jobs enqueued with EnqueueAfter (in this transaction or a later
// one) name to wait for it. It is never de-duplicated against another job.
func (b *Batch) EnqueueRef(args river.JobArgs, opts *river.InsertOpts) (JobRef, error) {
	return b.enqueueRef(args, opts, nil)
}

// EnqueueAfter buffers args as a job that starts only once the jobs of
// after completed (see After), and returns its own reference. Its state is
// decided when it reaches River's table, whatever opts asks: pending while
// it waits, cancelled at once when a job it waits for failed already.
func (b *Batch) EnqueueAfter(after After, args river.JobArgs, opts *river.InsertOpts) (JobRef, error) {
	if len(after.Refs) == 0 || len(after.Refs) > AfterMax {
		return "", b.fail(fmt.Errorf("%w: a job waits for 1 to %d jobs, not %d", ErrInvalidOptions, AfterMax, len(after.Refs)))
	}
	refs := make([]string, len(after.Refs))
	for i, r := range after.Refs {
		if !validUUID(string(r)) {
			return "", b.fail(fmt.Errorf("%w: %q is not a job reference", ErrInvalidOptions, r))
		}
		refs[i] = string(r)
	}
	return b.enqueueRef(args, opts, map[string]any{"refs": refs, "run_on_failure": after.RunOnFailure})
}

// enqueueRef buffers args with a new reference and, when after is set, the
// jobs they wait for.
func (b *Batch) enqueueRef(args river.JobArgs, opts *river.InsertOpts, after map[string]any) (JobRef, error) {
	if isNil(args) {
		return "", b.fail(ErrNilArgs)
	}
	kind := args.Kind()
	unique := opts != nil && outboxrow.HasUnique(opts)
	if a, ok := args.(river.JobArgsWithInsertOpts); ok && !reflect.ValueOf(a.InsertOpts().UniqueOpts).IsZero() {
		unique = true
	}
	if unique {
		return "", b.fail(fmt.Errorf("%w: kind %q: a job with a reference cannot be unique (a job skipped at insert would leave its dependents waiting)", ErrInvalidOptions, kind))
	}
	if b.ob.dedupeKey != nil {
		if _, ok := b.ob.dedupeKey(args); ok {
			return "", b.fail(fmt.Errorf("%w: kind %q: its queue lock de-duplicates it at insert, which a job with a reference cannot be", ErrInvalidOptions, kind))
		}
	}
	if after != nil && b.ob.sequenced != nil && b.ob.sequenced(args) {
		return "", b.fail(fmt.Errorf("%w: kind %q: a job in a sequence or fair share cannot wait for other jobs", ErrInvalidOptions, kind))
	}
	ref := newUUID()
	withRef, err := withMetadata(opts, MetadataKeyJobRef, ref)
	if err == nil && after != nil {
		withRef, err = withMetadata(withRef, MetadataKeyAfter, after)
	}
	if err != nil {
		return "", b.fail(fmt.Errorf("%w: kind %q: %w", ErrInvalidOptions, kind, err))
	}
	// Its own de-duplication namespace: a referenced job is never dropped.
	if _, err := b.add(args, withRef, "ref:"+ref); err != nil {
		return "", err
	}
	return JobRef(ref), nil
}
