// Package outboxrow is the format of one outbox_jobs row's options, shared
// by the writer (package outbox), which turns a caller's river.InsertOpts
// into nullable columns, and the relay (package outbox/relay), which turns
// the columns of a row any producer wrote back into River's insert options,
// refusing what River would refuse.
package outboxrow

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
)

// Opts are the nullable columns of an outbox_jobs row: nil (or a nil slice)
// is NULL, "the kind's default".
type Opts struct {
	Queue       *string
	Priority    *int32
	MaxAttempts *int32
	ScheduledAt *time.Time
	Metadata    []byte // a JSON object
	Options     []byte // JSON of Options
}

// IsZero reports whether every column is NULL: the row needs only kind and
// args.
func (o *Opts) IsZero() bool {
	return o.Queue == nil && o.Priority == nil && o.MaxAttempts == nil && o.ScheduledAt == nil &&
		o.Metadata == nil && o.Options == nil
}

// Options is the options column: River's rarer insert options.
type Options struct {
	Tags    []string `json:"tags,omitempty"`
	Pending bool     `json:"pending,omitempty"`
	Unique  *Unique  `json:"unique,omitempty"`
}

// Unique is River's UniqueOpts; ByPeriod in seconds.
type Unique struct {
	ByArgs      bool     `json:"by_args,omitempty"`
	ByPeriod    float64  `json:"by_period,omitempty"`
	ByQueue     bool     `json:"by_queue,omitempty"`
	ByState     []string `json:"by_state,omitempty"`
	ExcludeKind bool     `json:"exclude_kind,omitempty"`
}

// ErrInvalid is matched by every error of FromInsertOpts and InsertOpts.
var ErrInvalid = errors.New("invalid job options")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

// FromInsertOpts returns the columns of o (nil: all NULL). It refuses what
// InsertOpts would refuse when read back, so a bad option fails at enqueue.
func FromInsertOpts(o *river.InsertOpts) (Opts, error) {
	var out Opts
	if o == nil {
		return out, nil
	}
	if o.Queue != "" {
		q := o.Queue
		out.Queue = &q
	}
	if o.Priority != 0 {
		if o.Priority < 1 || o.Priority > 4 {
			return Opts{}, invalid("priority %d: River's priorities are 1 to 4", o.Priority)
		}
		p := int32(o.Priority) //nolint:gosec // checked above
		out.Priority = &p
	}
	if o.MaxAttempts != 0 {
		if o.MaxAttempts < 1 || o.MaxAttempts > math.MaxInt16 {
			return Opts{}, invalid("max attempts %d: must be 1 to %d", o.MaxAttempts, math.MaxInt16)
		}
		m := int32(o.MaxAttempts) //nolint:gosec // checked above
		out.MaxAttempts = &m
	}
	if !o.ScheduledAt.IsZero() {
		at := o.ScheduledAt
		out.ScheduledAt = &at
	}
	if len(o.Metadata) > 0 {
		if err := checkMetadata(o.Metadata); err != nil {
			return Opts{}, err
		}
		out.Metadata = o.Metadata
	}
	var opt Options
	if o.Tags != nil {
		if err := checkTags(o.Tags); err != nil {
			return Opts{}, err
		}
		opt.Tags = o.Tags
	}
	opt.Pending = o.Pending
	if u := o.UniqueOpts; u.ByArgs || u.ByPeriod != 0 || u.ByQueue || u.ByState != nil || u.ExcludeKind {
		if u.ByPeriod < 0 {
			return Opts{}, invalid("unique by period %s: must not be negative", u.ByPeriod)
		}
		un := &Unique{ByArgs: u.ByArgs, ByPeriod: u.ByPeriod.Seconds(), ByQueue: u.ByQueue, ExcludeKind: u.ExcludeKind}
		for _, s := range u.ByState {
			un.ByState = append(un.ByState, string(s))
		}
		opt.Unique = un
	}
	if opt.Tags != nil || opt.Pending || opt.Unique != nil {
		raw, err := json.Marshal(opt)
		if err != nil {
			return Opts{}, invalid("%v", err)
		}
		out.Options = raw
	}
	return out, nil
}

