package jobs

import (
	"bytes"
	"cmp"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"github.com/riverqueue/river"
)

// The options of the `jobs` struct tag of an args field. Several are
// separated by commas: `jobs:"id,queue_lock"`.
const (
	// ArgsTagRequired marks a field a job cannot mean anything without: a
	// job whose args lack it, or hold null for it, is cancelled at its first
	// attempt.
	ArgsTagRequired = "required"

	// ArgsTagID marks a required identifier: an integer that must be above
	// zero (or a list of integers each above zero). A job whose args lack
	// it, hold null, 0 or a negative number for it, is cancelled at its
	// first attempt.
	ArgsTagID = "id"

	// ArgsTagOptional marks a field as optional, which every field is
	// unless tagged required or id; it is accepted to document intent.
	ArgsTagOptional = "optional"
)

// ErrBadArgs is matched (errors.Is) by the error of every job whose args
// cannot mean anything: not a JSON object, a value of the wrong type, a
// required field missing or null, an ID of 0 or below, a Validate error.
// Such a job is cancelled at its first attempt: retrying never heals it.
// The error is an *ArgsError naming the kind and each field at fault.
var ErrBadArgs = errors.New("jobs: bad args")

// ErrUnknownKind is returned by Registry.DecodeArgs for a kind no worker is
// registered for.
var ErrUnknownKind = errors.New("jobs: unknown kind")

// ArgsValidator is implemented by args with rules their struct tags cannot
// say (a day in a given format, a range). The client built by NewClient
// calls Validate on the decoded args of every job that passed the tag
// rules, before any other middleware; an error cancels the job at its
// first attempt, like any bad args. Return a *FieldError to name the field.
//
// Validate judges the args alone: whether the work is still needed is for
// the source of truth to say (Needed), never Validate.
type ArgsValidator interface {
	Validate() error
}

// FieldError is what a Validate method returns to name the field at fault:
// the job's error then reads "<kind>: args: <field>: <reason>".
type FieldError struct {
	// Field is the JSON name of the field, a dotted path when nested.
	Field string
	// Reason says what is wrong, e.g. `must be a date such as 2006-01-02,
	// got "10/03/2026"`.
	Reason string
	// Err, when set, is a sentinel naming the problem; Unwrap returns it,
	// so errors.Is finds it through the job's error.
	Err error
}

// Error implements error: "<field>: <reason>".
func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// Unwrap returns Err.
func (e *FieldError) Unwrap() error { return e.Err }

// ArgsError is the error of a job whose args cannot mean anything (it
// matches ErrBadArgs). The client built by NewClient cancels such a job at
// its first attempt with it (wrapped by river.JobCancel), and it is what
// Registry.DecodeArgs returns.
type ArgsError struct {
	// Kind is the job's kind.
	Kind string
	// Problems are every problem found, failures and warnings (unknown
	// fields, which alone would not stop the job), in the order of
	// Registry.CheckArgs; at least one is a failure.
	Problems []ArgsProblem

	cause error // the Validate error, if any
}

// maxErrorProblems is how many problems ArgsError.Error names; the rest
// are counted.
const maxErrorProblems = 10

// Error implements error: "<kind>: args: <field>: <what>; …", e.g.
// `donations.update_email_donation: args: donation_id: missing (required);
// unknown field "donationId" (ignored)`.
func (e *ArgsError) Error() string {
	var b strings.Builder
	b.WriteString(e.Kind)
	b.WriteString(": args: ")
	for i, p := range e.Problems {
		if i == maxErrorProblems {
			fmt.Fprintf(&b, "; and %d more", len(e.Problems)-i)
			break
		}
		if i > 0 {
			b.WriteString("; ")
		}
		switch {
		case p.Problem == ArgsProblemUnknownField:
			fmt.Fprintf(&b, "unknown field %q (ignored)", p.Field)
		case p.Field != "":
			b.WriteString(p.Field)
			b.WriteString(": ")
			b.WriteString(p.Message)
		default:
			b.WriteString(p.Message)
		}
	}
	return b.String()
}

