package jobs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/aftercommit/aftercommit/outbox"
)

// ErrRegistry is matched by every registration error (errors.Is), which
// names the culprit: the kind, queue or domain at fault.
var ErrRegistry = errors.New("jobs: registry")

// Weight bands. A queue's weight sets the River Priority of its jobs and the
// number of jobs one worker process runs from it at once (MaxWorkers); see
// the package doc for why both.
const (
	WeightHigh   = 100   // weight >= 100: priority 1, 100 workers
	WeightNormal = 0     // 0 <= weight < 100: priority 2, 50 workers
	WeightLow    = -1000 // -1000 < weight < 0: priority 3, 10 workers; weight <= -1000: priority 4, 2 workers
)

// Queue is a River queue declared by a domain.
type Queue struct {
	// Name is the River queue name: "<domain>_<name>".
	Name string
	// Domain is the domain that declared the queue.
	Domain string
	// Weight is the domain's weight for the queue (higher runs sooner).
	Weight int
	// Priority is the River priority (1 highest … 4 lowest) given to jobs of
	// the kinds registered on this queue, derived from Weight.
	Priority int
	// MaxWorkers is how many jobs of this queue one worker process runs at
	// once: QueueOpts.MaxWorkers, else derived from Weight.
	MaxWorkers int
}

// QueueOpts are optional settings of a queue.
type QueueOpts struct {
	// MaxWorkers overrides the number derived from the weight.
	MaxWorkers int
}

// priorityAndWorkers maps a weight onto River's two knobs.
func priorityAndWorkers(weight int) (priority, maxWorkers int) {
	switch {
	case weight >= WeightHigh:
		return 1, 100
	case weight >= WeightNormal:
		return 2, 50
	case weight > WeightLow:
		return 3, 10
	default:
		return 4, 2
	}
}

// kindEntry is what the registry knows of one job kind.
type kindEntry struct {
	kind      string
	queue     string
	argsType  reflect.Type // T of AddWorker[T]
	args      *argsSpec    // how its args are decoded strictly
	needed    neededFunc
	lock      lockFunc                   // nil: the kind takes no worker lock
	rate      rateFunc                   // nil: the kind has no rate limit
	seq       seqFunc                    // nil: the kind's jobs are in no sequence
	queueLock func(river.JobArgs) string // nil: the kind has no queue lock
}

// Registry collects what the domains declare — queues, workers, periodic
// jobs — and builds the River client and the outbox settings from it. Each
// domain exposes Register(reg *jobs.Registry); cmd/worker calls them all.
//
// Registration never panics: problems (a kind registered twice, a worker on
// an undeclared queue, a malformed queue name) are collected and returned
// together by Err, and NewClient refuses to build a client from a registry
// with errors.
type Registry struct {
	workers       *river.Workers
	queues        map[string]Queue
	kinds         map[string]*kindEntry
	aliases       map[string]string // KindAliases alias → kind
	periodic      []*river.PeriodicJob
	topics        map[string]string // topic → publishing domain
	subscriptions []subscription
	errs          []error
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{
		workers: river.NewWorkers(),
		queues:  make(map[string]Queue),
		kinds:   make(map[string]*kindEntry),
		aliases: make(map[string]string),
		topics:  make(map[string]string),
	}
}

func (r *Registry) fail(format string, args ...any) {
	r.errs = append(r.errs, fmt.Errorf("%w: "+format, append([]any{ErrRegistry}, args...)...))
}

// Err returns every registration problem, joined, or nil.
func (r *Registry) Err() error {
	return errors.Join(append(slices.Clip(r.errs), r.checkSubscriptions()...)...)
}