// InsertOpts returns River's insert options for the columns, or an error
// matching ErrInvalid naming the column at fault. The queue is checked by
// validQueue.
func (o *Opts) InsertOpts(validQueue func(string) bool) (*river.InsertOpts, error) {
	var out river.InsertOpts
	if o.Queue != nil {
		if !validQueue(*o.Queue) {
			return nil, invalid("queue %q: use lower-case letters and digits separated by _ or -, at most 64 characters", *o.Queue)
		}
		out.Queue = *o.Queue
	}
	if o.Priority != nil {
		if *o.Priority < 1 || *o.Priority > 4 {
			return nil, invalid("priority %d: River's priorities are 1 to 4", *o.Priority)
		}
		out.Priority = int(*o.Priority)
	}
	if o.MaxAttempts != nil {
		if *o.MaxAttempts < 1 || *o.MaxAttempts > math.MaxInt16 {
			return nil, invalid("max_attempts %d: must be 1 to %d", *o.MaxAttempts, math.MaxInt16)
		}
		out.MaxAttempts = int(*o.MaxAttempts)
	}
	if o.ScheduledAt != nil {
		out.ScheduledAt = *o.ScheduledAt
	}
	if o.Metadata != nil {
		if err := checkMetadata(o.Metadata); err != nil {
			return nil, err
		}
		out.Metadata = o.Metadata
	}
	if o.Options != nil {
		var opt Options
		dec := json.NewDecoder(bytes.NewReader(o.Options))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&opt); err != nil {
			return nil, invalid("options %s: %v (expected {\"tags\": [...], \"pending\": bool, \"unique\": {\"by_args\", \"by_period\" (seconds), \"by_queue\", \"by_state\", \"exclude_kind\"}})", truncate(o.Options), err)
		}
		if opt.Tags != nil {
			if err := checkTags(opt.Tags); err != nil {
				return nil, err
			}
			out.Tags = opt.Tags
		}
		out.Pending = opt.Pending
		if u := opt.Unique; u != nil {
			if u.ByPeriod < 0 || u.ByPeriod > float64(math.MaxInt64/int64(time.Second)) {
				return nil, invalid("options.unique.by_period %v: must be 0 to %d seconds", u.ByPeriod, math.MaxInt64/int64(time.Second))
			}
			out.UniqueOpts = river.UniqueOpts{
				ByArgs: u.ByArgs, ByPeriod: time.Duration(u.ByPeriod * float64(time.Second)),
				ByQueue: u.ByQueue, ExcludeKind: u.ExcludeKind,
			}
			for _, s := range u.ByState {
				if !validState(s) {
					return nil, invalid("options.unique.by_state %q: not a River job state", s)
				}
				out.UniqueOpts.ByState = append(out.UniqueOpts.ByState, rivertype.JobState(s))
			}
		}
	}
	return &out, nil
}

// HasUnique reports whether opts ask for River's uniqueness.
func HasUnique(opts *river.InsertOpts) bool {
	if opts == nil {
		return false
	}
	u := opts.UniqueOpts
	return u.ByArgs || u.ByPeriod != 0 || u.ByQueue || u.ByState != nil || u.ExcludeKind
}

func validState(s string) bool {
	for _, st := range rivertype.JobStates() {
		if string(st) == s {
			return true
		}
	}
	return false
}

func checkMetadata(raw []byte) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil || m == nil {
		return invalid("metadata %s: must be a JSON object", truncate(raw))
	}
	return nil
}

// tagRE is River's rule for tags (client.go, insertParamsFromConfigArgsAndOptions).
var tagRE = regexp.MustCompile(`\A[\w][\w\-]+[\w]\z`)

func checkTags(tags []string) error {
	for _, t := range tags {
		if len(t) > 255 {
			return invalid("tag %q: at most 255 characters", truncate([]byte(t)))
		}
		if !tagRE.MatchString(t) {
			return invalid("tag %q: must match %s", t, tagRE)
		}
	}
	return nil
}

func truncate(b []byte) string {
	if len(b) > 80 {
		return string(b[:80]) + "…"
	}
	return string(b)
}

// ValidQueueName reports whether River accepts name as a queue name: at most
// 64 characters, lower-case letters and digits, single separators (_, - or |)
// between them. It is River's `^(?:[a-z0-9])+(?:[_|\-]?[a-z0-9]+)*$` without
// a regexp, which cost a fifth of a bulk enqueue.
func ValidQueueName(name string) bool {
	if name == "" || len(name) > 64 {
		return false
	}
	prevSep := true // a name may not start with a separator
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
			prevSep = false
		case c == '_' || c == '-' || c == '|':
			if prevSep {
				return false
			}
			prevSep = true
		default:
			return false
		}
	}
	return !prevSep
}

// Table and statement names shared by the writer and the relay.
const (
	// Table is the outbox table, unqualified (search_path decides).
	Table = "outbox_jobs"
	// DeadTable holds the rows the relay refused.
	DeadTable = "outbox_dead_jobs"
	// Channel is the notification channel, after the schema and a dot,
	// on which a writer wakes the relays: "<schema>.aftercommit_outbox".
	Channel = "aftercommit_outbox"
)