// Is makes errors.Is(err, ErrBadArgs) true.
func (e *ArgsError) Is(target error) bool { return target == ErrBadArgs }

// Unwrap returns the error of the args' Validate method, if it returned
// one, so that errors.Is and errors.As find what it wraps.
func (e *ArgsError) Unwrap() error { return e.cause }

// Failures returns the problems of severity failure.
func (e *ArgsError) Failures() []ArgsProblem {
	var out []ArgsProblem
	for _, p := range e.Problems {
		if p.Severity == ArgsSeverityFailure {
			out = append(out, p)
		}
	}
	return out
}

// UnknownFields returns the JSON paths of the keys the args type has no
// field for.
func (e *ArgsError) UnknownFields() []string {
	var out []string
	for _, p := range e.Problems {
		if p.Problem == ArgsProblemUnknownField {
			out = append(out, p.Field)
		}
	}
	return out
}

// DecodeArgs decodes raw as the args of kind (or of one of its
// KindAliases) strictly, the way the worker of a client built by NewClient
// does before it runs a job, and returns the args: a value of the T that
// AddWorker[T] registered. When the worker would cancel the job it returns
// an *ArgsError matching ErrBadArgs instead; an unknown field alone is no
// error (the job runs; CheckArgs, argcheck.Check and the worker report
// it). It returns an error matching ErrUnknownKind when no worker is
// registered for kind.
//
// A producer in another language can run its fixtures through it in a
// test, to learn before a deploy what a worker will make of its jobs.
func (r *Registry) DecodeArgs(kind string, raw []byte) (river.JobArgs, error) {
	spec, ok := r.argsSpec(kind)
	if !ok {
		return nil, fmt.Errorf("%w: no worker is registered for kind %q", ErrUnknownKind, kind)
	}
	args, issues := spec.decode(raw)
	if failed(issues) {
		return nil, spec.error(kind, issues)
	}
	return args, nil
}

// CheckArgs returns every problem the worker of a client built by
// NewClient would find in raw as the args of kind (or of one of its
// KindAliases): the failures it would cancel the job for, and the warnings
// it would run the job with (unknown fields, optional fields that are null)
// — what it records in the job's metadata (MetadataKeyArgsProblems). It
// decodes raw as DecodeArgs does, strictly, with the type AddWorker
// registered for kind, that type's jobs tags and its Validate method
// (called, as by the worker, only on args that decode without failure).
//
// The problems come in the order of ArgsError.Problems: the fields in
// declaration order (the problems of a nested object in place of its field,
// and each object's unknown keys, sorted, after its fields), then
// undecodable, then invalid. Each has Kind set to kind; JobID, State and
// Queue are left zero, for a caller that knows the job to fill in. Args a
// worker takes as written have none: the result is nil.
//
// A problem of the args is never an error. The only error is for a kind no
// worker is registered for: it matches ErrUnknownKind, and no args are
// checked. Whether the job's queue is worked, and what to report for an
// unknown kind (ArgsProblemUnknownQueue, ArgsProblemUnknownKind), is for
// the caller to say: the queued-args check of package jobs/argcheck
// (argcheck.Check) reports both.
//
// Unlike DecodeArgs, which answers whether a job would run, CheckArgs
// answers what is wrong with it, warnings included: it is what a tool that
// lists the problems of many jobs calls for each.
func (r *Registry) CheckArgs(kind string, raw []byte) ([]ArgsProblem, error) {
	spec, ok := r.argsSpec(kind)
	if !ok {
		return nil, fmt.Errorf("%w: no worker is registered for kind %q", ErrUnknownKind, kind)
	}
	_, issues := spec.decode(raw)
	if len(issues) == 0 {
		return nil, nil
	}
	problems := make([]ArgsProblem, len(issues))
	for i, is := range issues {
		problems[i] = ArgsProblem{Kind: kind, Problem: is.Problem, Severity: is.Severity, Field: is.Field, Message: is.Message}
	}
	return problems, nil
}

