//go:build long

package faults_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/app"
	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/testlog"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/jobs/argcheck"
	"github.com/aftercommit/aftercommit/reporting"
)

// badRowsNewField is the key a newer producer adds to a kind's args that
// this release does not know.
const badRowsNewField = "added_by_v2"

// badRowsID is the first ID the valid args use: no row has it, so each
// kind's worker finds nothing to do (not found, not needed) and completes.
const badRowsID = 900_000_000

// badRow is one job row inserted by SQL.
type badRow struct {
	kind, name, args string
	// want is what the recorded error must contain for a bad row; "" for
	// a row that must run.
	want string
	// field is the field at fault of a bad row ("" for the whole args).
	field string
}

// TestBadJobRows inserts job rows by SQL, as any producer may, for every
// kind the registry holds (a new kind is covered automatically): args that
// cannot mean anything — an array, a string, each field of the wrong type,
// each required field missing, each ID 0 and −1, a producer's typo — and
// args that must run: valid args beside an unknown field from a newer
// producer, and the old shape without the optional fields. The fields and
// their rules are read from the args types' own tags. Every bad row is
// cancelled at its first attempt with an error naming its kind and field
// (never retried, never completed as "not needed"), listed by failing_jobs
// and by check-args; every good row runs, its unknown field counted in the
// metrics, logged once per kind and field, and listed by check-args. A row
// of an unknown kind is retried and discarded (River's verdict), and a
// megabyte of unknown args does not stop its job.
func TestBadJobRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 8})
	reg := app.Registry(s.Pool, nil)
	metrics := jobs.NewMetrics(nil)
	promReg := prometheus.NewRegistry()
	promReg.MustRegister(metrics)
	logs := &testlog.Buffer{}

	client, err := jobs.NewClient(s.Pool, reg, &jobs.ClientConfig{
		Queues:  []string{jobs.AllQueues},
		Schema:  s.Name,
		Logger:  slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Metrics: metrics,
		River: &river.Config{
			// Retry a failure at once: a bad row that is retried shows its
			// attempts in seconds instead of hours.
			RetryPolicy: immediateRetry{},
		},
	})
	require.NoError(t, err)
	require.NoError(t, client.Start(ctx))
	defer func() {
		stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		require.NoError(t, client.Stop(stopCtx))
	}()

	fixtures := badRowsFixtures(ctx, t, s)
	var rows []badRow
	for i, kind := range reg.Kinds() {
		typ, ok := reg.ArgsType(kind)
		require.True(t, ok, kind)
		rows = append(rows, badRowsOf(t, kind, typ, badRowsID+int64(i)*10, fixtures[kind])...)
	}
	require.GreaterOrEqual(t, len(rows), 5*len(reg.Kinds()), "cases for every kind")

	insert := func(kind, args string, maxAttempts int) int64 {
		queue, priority, ok := reg.KindDefaults(kind)
		if !ok {
			queue, priority = river.QueueDefault, 1
		}
		var id int64
		require.NoError(t, s.Pool.QueryRow(ctx, `
			INSERT INTO river_job (args, kind, max_attempts, priority, queue, state, scheduled_at)
			VALUES ($1::jsonb, $2, $3, $4, $5, 'available', now()) RETURNING id`,
			args, kind, maxAttempts, max(priority, 1), queue).Scan(&id), "%s %s", kind, args)
		return id
	}
	ids := make([]int64, len(rows))
	for i, r := range rows {
		ids[i] = insert(r.kind, r.args, 25)
	}
	unknownKind := insert("nobody.knows_this_kind", `{"id": 1}`, 2)
	huge := insert(jobs.PingKind, fmt.Sprintf(`{"ping_id": %d, "pad": "%s"}`, badRowsID, strings.Repeat("x", 1<<20)), 25)
	all := append(slices.Clone(ids), unknownKind, huge)

	require.Eventually(t, func() bool {
		var left int
		err := s.Pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE id = ANY($1) AND state NOT IN ('completed', 'discarded', 'cancelled')`,
			all).Scan(&left)
		return err == nil && left == 0
	}, 60*time.Second, 50*time.Millisecond, "every job reached a final state")

	type jobRow struct {
		State   string
		Attempt int
		Errors  []string
		Output  *string
	}
	jobOf := func(id int64) jobRow {
		var j jobRow
		require.NoError(t, s.Pool.QueryRow(ctx, `
			SELECT state::text, attempt, array(SELECT e->>'error' FROM unnest(errors) e), metadata->>'output'
			  FROM river_job WHERE id = $1`, id).Scan(&j.State, &j.Attempt, &j.Errors, &j.Output))
		return j
	}
	var bad, good int
	wantUnknown := map[string]float64{} // "kind field" → jobs
	for i, r := range rows {
		j := jobOf(ids[i])
		what := fmt.Sprintf("%s %s %s", r.kind, r.name, r.args)
		if r.want == "" {
			good++
			require.Equal(t, "completed", j.State, "%s must run (if its worker refuses IDs that name no row, give the kind a fixture in badRowsFixtures): %v", what, j.Errors)
			require.Equal(t, 1, j.Attempt, what)
			if strings.Contains(r.args, badRowsNewField) {
				wantUnknown[r.kind+" "+badRowsNewField]++
			}
			continue
		}
		bad++
		require.Equal(t, "cancelled", j.State, what)
		require.Equal(t, 1, j.Attempt, "%s: cancelled at its first attempt", what)
		require.Len(t, j.Errors, 1, what)
		require.True(t, strings.HasPrefix(j.Errors[0], "JobCancelError: "+r.kind+": args: "), "%s: %s", what, j.Errors[0])
		require.Contains(t, j.Errors[0], r.want, what)
		require.Nil(t, j.Output, "%s: never completed as not needed", what)
		if strings.HasPrefix(r.name, "typo_") {
			typo := strings.TrimPrefix(r.name, "typo_")
			require.Contains(t, j.Errors[0], fmt.Sprintf("unknown field %q (ignored)", typo), what)
			wantUnknown[r.kind+" "+typo]++
		}
	}
	t.Logf("%d kinds: %d bad rows cancelled at their first attempt, %d good rows run", len(reg.Kinds()), bad, good)

	// The unknown kind is River's: retried, then discarded.
	j := jobOf(unknownKind)
	require.Equal(t, "discarded", j.State)
	require.Equal(t, 2, j.Attempt)
	require.Equal(t, []string{
		(&rivertype.UnknownJobKindError{Kind: "nobody.knows_this_kind"}).Error(),
		(&rivertype.UnknownJobKindError{Kind: "nobody.knows_this_kind"}).Error(),
	}, j.Errors)
	// A megabyte in an unknown field: the job runs.
	j = jobOf(huge)
	require.Equal(t, "completed", j.State)
	wantUnknown[jobs.PingKind+" pad"]++

	// Unknown fields: counted per job, logged once per kind and field.
	require.Equal(t, wantUnknown, unknownFieldCounts(t, promReg))
	logged := map[string]float64{}
	for _, rec := range logs.Records(t, "hold a field its kind does not know") {
		logged[fmt.Sprint(rec["kind"], " ", rec["field"])]++
	}
	require.Equal(t, slices.Sorted(maps.Keys(wantUnknown)), slices.Sorted(maps.Keys(logged)))
	for k, n := range logged {
		require.Equal(t, float64(1), n, "%s logged once", k)
	}
	require.Len(t, logs.Records(t, "cancelling a job whose args cannot mean anything"), bad, "each cancel is logged")

	// failing_jobs: one row per kind, its latest error a bad-args cancel;
	// and the unknown kind, discarded.
	dbRows, err := s.Pool.Query(ctx, `SELECT kind, state::text, attempt, error FROM failing_jobs ORDER BY kind`)
	require.NoError(t, err)
	type failing struct {
		Kind, State string
		Attempt     int
		Error       string
	}
	failingJobs, err := pgx.CollectRows(dbRows, pgx.RowToStructByPos[failing])
	require.NoError(t, err)
	var failingKinds []string
	for _, f := range failingJobs {
		failingKinds = append(failingKinds, f.Kind)
		if f.Kind == "nobody.knows_this_kind" {
			require.Equal(t, "discarded", f.State)
			continue
		}
		require.Equal(t, "cancelled", f.State, f.Kind)
		require.Equal(t, 1, f.Attempt, f.Kind)
		require.True(t, strings.HasPrefix(f.Error, "JobCancelError: "+f.Kind+": args: "), f.Error)
	}
	slices.Sort(failingKinds)
	require.Equal(t, slices.Sorted(slices.Values(append(reg.Kinds(), "nobody.knows_this_kind"))), failingKinds)

	// check-args lists every cancelled row with its field, and every row
	// that ran with an unknown field.
	report, err := argcheck.Check(ctx, s.Pool, reg, &argcheck.Opts{MaxProblems: 10_000})
	require.NoError(t, err)
	require.True(t, report.Failed())
	require.Equal(t, bad, report.Cancelled)
	problems := map[int64][]jobs.ArgsProblem{}
	for _, p := range report.Problems {
		problems[p.JobID] = append(problems[p.JobID], p)
	}
	for i, r := range rows {
		listed := problems[ids[i]]
		what := fmt.Sprintf("%s %s %s", r.kind, r.name, r.args)
		switch {
		case r.want != "":
			require.NotEmpty(t, listed, what)
			require.Equal(t, rivertype.JobStateCancelled, listed[0].State, what)
			require.True(t, slices.ContainsFunc(listed, func(p jobs.ArgsProblem) bool {
				return p.Severity == jobs.ArgsSeverityFailure && p.Field == r.field
			}), "%s: a failure of field %q in %+v", what, r.field, listed)
		case strings.Contains(r.args, badRowsNewField):
			require.Equal(t, []jobs.ArgsProblem{{
				JobID: ids[i], Kind: r.kind, State: rivertype.JobStateCompleted, Queue: listed[0].Queue,
				Problem: jobs.ArgsProblemUnknownField, Severity: jobs.ArgsSeverityWarning, Field: badRowsNewField,
				Message: listed[0].Message,
			}}, listed, what)
		default:
			require.Empty(t, listed, what)
		}
	}
	require.Equal(t, bad+int(wantUnknown[jobs.PingKind+" pad"])+countRuns(rows, badRowsNewField), report.Finished)
}

func countRuns(rows []badRow, field string) int {
	n := 0
	for _, r := range rows {
		if r.want == "" && strings.Contains(r.args, field) {
			n++
		}
	}
	return n
}

// badRowsFixtures returns the valid args of the kinds whose worker refuses
// IDs that name no row: the rows they need are created here.
func badRowsFixtures(ctx context.Context, t *testing.T, s *dbtest.Schema) map[string]map[string]any {
	t.Helper()
	var userID, carID int64
	require.NoError(t, s.Pool.QueryRow(ctx, `INSERT INTO users (name, email) VALUES ('bad rows', 'bad-rows@example.com') RETURNING id`).Scan(&userID))
	require.NoError(t, s.Pool.QueryRow(ctx, `INSERT INTO cars (name) VALUES ('bad rows') RETURNING id`).Scan(&carID))
	return map[string]map[string]any{
		reporting.CreateCarUsersInBulkKind: {"car_id": carID, "user_ids": []int64{userID}},
		reporting.RollupFundraiserDayKind:  {"day": "2026-06-01"},
	}
}

// badRowsField is one field of a kind's args, read from its tags.
type badRowsField struct {
	name     string
	typ      reflect.Type
	required bool // tagged required or id
	id       bool // tagged id, or an integer named …_id
	zeroOK   bool // an ID-named field that is not tagged id: 0 is legitimate
}

// badRowsFields reads the fields of a flat args struct from its tags.
func badRowsFields(t *testing.T, kind string, typ reflect.Type) []badRowsField {
	t.Helper()
	for typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	require.Equal(t, reflect.Struct, typ.Kind(), "%s: args are not a struct", kind)
	var out []badRowsField
	for i := range typ.NumField() {
		f := typ.Field(i)
		if !f.IsExported() {
			continue
		}
		require.False(t, f.Anonymous, "%s: embedded args fields: teach TestBadJobRows to read them", kind)
		name := strings.Split(f.Tag.Get("json"), ",")[0]
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		opts := strings.Split(f.Tag.Get("jobs"), ",")
		bf := badRowsField{name: name, typ: f.Type, required: slices.Contains(opts, "required") || slices.Contains(opts, "id")}
		elem := f.Type
		if elem.Kind() == reflect.Slice {
			elem = elem.Elem()
		}
		integer := elem.Kind() >= reflect.Int && elem.Kind() <= reflect.Uint64
		bf.id = slices.Contains(opts, "id") || integer && (strings.HasSuffix(name, "_id") || strings.HasSuffix(name, "_ids"))
		bf.zeroOK = bf.id && !slices.Contains(opts, "id")
		require.False(t, f.Type.Kind() == reflect.Struct || f.Type.Kind() == reflect.Map, "%s.%s: nested args: teach TestBadJobRows to read them", kind, name)
		out = append(out, bf)
	}
	return out
}

// badRowsOf returns the rows of one kind: its bad args, each with what its
// error must say, and its good args.
func badRowsOf(t *testing.T, kind string, typ reflect.Type, firstID int64, fixture map[string]any) []badRow {
	t.Helper()
	fields := badRowsFields(t, kind, typ)
	valid := map[string]any{}
	for i, f := range fields {
		switch {
		case f.id && f.typ.Kind() == reflect.Slice:
			valid[f.name] = []int64{firstID + int64(i)}
		case f.id:
			valid[f.name] = firstID + int64(i)
		default:
			valid[f.name] = reflect.Zero(f.typ).Interface()
		}
	}
	maps.Copy(valid, fixture)
	with := func(name string, value any) string {
		m := maps.Clone(valid)
		m[name] = value
		return encode(t, m)
	}
	without := func(name string) string {
		m := maps.Clone(valid)
		delete(m, name)
		return encode(t, m)
	}

	rows := []badRow{
		{kind, "array", "[" + encode(t, valid) + "]", "args: must be a JSON object, got an array", ""},
		{kind, "string", `"` + kind + `"`, "args: must be a JSON object, got a string", ""},
	}
	for _, f := range fields {
		var wrong any = "seven"
		if f.typ.Kind() == reflect.String {
			wrong = 7
		}
		rows = append(rows, badRow{kind, "wrong_type_" + f.name, with(f.name, wrong), f.name + ": wrong type", f.name})
		if f.required {
			rows = append(rows, badRow{kind, "missing_" + f.name, without(f.name), f.name + ": missing (required)", f.name})
		}
		if !f.id {
			continue
		}
		zero, negative := any(0), any(-1)
		if f.typ.Kind() == reflect.Slice {
			zero, negative = []int{0}, []int{-1}
		}
		if !f.zeroOK {
			rows = append(rows, badRow{kind, "zero_" + f.name, with(f.name, zero), f.name + ": ", f.name})
		}
		rows = append(rows, badRow{kind, "negative_" + f.name, with(f.name, negative), f.name + ": ", f.name})
	}
	// A producer's typo of the first required field: both named.
	for _, f := range fields {
		if f.required {
			typo := camel(f.name)
			m := maps.Clone(valid)
			m[typo] = m[f.name]
			delete(m, f.name)
			rows = append(rows, badRow{kind, "typo_" + typo, encode(t, m), f.name + ": missing (required)", f.name})
			break
		}
	}

	// Good rows: twice a newer producer's field; the old shape, without
	// the optional fields.
	withNew := maps.Clone(valid)
	withNew[badRowsNewField] = "x"
	oldShape := map[string]any{}
	for _, f := range fields {
		if f.required {
			oldShape[f.name] = valid[f.name]
		}
	}
	return append(rows,
		badRow{kind, "new_field", encode(t, withNew), "", ""},
		badRow{kind, "new_field_again", encode(t, withNew), "", ""},
		badRow{kind, "old_shape", encode(t, oldShape), "", ""},
	)
}

func encode(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return string(b)
}

// camel turns donation_id into donationId.
func camel(s string) string {
	var b strings.Builder
	upper := false
	for _, r := range s {
		if r == '_' {
			upper = true
			continue
		}
		if upper {
			r = unicode.ToUpper(r)
			upper = false
		}
		b.WriteRune(r)
	}
	return b.String()
}

// unknownFieldCounts returns aftercommit_job_args_unknown_fields_total by
// "kind field".
func unknownFieldCounts(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	families, err := reg.Gather()
	require.NoError(t, err)
	out := map[string]float64{}
	for _, f := range families {
		if f.GetName() != "aftercommit_job_args_unknown_fields_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			out[labels["kind"]+" "+labels["field"]] = m.GetCounter().GetValue()
		}
	}
	return out
}

// immediateRetry retries a failed job at once.
type immediateRetry struct{}

func (immediateRetry) NextRetry(*rivertype.JobRow) time.Time { return time.Now() }
