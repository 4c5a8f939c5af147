package jobs

import (
	"context"
	"log/slog"
	"os"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
)

// Limits of what the args middleware records about unknown fields.
const (
	// maxUnknownFieldsPerKind is how many distinct unknown keys of one kind
	// get a metric series and a log line of their own; the others are
	// counted under unknownFieldOther, so a producer that sends random keys
	// cannot grow the metrics without bound.
	maxUnknownFieldsPerKind = 20
	// unknownFieldOther is the field label of the keys beyond the limit.
	unknownFieldOther = "(other)"
	// maxRecordedProblems is how many problems of one job are recorded in
	// its metadata.
	maxRecordedProblems = 20
)

// argsMiddleware decodes every job's args strictly before any other
// middleware (see Registry.DecodeArgs). Args that cannot mean anything
// cancel the job at its first attempt, with an *ArgsError, logged at error
// level; unknown fields alone let it run, counted in Metrics and logged
// once per kind and key. Either way the problems are recorded in the job's
// metadata (MetadataKeyArgsProblems), so check-args lists the job.
type argsMiddleware struct {
	river.MiddlewareDefaults

	lookup  func(kind string) (*argsSpec, bool)
	logger  *slog.Logger
	metrics *Metrics // nil: none

	mu      sync.Mutex
	unknown map[string]map[string]bool // kind → unknown keys seen, at most maxUnknownFieldsPerKind
}

var _ rivertype.WorkerMiddleware = (*argsMiddleware)(nil)

// newArgsMiddleware returns the args middleware of a client built from
// reg. A nil logger is River's default, as ClientConfig.Logger documents:
// warnings and errors written to os.Stdout.
func newArgsMiddleware(reg *Registry, logger *slog.Logger, metrics *Metrics) *argsMiddleware {
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return &argsMiddleware{
		lookup:  reg.argsSpec,
		logger:  logger,
		metrics: metrics,
		unknown: make(map[string]map[string]bool),
	}
}

// Work implements rivertype.WorkerMiddleware.
func (m *argsMiddleware) Work(ctx context.Context, job *rivertype.JobRow, doInner func(context.Context) error) error {
	spec, ok := m.lookup(job.Kind)
	if !ok {
		return doInner(ctx) // River reports the unknown kind
	}
	_, issues := spec.decode(job.EncodedArgs)
	if len(issues) == 0 {
		return doInner(ctx)
	}
	for _, is := range issues {
		if is.Problem == ArgsProblemUnknownField {
			m.unknownField(ctx, job, is.Field)
		}
	}
	// Recorded whether the job runs or not; merged into the job's metadata
	// when the attempt ends. It fails only outside a worker.
	_ = river.MetadataSet(ctx, MetadataKeyArgsProblems, issues[:min(len(issues), maxRecordedProblems)])
	if !failed(issues) {
		return doInner(ctx)
	}
	err := spec.error(job.Kind, issues)
	for i := range err.Problems {
		p := &err.Problems[i]
		p.JobID, p.State, p.Queue = job.ID, job.State, job.Queue
	}
	m.logger.ErrorContext(ctx, "jobs: cancelling a job whose args cannot mean anything; retrying would not heal it",
		slog.String("kind", job.Kind), slog.Int64("job_id", job.ID), slog.String("queue", job.Queue), slog.Any("err", err))
	return river.JobCancel(err)
}

// unknownField counts one job of job.Kind carrying the unknown key field,
// and logs the first such job of each kind and key.
func (m *argsMiddleware) unknownField(ctx context.Context, job *rivertype.JobRow, field string) {
	label, first, overflowed := m.see(job.Kind, field)
	m.metrics.countUnknownArgsField(job.Kind, label)
	switch {
	case first:
		m.logger.WarnContext(ctx, "jobs: a job's args hold a field its kind does not know; the job runs without it (logged once per kind and field)",
			slog.String("kind", job.Kind), slog.String("field", field), slog.Int64("job_id", job.ID))
	case overflowed:
		m.logger.WarnContext(ctx, "jobs: too many distinct unknown args fields for one kind; further ones are counted as field \""+unknownFieldOther+"\" and not logged",
			slog.String("kind", job.Kind), slog.String("field", field), slog.Int64("job_id", job.ID),
			slog.Int("limit", maxUnknownFieldsPerKind))
	}
}

// see returns the metric label of field for kind, whether field is seen
// for the first time (and gets a label of its own), and whether it is the
// first key of kind beyond the limit.
func (m *argsMiddleware) see(kind, field string) (label string, first, overflowed bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	seen := m.unknown[kind]
	if seen == nil {
		seen = make(map[string]bool)
		m.unknown[kind] = seen
	}
	if seen[field] {
		return field, false, false
	}
	if len(seen) < maxUnknownFieldsPerKind {
		seen[field] = true
		return field, true, false
	}
	if !seen[unknownFieldOther] {
		seen[unknownFieldOther] = true // one more entry, to log the overflow once
		return unknownFieldOther, false, true
	}
	return unknownFieldOther, false, false
}

// newArgsUnknownFieldsVec returns the counter of jobs run with unknown args
// fields, aftercommit_job_args_unknown_fields_total{kind,field}.
func newArgsUnknownFieldsVec(c MetricsConfig) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: c.Namespace, Subsystem: "job", Name: "args_unknown_fields_total", ConstLabels: c.ConstLabels,
		Help: "Passes of jobs through the worker stack whose args held a key their kind's type has no field for (the value is dropped; a typo or a newer producer), by kind and key. " +
			"At most 20 keys per kind and process; the others count as field=\"" + unknownFieldOther + "\".",
	}, []string{"kind", "field"})
}

// countUnknownArgsField counts one job of kind with the unknown key field.
func (m *Metrics) countUnknownArgsField(kind, field string) {
	if m == nil {
		return
	}
	m.argsUnknownFields.WithLabelValues(kind, field).Inc()
}