// AddQueue declares the queue "<domain>_<name>" with a weight and returns
// its full name. Declaring the same queue twice is an error.
func (r *Registry) AddQueue(domain, name string, weight int, opts *QueueOpts) string {
	full := domain + "_" + name
	if domain == "" || name == "" || !outbox.ValidQueueName(full) {
		r.fail("queue %q of domain %q: domain and name must be lower-case letters and digits separated by _ or -, 64 characters in all", name, domain)
		return full
	}
	if _, dup := r.queues[full]; dup {
		r.fail("queue %q declared twice", full)
		return full
	}
	priority, maxWorkers := priorityAndWorkers(weight)
	if opts != nil && opts.MaxWorkers != 0 {
		if opts.MaxWorkers < 1 || opts.MaxWorkers > 10_000 {
			r.fail("queue %q: MaxWorkers must be between 1 and 10000, got %d", full, opts.MaxWorkers)
			return full
		}
		maxWorkers = opts.MaxWorkers
	}
	r.queues[full] = Queue{Name: full, Domain: domain, Weight: weight, Priority: priority, MaxWorkers: maxWorkers}
	return full
}

// AddWorker registers w for the kind of T on queue, a full name returned by
// AddQueue (or river.QueueDefault). Jobs of that kind enqueued through an
// outbox built by NewOutbox go to that queue with its priority unless the
// caller says otherwise. If w implements Needed[T], the client built by
// NewClient asks it before each job.
//
// That client also decodes every job's args strictly before anything else
// runs (see DecodeArgs): the fields T tags `jobs:"required"` or
// `jobs:"id"`, and T's Validate method if it has one (ArgsValidator), say
// which args cannot mean anything; such a job is cancelled at its first
// attempt. A misuse of the jobs tag in T is a registration error.
func AddWorker[T river.JobArgs](r *Registry, queue string, w river.Worker[T]) {
	var zero T
	kind := zero.Kind()
	if _, ok := r.queues[queue]; !ok && queue != river.QueueDefault {
		r.fail("worker for kind %q is on queue %q, which no domain declared", kind, queue)
		return
	}
	if withOpts, ok := any(zero).(river.JobArgsWithInsertOpts); ok {
		if q := withOpts.InsertOpts().Queue; q != "" && q != queue {
			r.fail("kind %q: its InsertOpts name queue %q but it is registered on %q", kind, q, queue)
			return
		}
	}
	spec, err := newArgsSpec(reflect.TypeFor[T]())
	if err != nil {
		r.fail("kind %q: %v", kind, err)
		return
	}
	if err := river.AddWorkerSafely(r.workers, w); err != nil {
		r.fail("kind %q: %v", kind, err)
		return
	}
	e := &kindEntry{
		kind:      kind,
		queue:     queue,
		argsType:  reflect.TypeFor[T](),
		args:      spec,
		queueLock: queueLockKeyFunc(reflect.TypeFor[T]()),
	}
	if withAliases, ok := any(zero).(river.JobArgsWithKindAliases); ok {
		for _, alias := range withAliases.KindAliases() {
			if _, taken := r.aliases[alias]; !taken {
				r.aliases[alias] = kind
			}
		}
	}
	if n, ok := w.(Needed[T]); ok {
		e.needed = func(ctx context.Context, job *rivertype.JobRow) (bool, error) {
			var args T
			if err := json.Unmarshal(job.EncodedArgs, &args); err != nil {
				return false, fmt.Errorf("jobs: decoding args of %s job %d: %w", job.Kind, job.ID, err)
			}
			return n.Needed(ctx, &river.Job[T]{JobRow: job, Args: args})
		}
	}
	if lock, ok := lockFuncFor(w); ok {
		e.lock = lock
	}
	if rate, ok := rateFuncFor(w); ok {
		e.rate = rate
	}
	seq, ok, err := seqFuncFor(kind, w)
	if err != nil {
		r.fail("%v", err)
		return
	}
	if ok {
		e.seq = seq
	}
	if err := checkSequenced(kind, e); err != nil {
		r.fail("%v", err)
		return
	}
	r.kinds[kind] = e
}