// argsIssue is one problem of a job's args, without the job. It is what a
// worker records in the job's metadata (MetadataKeyArgsProblems).
type argsIssue struct {
	Problem  ArgsProblemKind `json:"problem"`
	Severity ArgsSeverity    `json:"severity"`
	Field    string          `json:"field,omitempty"`
	Message  string          `json:"message"`

	err error // the Validate error of an ArgsProblemInvalid
}

func failed(issues []argsIssue) bool {
	return slices.ContainsFunc(issues, func(is argsIssue) bool { return is.Severity == ArgsSeverityFailure })
}

// argsSpec is what the strict decoder knows of one kind's args type.
type argsSpec struct {
	typ reflect.Type
	// object: the args must be a JSON object (a struct, or a pointer to
	// one, that does not decode itself).
	object bool
	// shape is that struct's shape, nil when !object.
	shape *argsShape
	// validate: T or *T implements ArgsValidator.
	validate bool
}

var argsValidatorType = reflect.TypeFor[ArgsValidator]()

// newArgsSpec returns the spec of args type t, or an error describing a
// misuse of the jobs tag in it.
func newArgsSpec(t reflect.Type) (*argsSpec, error) {
	s := &argsSpec{
		typ:      t,
		validate: t.Implements(argsValidatorType) || reflect.PointerTo(t).Implements(argsValidatorType),
	}
	st := t
	if st.Kind() == reflect.Pointer {
		st = st.Elem()
	}
	if st.Kind() == reflect.Struct && !decodesItself(st) && !decodesItself(t) {
		s.object = true
		s.shape = shapeOf(st)
		if err := checkTags(s.shape, "", map[reflect.Type]bool{}); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// checkTags reports the first misuse of the jobs tag in shape and the
// shapes nested in it.
func checkTags(shape *argsShape, path string, seen map[reflect.Type]bool) error {
	if seen[shape.typ] {
		return nil
	}
	seen[shape.typ] = true
	for i := range shape.fields {
		f := &shape.fields[i]
		if f.tagErr != "" {
			return fmt.Errorf("args field %q (%s): %s", joinPath(path, f.name), f.goName, f.tagErr)
		}
		if f.nested != nil {
			if err := checkTags(shapeOf(f.nested), joinPath(path, f.name), seen); err != nil {
				return err
			}
		}
	}
	return nil
}

// decode checks raw and returns the decoded args (nil when they do not
// decode) and every problem found.
func (s *argsSpec) decode(raw []byte) (river.JobArgs, []argsIssue) {
	var issues []argsIssue
	if s.object {
		if what := jsonKind(raw); what != "object" {
			return nil, append(issues, argsIssue{
				Problem: ArgsProblemUndecodable, Severity: ArgsSeverityFailure,
				Message: "must be a JSON object, got " + what,
			})
		}
	}
	v := reflect.New(s.typ)
	decodeErr := json.Unmarshal(raw, v.Interface())

	mismatches := 0
	// A decoded object the walk would find nothing in (the usual job) is
	// told by one scan of its keys; anything else is walked, to name
	// every problem.
	if s.object && (decodeErr != nil || !s.shape.clean(raw)) {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(raw, &obj); err == nil {
			mismatches = walkArgs(&issues, obj, s.shape, "", "", decodeErr != nil, 0)
		}
	}
	if decodeErr != nil {
		if mismatches == 0 {
			field := ""
			var te *json.UnmarshalTypeError
			if errors.As(decodeErr, &te) {
				field = te.Field
			}
			issues = append(issues, argsIssue{
				Problem: ArgsProblemUndecodable, Severity: ArgsSeverityFailure, Field: field,
				Message: fmt.Sprintf("do not decode into %s: %v", s.typ, decodeErr),
			})
		}
		return nil, issues
	}
	args, _ := v.Elem().Interface().(river.JobArgs)
	if s.validate && !failed(issues) {
		if err := callValidate(v); err != nil {
			is := argsIssue{Problem: ArgsProblemInvalid, Severity: ArgsSeverityFailure, Message: err.Error(), err: err}
			var fe *FieldError
			if errors.As(err, &fe) {
				is.Field, is.Message = fe.Field, fe.Reason
			}
			issues = append(issues, is)
		}
	}
	return args, issues
}

// callValidate calls Validate on the decoded args v (a *T).
func callValidate(v reflect.Value) error {
	if val, ok := v.Elem().Interface().(ArgsValidator); ok {
		if e := v.Elem(); e.Kind() == reflect.Pointer && e.IsNil() {
			return nil
		}
		return val.Validate()
	}
	if val, ok := v.Interface().(ArgsValidator); ok {
		return val.Validate()
	}
	return nil
}

// error returns the *ArgsError of issues.
func (s *argsSpec) error(kind string, issues []argsIssue) *ArgsError {
	e := &ArgsError{Kind: kind, Problems: make([]ArgsProblem, len(issues))}
	for i, is := range issues {
		e.Problems[i] = ArgsProblem{Kind: kind, Problem: is.Problem, Severity: is.Severity, Field: is.Field, Message: is.Message}
		if is.err != nil {
			e.cause = is.err
		}
	}
	return e
}

// jsonKind names the kind of the JSON value raw holds, from its first
// byte: "object", "an array", "a string", "a number", "a boolean", "null",
// or "invalid JSON".
func jsonKind(raw []byte) string {
	raw = bytes.TrimLeft(raw, " \t\r\n")
	if len(raw) == 0 {
		return "nothing"
	}
	switch c := raw[0]; {
	case c == '{':
		return "object"
	case c == '[':
		return "an array"
	case c == '"':
		return "a string"
	case c == 't' || c == 'f':
		return "a boolean"
	case c == 'n':
		return "null"
	case c == '-' || c >= '0' && c <= '9':
		return "a number"
	default:
		return "invalid JSON"
	}
}

// maxArgsDepth bounds the walk into nested objects.
const maxArgsDepth = 32

// maxKeyLen is the longest key (unknown field) repeated in a problem; a
// longer one is cut.
const maxKeyLen = 100

// walkArgs checks the fields of obj against shape, appends the problems to
// issues and returns the number of type mismatches found. Values are
// decoded one field at a time when checkTypes (the args as a whole did not
// decode), to name every culprit, and always for ID fields, to check that
// they are above zero.
func walkArgs(issues *[]argsIssue, obj map[string]json.RawMessage, shape *argsShape, path, goPath string, checkTypes bool, depth int) int {
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	slices.Sort(keys)

	// Which keys decode into which field, as encoding/json matches them.
	byField := make([][]string, len(shape.fields))
	var unknown []string
	for _, k := range keys {
		if i := shape.match(k); i >= 0 {
			byField[i] = append(byField[i], k)
		} else {
			unknown = append(unknown, k)
		}
	}

	add := func(problem ArgsProblemKind, sev ArgsSeverity, field, msg string) {
		*issues = append(*issues, argsIssue{Problem: problem, Severity: sev, Field: field, Message: msg})
	}
	mismatches := 0
	for i := range shape.fields {
		f := &shape.fields[i]
		if len(byField[i]) == 0 {
			if f.required {
				add(ArgsProblemMissingField, ArgsSeverityFailure, joinPath(path, f.name), "missing (required)")
			}
			continue
		}
		for _, k := range byField[i] {
			value := obj[k]
			fieldPath := joinPath(path, k)
			if isJSONNull(value) {
				switch {
				case f.required:
					add(ArgsProblemNullField, ArgsSeverityFailure, fieldPath, "null (required)")
				case !f.nilable:
					add(ArgsProblemNullField, ArgsSeverityWarning, fieldPath,
						fmt.Sprintf("null where %s cannot be nil: taken as the zero value", f.typ))
				}
				continue
			}
			if f.nested != nil && depth < maxArgsDepth {
				var child map[string]json.RawMessage
				if json.Unmarshal(value, &child) == nil && child != nil {
					mismatches += walkArgs(issues, child, shapeOf(f.nested), fieldPath, joinPath(goPath, f.goName), checkTypes, depth+1)
					continue
				}
			}
			if !checkTypes && !f.id {
				continue
			}
			decoded, err := f.decodeValue(value)
			if err != nil {
				mismatches++
				add(ArgsProblemTypeMismatch, ArgsSeverityFailure, fieldPath, mismatchMessage(f.typ, err))
				continue
			}
			if f.id {
				if msg := notAnID(decoded); msg != "" {
					add(ArgsProblemInvalidID, ArgsSeverityFailure, fieldPath, msg)
				}
			}
		}
	}
	for _, k := range unknown {
		add(ArgsProblemUnknownField, ArgsSeverityWarning, joinPath(path, cutKey(k)),
			fmt.Sprintf("not a field of %s: its value is dropped when the job is decoded", shape.typ))
	}
	return mismatches
}

// cutKey shortens a key longer than maxKeyLen bytes, on a rune boundary.
func cutKey(k string) string {
	if len(k) <= maxKeyLen {
		return k
	}
	cut := maxKeyLen
	for cut > 0 && !utf8.RuneStart(k[cut]) {
		cut--
	}
	return k[:cut] + "…"
}

// notAnID says what is wrong with v, the decoded value of an ID field, or
// "" when it is a valid ID (above zero; every element above zero for a
// list).
func notAnID(v reflect.Value) string {
	switch v.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if v.Int() <= 0 {
			return fmt.Sprintf("must be an ID above 0, got %d", v.Int())
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		if v.Uint() == 0 {
			return "must be an ID above 0, got 0"
		}
	case reflect.Slice, reflect.Array:
		for i := range v.Len() {
			if msg := notAnID(v.Index(i)); msg != "" {
				return fmt.Sprintf("[%d] %s", i, msg)
			}
		}
	}
	return ""
}

func mismatchMessage(typ reflect.Type, err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Type != nil {
		where := ""
		// The decode went through a one-field wrapper: Field is "v" or
		// "v.<path inside the value>".
		if _, inner, ok := strings.Cut(te.Field, "."); ok {
			where = " at " + inner
		}
		base := typ
		for base.Kind() == reflect.Pointer {
			base = base.Elem()
		}
		if where == "" && te.Type != base {
			where = " in the " + typ.String()
		}
		return fmt.Sprintf("wrong type: a JSON %s%s where %s is expected", te.Value, where, te.Type)
	}
	return fmt.Sprintf("does not decode into %s: %v", typ, err)
}

func joinPath(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

// clean reports whether walkArgs, given raw (a JSON object that decoded
// into the shape's struct), would find no problem in it: every key names a
// field exactly, once, with a value that is not null and not an object
// walked into; every ID field holds an ID; every required field is
// present. It scans the top level of raw once, without allocating. false
// says only that the walk must look: it is what the walk reports.
func (s *argsShape) clean(raw []byte) bool {
	if len(s.fields) > 64 {
		return false
	}
	var seen uint64
	i := skipSpace(raw, 0)
	if i >= len(raw) || raw[i] != '{' {
		return false
	}
	i = skipSpace(raw, i+1)
	if i < len(raw) && raw[i] == '}' {
		i++
	} else {
		for {
			if i >= len(raw) || raw[i] != '"' {
				return false
			}
			end := skipString(raw, i)
			if end < 0 {
				return false
			}
			key := raw[i+1 : end-1]
			if bytes.IndexByte(key, '\\') >= 0 {
				return false // an escaped key: the walk unescapes it
			}
			fi, ok := s.exact[string(key)]
			if !ok || seen&(1<<fi) != 0 {
				return false // unknown, matched ignoring case, or repeated
			}
			seen |= 1 << fi
			i = skipSpace(raw, end)
			if i >= len(raw) || raw[i] != ':' {
				return false
			}
			i = skipSpace(raw, i+1)
			vend := skipValue(raw, i)
			if vend < 0 {
				return false
			}
			value := raw[i:vend]
			f := &s.fields[fi]
			if value[0] == 'n' || f.nested != nil {
				return false // null, or a struct to walk into
			}
			if f.id {
				decoded, err := f.decodeValue(value)
				if err != nil || notAnID(decoded) != "" {
					return false
				}
			}
			i = skipSpace(raw, vend)
			if i < len(raw) && raw[i] == ',' {
				i = skipSpace(raw, i+1)
				continue
			}
			if i >= len(raw) || raw[i] != '}' {
				return false
			}
			i++
			break
		}
	}
	if skipSpace(raw, i) != len(raw) {
		return false
	}
	for fi := range s.fields {
		if s.fields[fi].required && seen&(1<<fi) == 0 {
			return false
		}
	}
	return true
}

// skipSpace returns the index of the first byte of raw at or after i that
// is not JSON white space.
func skipSpace(raw []byte, i int) int {
	for i < len(raw) && (raw[i] == ' ' || raw[i] == '\t' || raw[i] == '\n' || raw[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index just past the JSON string that starts at
// raw[i] (a quote), or -1 when it does not end.
func skipString(raw []byte, i int) int {
	for j := i + 1; j < len(raw); j++ {
		switch raw[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return -1
}

// skipValue returns the index just past the JSON value that starts at
// raw[i], or -1 when there is none. raw is valid JSON (it decoded): a
// literal or number ends at the next delimiter.
func skipValue(raw []byte, i int) int {
	if i >= len(raw) {
		return -1
	}
	switch raw[i] {
	case '"':
		return skipString(raw, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(raw); j++ {
			switch raw[j] {
			case '"':
				if j = skipString(raw, j); j < 0 {
					return -1
				}
				j--
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return j + 1
				}
			}
		}
		return -1
	}
	j := i
	for j < len(raw) && !strings.ContainsRune(",}] \t\r\n", rune(raw[j])) {
		j++
	}
	if j == i {
		return -1
	}
	return j
}

func isJSONNull(raw json.RawMessage) bool {
	return bytes.Equal(bytes.TrimSpace(raw), []byte("null"))
}

// argsShape is what the decoder knows of a struct type: its fields as
// encoding/json sees them. fields is nil for types that are not structs or
// that decode themselves (UnmarshalJSON, UnmarshalText): those are checked
// by decoding only. A shape never changes once built.
type argsShape struct {
	typ    reflect.Type
	fields []argsField
	exact  map[string]int // JSON name → index in fields
}

// argsField is one field of an argsShape.
type argsField struct {
	name     string       // JSON key
	goName   string       // Go field path, e.g. "Base.ID" for a promoted field
	typ      reflect.Type // the field's declared type
	required bool         // tagged required or id
	id       bool         // tagged id
	nilable  bool         // null is a legitimate value
	nested   reflect.Type // struct type to walk into, or nil
	wrapper  reflect.Type // struct{ V T `json:"v,<options>"` } to decode one value
	tagErr   string       // a misuse of the jobs tag, reported at registration

	// For encoding/json's dominance rules.
	index  []int
	tagged bool
}

var (
	jsonUnmarshalerType = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// decodesItself reports whether encoding/json hands values of t to a
// method of t rather than decoding its fields.
func decodesItself(t reflect.Type) bool {
	for _, tt := range []reflect.Type{t, reflect.PointerTo(t)} {
		if tt.Implements(jsonUnmarshalerType) || tt.Implements(textUnmarshalerType) {
			return true
		}
	}
	return false
}

// decodeValue decodes one JSON value into the field's type, with the
// field's json options (",string"), the way the whole decode would, and
// returns it.
func (f *argsField) decodeValue(value json.RawMessage) (reflect.Value, error) {
	if f.id && f.typ.Kind() >= reflect.Int && f.typ.Kind() <= reflect.Int64 && f.wrapper.Field(0).Tag == `json:"v"` {
		// The common case, an int64 ID, without reflection.
		if n, err := strconv.ParseInt(string(bytes.TrimSpace(value)), 10, f.typ.Bits()); err == nil {
			return reflect.ValueOf(n), nil
		}
	}
	doc := make([]byte, 0, len(value)+6)
	doc = append(doc, `{"v":`...)
	doc = append(doc, value...)
	doc = append(doc, '}')
	w := reflect.New(f.wrapper)
	if err := json.Unmarshal(doc, w.Interface()); err != nil {
		return reflect.Value{}, err
	}
	return w.Elem().Field(0), nil
}

// match returns the index of the field key decodes into, or -1: an exact
// match first, else the first field whose name equals key ignoring case,
// as encoding/json does.
func (s *argsShape) match(key string) int {
	if i, ok := s.exact[key]; ok {
		return i
	}
	for i := range s.fields {
		if strings.EqualFold(s.fields[i].name, key) {
			return i
		}
	}
	return -1
}

// shapes caches the shape of every struct type seen: reflect.Type →
// *argsShape.
var shapes sync.Map

// shapeOf returns the shape of t, built once.
func shapeOf(t reflect.Type) *argsShape {
	if s, ok := shapes.Load(t); ok {
		return s.(*argsShape) //nolint:errcheck,forcetypeassert // shapes stores only *argsShape values
	}
	s := &argsShape{typ: t}
	if t.Kind() == reflect.Struct && !decodesItself(t) {
		s.fields = structFields(t)
		s.exact = make(map[string]int, len(s.fields))
		for i, f := range s.fields {
			s.exact[f.name] = i
		}
		if s.fields == nil {
			s.fields = []argsField{} // a struct without fields: every key is unknown
		}
	}
	actual, _ := shapes.LoadOrStore(t, s)
	return actual.(*argsShape) //nolint:errcheck,forcetypeassert // shapes stores only *argsShape values
}

// structFields lists the fields encoding/json decodes into for struct type
// t, in declaration order, following its rules (see typeFields in
// encoding/json): exported fields, json:"-" skipped, fields of embedded
// structs promoted, and of several fields with one name the shallowest, or
// the tagged one, wins — or none when that does not decide.
func structFields(t reflect.Type) []argsField {
	type embedded struct {
		typ    reflect.Type
		index  []int
		goName string
	}
	var current []embedded
	next := []embedded{{typ: t}}
	var count, nextCount map[reflect.Type]int
	visited := map[reflect.Type]bool{}
	var fields []argsField

	for len(next) > 0 {
		current, next = next, current[:0]
		count, nextCount = nextCount, map[reflect.Type]int{}
		for _, e := range current {
			if visited[e.typ] {
				continue
			}
			visited[e.typ] = true
			for i := range e.typ.NumField() {
				sf := e.typ.Field(i)
				if sf.Anonymous {
					t := sf.Type
					if t.Kind() == reflect.Pointer {
						t = t.Elem()
					}
					if !sf.IsExported() && t.Kind() != reflect.Struct {
						continue
					}
				} else if !sf.IsExported() {
					continue
				}
				tag := sf.Tag.Get("json")
				if tag == "-" {
					continue
				}
				name, options, _ := strings.Cut(tag, ",")
				if !validJSONName(name) {
					name = ""
				}
				index := append(slices.Clone(e.index), i)
				goName := joinPath(e.goName, sf.Name)
				ft := sf.Type
				if ft.Name() == "" && ft.Kind() == reflect.Pointer {
					ft = ft.Elem()
				}

				if name != "" || !sf.Anonymous || ft.Kind() != reflect.Struct {
					f := newArgsField(sf, name, options, goName, index)
					fields = append(fields, f)
					if count[e.typ] > 1 {
						// Several embeddings of one type at this depth: a
						// duplicate makes the dominance rule drop them.
						fields = append(fields, f)
					}
					continue
				}
				nextCount[ft]++
				if nextCount[ft] == 1 {
					next = append(next, embedded{typ: ft, index: index, goName: goName})
				}
			}
		}
	}

	slices.SortFunc(fields, func(a, b argsField) int {
		if c := strings.Compare(a.name, b.name); c != 0 {
			return c
		}
		if c := cmp.Compare(len(a.index), len(b.index)); c != 0 {
			return c
		}
		if a.tagged != b.tagged {
			if a.tagged {
				return -1
			}
			return 1
		}
		return slices.Compare(a.index, b.index)
	})
	out := fields[:0]
	for advance, i := 0, 0; i < len(fields); i += advance {
		first := fields[i]
		for advance = 1; i+advance < len(fields); advance++ {
			if fields[i+advance].name != first.name {
				break
			}
		}
		if advance > 1 {
			second := fields[i+1]
			if len(first.index) == len(second.index) && first.tagged == second.tagged {
				continue // ambiguous: encoding/json ignores them all
			}
		}
		out = append(out, first)
	}
	slices.SortFunc(out, func(a, b argsField) int { return slices.Compare(a.index, b.index) })
	return out
}

func newArgsField(sf reflect.StructField, name, options, goName string, index []int) argsField {
	tagged := name != ""
	if !tagged {
		name = sf.Name
	}
	f := argsField{name: name, goName: goName, typ: sf.Type, index: index, tagged: tagged}

	jsonOpts := strings.Split(options, ",")
	omitted := slices.Contains(jsonOpts, "omitempty") || slices.Contains(jsonOpts, "omitzero")
	var optional bool
	for opt := range strings.SplitSeq(sf.Tag.Get("jobs"), ",") {
		switch strings.TrimSpace(opt) {
		case "", queueLockTag:
		case ArgsTagRequired:
			f.required = true
		case ArgsTagID:
			f.required, f.id = true, true
		case ArgsTagOptional:
			optional = true
		default:
			f.tagErr = fmt.Sprintf("unknown jobs tag option %q (want %s, %s, %s or %s)",
				opt, ArgsTagRequired, ArgsTagID, ArgsTagOptional, queueLockTag)
		}
	}
	switch {
	case f.tagErr != "":
	case f.required && optional:
		f.tagErr = `tagged both optional and required`
	case f.required && omitted:
		f.tagErr = "required, yet its json tag leaves it out when zero (omitempty, omitzero): such a job would be cancelled"
	case f.id && !isIDType(sf.Type):
		f.tagErr = fmt.Sprintf("tagged id, but %s is not an integer nor a list of integers", sf.Type)
	}

	switch sf.Type.Kind() {
	case reflect.Pointer, reflect.Interface, reflect.Map, reflect.Slice:
		f.nilable = true
	default:
		// A type that decodes itself decides what null means.
		f.nilable = decodesItself(sf.Type)
	}

	if st := sf.Type; st.Kind() == reflect.Struct || st.Kind() == reflect.Pointer && st.Elem().Kind() == reflect.Struct {
		if st.Kind() == reflect.Pointer {
			st = st.Elem()
		}
		if !decodesItself(st) && !decodesItself(sf.Type) {
			f.nested = st
		}
	}

	wrapperTag := `json:"v`
	if options != "" {
		wrapperTag += "," + options
	}
	wrapperTag += `"`
	f.wrapper = reflect.StructOf([]reflect.StructField{{Name: "V", Type: sf.Type, Tag: reflect.StructTag(wrapperTag)}})
	return f
}

// isIDType reports whether t can hold an ID: an integer, or a slice or
// array of integers, that does not decode itself.
func isIDType(t reflect.Type) bool {
	if decodesItself(t) {
		return false
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return true
	case reflect.Slice, reflect.Array:
		e := t.Elem()
		return e.Kind() != reflect.Slice && e.Kind() != reflect.Array && isIDType(e)
	}
	return false
}

// validJSONName is encoding/json's isValidTag.
func validJSONName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		switch {
		case strings.ContainsRune("!#$%&()*+-./:;<=>?@[]^_{|}~ ", c):
		case !unicode.IsLetter(c) && !unicode.IsDigit(c):
			return false
		}
	}
	return true
}
