package jobs

import "github.com/riverqueue/river/rivertype"

// The vocabulary of args problems: what the worker of a client built by
// NewClient finds in a job's args (ArgsError, Registry.CheckArgs), records
// in its metadata (MetadataKeyArgsProblems), and what the queued-args check
// of package jobs/argcheck lists.

// MetadataKeyArgsProblems is the key of river_job.metadata under which the
// worker of a client built by NewClient records the args problems it found
// in a job — the reasons it cancelled it, the unknown fields it ran with —
// as a JSON array of {"problem", "severity", "field", "message"}: the JSON
// keys of ArgsProblem, into which it decodes (with the job's identity left
// zero). River's GIN index on metadata finds them: metadata ? 'args_problems'.
const MetadataKeyArgsProblems = "args_problems"

// ArgsProblemKind says what is wrong with a job's args.
type ArgsProblemKind string

// The problems of a job's args, with their severity. A failure is what the
// worker of a client built by NewClient cancels a job for, at its first
// attempt (but unknown_kind, which River fails and retries); a warning is
// reported and the job runs. unknown_kind and unknown_queue are problems of
// the job rather than of its args: the queued-args check (argcheck.Check)
// reports them; the worker, ArgsError and Registry.CheckArgs report the
// others.
const (
	// ArgsProblemUnknownKind (failure): no worker is registered for the
	// job's kind (nor as a KindAliases alias). River fails every attempt
	// with an UnknownJobKindError and finally discards the job.
	ArgsProblemUnknownKind ArgsProblemKind = "unknown_kind"

	// ArgsProblemUnknownQueue (warning): the job sits in a queue no domain
	// declared, so no client built from the registry works it: it waits
	// forever.
	ArgsProblemUnknownQueue ArgsProblemKind = "unknown_queue"

	// ArgsProblemTypeMismatch (failure): a field's JSON value does not
	// decode into the field's Go type (a string where an int64 is
	// expected).
	ArgsProblemTypeMismatch ArgsProblemKind = "type_mismatch"

	// ArgsProblemUndecodable (failure): the args as a whole do not decode
	// (not a JSON object, a custom UnmarshalJSON returned an error, …) and
	// no single field is to blame.
	ArgsProblemUndecodable ArgsProblemKind = "undecodable"

	// ArgsProblemMissingField (failure): a field tagged `jobs:"required"`
	// or `jobs:"id"` is absent.
	ArgsProblemMissingField ArgsProblemKind = "missing_field"

	// ArgsProblemNullField: a field is JSON null. A failure when the field
	// is required; a warning when it is optional and its Go type cannot be
	// nil (a number, string, bool, struct or array), which then decodes to
	// its zero value.
	ArgsProblemNullField ArgsProblemKind = "null_field"

	// ArgsProblemInvalidID (failure): a field tagged `jobs:"id"` holds 0 or
	// a negative number (or a list with one).
	ArgsProblemInvalidID ArgsProblemKind = "invalid_id"

	// ArgsProblemInvalid (failure): the args' Validate method
	// (ArgsValidator) returned an error.
	ArgsProblemInvalid ArgsProblemKind = "invalid"

	// ArgsProblemUnknownField (warning): a key the type has no field for —
	// a field removed or renamed, a newer producer's field, a typo. Its
	// value is dropped when the job is decoded; the worker counts it in
	// Metrics, logs it once per kind and key, and records it in the job's
	// metadata.
	ArgsProblemUnknownField ArgsProblemKind = "unknown_field"
)

// ArgsSeverity grades an ArgsProblem.
type ArgsSeverity string

const (
	// ArgsSeverityFailure marks args that cannot mean anything: the job is
	// cancelled at its first attempt (or fails, for an unknown kind).
	ArgsSeverityFailure ArgsSeverity = "failure"
	// ArgsSeverityWarning marks a job that runs, but not quite as written
	// (data dropped, a null taken as zero, a queue nobody works).
	ArgsSeverityWarning ArgsSeverity = "warning"
)

// ArgsProblem is one problem of one job.
type ArgsProblem struct {
	// JobID, Kind, State and Queue identify the job. Where no job row is at
	// hand (Registry.DecodeArgs, Registry.CheckArgs) only Kind is set.
	JobID int64              `json:"job_id"`
	Kind  string             `json:"kind"`
	State rivertype.JobState `json:"state"`
	Queue string             `json:"queue"`
	// Problem says what is wrong; Severity how bad it is.
	Problem  ArgsProblemKind `json:"problem"`
	Severity ArgsSeverity    `json:"severity"`
	// Field is the JSON path of the field at fault ("customer.email"),
	// empty for problems of the whole job.
	Field string `json:"field,omitempty"`
	// Message says what is wrong with the field (or the job) to a person:
	// "missing (required)", "must be an ID above 0, got 0".
	Message string `json:"message"`
}