// AddPeriodic registers a periodic job. River runs periodic jobs on the
// leader only, but every worker process registers all of them so that any
// process can lead.
func (r *Registry) AddPeriodic(job *river.PeriodicJob) {
	if job == nil {
		r.fail("nil periodic job")
		return
	}
	r.periodic = append(r.periodic, job)
}

// Queues returns the declared queues, sorted by name.
func (r *Registry) Queues() []Queue {
	out := make([]Queue, 0, len(r.queues))
	for _, q := range r.queues {
		out = append(out, q)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// QueueNames returns the names of the declared queues plus River's default
// queue, sorted.
func (r *Registry) QueueNames() []string {
	names := []string{river.QueueDefault}
	for name := range r.queues {
		names = append(names, name)
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// Kinds returns the registered job kinds, sorted.
func (r *Registry) Kinds() []string {
	out := make([]string, 0, len(r.kinds))
	for k := range r.kinds {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// ArgsType returns the args type T that AddWorker[T] registered for kind,
// for tools that inspect what jobs carry (the args check, audits of what
// args may hold).
func (r *Registry) ArgsType(kind string) (reflect.Type, bool) {
	e, ok := r.kinds[kind]
	if !ok {
		return nil, false
	}
	return e.argsType, true
}

// KindDefaults returns the queue and priority of kind's registration, for
// outbox.Config.KindDefaults and for producers that write job rows
// themselves. The priority is always one River accepts (1–4): a kind on a
// queue the registry did not declare (River's default queue) gets River's
// default priority, river.PriorityDefault.
func (r *Registry) KindDefaults(kind string) (queue string, priority int, ok bool) {
	e, ok := r.kinds[kind]
	if !ok {
		return "", 0, false
	}
	if q, ok := r.queues[e.queue]; ok {
		return e.queue, q.Priority, true
	}
	return e.queue, river.PriorityDefault, true
}

// argsSpec returns how the args of kind, or of the kind it is an alias of,
// are decoded.
func (r *Registry) argsSpec(kind string) (*argsSpec, bool) {
	e, ok := r.kinds[kind]
	if !ok {
		if k, alias := r.aliases[kind]; alias {
			e, ok = r.kinds[k]
		}
	}
	if !ok {
		return nil, false
	}
	return e.args, true
}

// neededFunc returns the needed-check of kind, if its worker has one.
func (r *Registry) neededFunc(kind string) (neededFunc, bool) {
	e, ok := r.kinds[kind]
	if !ok || e.needed == nil {
		return nil, false
	}
	return e.needed, true
}

// lockFunc returns the worker-lock function of kind, if its worker has one.
func (r *Registry) lockFunc(kind string) (lockFunc, bool) {
	e, ok := r.kinds[kind]
	if !ok || e.lock == nil {
		return nil, false
	}
	return e.lock, true
}

// rateFunc returns the rate-limit function of kind, if its worker has one.
func (r *Registry) rateFunc(kind string) (rateFunc, bool) {
	e, ok := r.kinds[kind]
	if !ok || e.rate == nil {
		return nil, false
	}
	return e.rate, true
}

// selectQueues returns the River queue configs of names (all declared
// queues, plus default, when names is nil).
func (r *Registry) selectQueues(names []string) (map[string]river.QueueConfig, error) {
	if names == nil {
		names = r.QueueNames()
	}
	out := make(map[string]river.QueueConfig, len(names))
	var unknown []string
	for _, n := range names {
		if n == river.QueueDefault {
			out[n] = river.QueueConfig{MaxWorkers: 50}
			continue
		}
		q, ok := r.queues[n]
		if !ok {
			unknown = append(unknown, n)
			continue
		}
		out[n] = river.QueueConfig{MaxWorkers: q.MaxWorkers}
	}
	if len(unknown) > 0 {
		return nil, fmt.Errorf("%w: unknown queue(s) %s; declared: %s", ErrRegistry,
			strings.Join(unknown, ", "), strings.Join(r.QueueNames(), ", "))
	}
	return out, nil
}
