package app_test

import (
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/app"
	"github.com/aftercommit/aftercommit/jobs"
)

// stringFields are the plain string fields that job args may carry, each
// reviewed: a plain string can hold an address, a name, a secret.
var stringFields = map[string]string{
	"reporting.rollup_fundraiser_day.day": "a UTC date, YYYY-MM-DD",
	"aftercommit.ping.rate_key":           "an operator's label for a diagnostic rate limit, never user data",
	"aftercommit.ping.seq_key":            "an operator's label for a diagnostic sequence, never user data",
}

// TestArgsCarryIDsOnly walks the args type of every registered kind and
// allows only what carries no secret and no personal data: integers (IDs,
// counts), booleans, lists of integers (ID lists), named string types
// (enums), times, nested structs of the same, and the reviewed plain string
// fields above. Anything else — a plain string, a float, a map, an
// interface — fails until it is moved to a table or reviewed here.
func TestArgsCarryIDsOnly(t *testing.T) {
	t.Parallel()
	reg := app.Registry(nil, nil)
	require.NoError(t, reg.Err())

	var problems []string
	for _, kind := range reg.Kinds() {
		typ, ok := reg.ArgsType(kind)
		require.True(t, ok, kind)
		walkArgs(kind, typ, &problems)
	}
	require.Empty(t, problems)

	// The walk can fail: an args type with an email field is refused.
	type leaky struct {
		UserID int64  `json:"user_id"`
		Email  string `json:"email"`
		Score  float64
		Extra  map[string]any
	}
	var got []string
	walkArgs("test.leaky", reflect.TypeFor[leaky](), &got)
	require.Equal(t, []string{
		"test.leaky.email: plain string (may hold personal data or a secret)",
		"test.leaky.Score: float64 (amounts and measures belong in a table)",
		"test.leaky.Extra: map[string]interface {} (free-form data)",
	}, got)
}

func walkArgs(path string, typ reflect.Type, problems *[]string) {
	for typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	if typ.Kind() != reflect.Struct {
		*problems = append(*problems, path+": args are not a struct")
		return
	}
	for i := range typ.NumField() {
		f := typ.Field(i)
		if !f.IsExported() {
			continue
		}
		name := strings.Split(f.Tag.Get("json"), ",")[0]
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		checkField(path+"."+name, f.Type, problems)
	}
}

func checkField(path string, typ reflect.Type, problems *[]string) {
	for typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	switch {
	case typ == reflect.TypeFor[time.Time]():
	case typ.Kind() == reflect.Bool:
	case typ.Kind() >= reflect.Int && typ.Kind() <= reflect.Uint64:
	case typ.Kind() == reflect.String && typ.PkgPath() != "": // a named type: an enum
	case typ.Kind() == reflect.String:
		if _, ok := stringFields[path]; !ok {
			*problems = append(*problems, path+": plain string (may hold personal data or a secret)")
		}
	case typ.Kind() == reflect.Slice && typ.Elem().Kind() >= reflect.Int && typ.Elem().Kind() <= reflect.Uint64:
	case typ.Kind() == reflect.Struct:
		walkArgs(path, typ, problems)
	case typ.Kind() == reflect.Float32 || typ.Kind() == reflect.Float64:
		*problems = append(*problems, path+": "+typ.String()+" (amounts and measures belong in a table)")
	default:
		*problems = append(*problems, path+": "+typ.String()+" (free-form data)")
	}
}

// idExceptions are the ID-named integer fields that are not tagged
// jobs:"id", each reviewed: why 0 is a legitimate value.
var idExceptions = map[string]string{
	"aftercommit.ping.ping_id": `0 is the documented no-op ping: tagged jobs:"required", and PingArgs.Validate refuses negatives`,
}

// TestArgsDeclareTheirIDs walks the args type of every registered kind and
// requires every integer field (or list of integers) whose JSON name ends
// in _id or _ids to be tagged jobs:"id" — so a job whose ID is missing, 0
// or negative is cancelled at its first attempt rather than run as a no-op
// — unless it is a reviewed exception above. A new kind is covered
// automatically.
func TestArgsDeclareTheirIDs(t *testing.T) {
	t.Parallel()
	reg := app.Registry(nil, nil)
	require.NoError(t, reg.Err())

	var problems, ids []string
	for _, kind := range reg.Kinds() {
		typ, ok := reg.ArgsType(kind)
		require.True(t, ok, kind)
		for typ.Kind() == reflect.Pointer {
			typ = typ.Elem()
		}
		for i := range typ.NumField() {
			f := typ.Field(i)
			name := strings.Split(f.Tag.Get("json"), ",")[0]
			if !f.IsExported() || name == "-" || !strings.HasSuffix(name, "_id") && !strings.HasSuffix(name, "_ids") {
				continue
			}
			path := kind + "." + name
			ft := f.Type
			if ft.Kind() == reflect.Slice {
				ft = ft.Elem()
			}
			tagged := slices.Contains(strings.Split(f.Tag.Get("jobs"), ","), "id")
			_, excepted := idExceptions[path]
			switch {
			case ft.Kind() < reflect.Int || ft.Kind() > reflect.Uint64:
				problems = append(problems, path+": an ID that is not an integer")
			case tagged && excepted:
				problems = append(problems, path+`: tagged jobs:"id", yet listed as an exception`)
			case tagged:
				ids = append(ids, path)
			case !excepted:
				problems = append(problems, path+`: not tagged jobs:"id" (a job with 0, a negative or no ID would run as a no-op)`)
			}
		}
	}
	require.Empty(t, problems)
	require.Equal(t, []string{
		"donations.fold_email_counters.email_id",
		"donations.fold_fundraiser_counters.fundraiser_id",
		"donations.fold_user_counters.user_id",
		"donations.recount_fundraiser.fundraiser_id",
		"donations.recount_user.user_id",
		"donations.update_email_donation.donation_id",
		"inventory.complete_checkout.checkout_id",
		"inventory.expire_checkout.checkout_id",
		"reporting.car_report.car_id",
		"reporting.car_users_imported.car_id",
		"reporting.create_car_users_in_bulk.car_id",
		"reporting.create_car_users_in_bulk.user_ids",
		"reporting.rollup_fundraiser_day.fundraiser_id",
	}, ids)

	// The exceptions are still enforced: a missing or negative ping_id is
	// bad args.
	for path := range idExceptions {
		dot := strings.LastIndex(path, ".")
		kind, field := path[:dot], path[dot+1:]
		_, err := reg.DecodeArgs(kind, []byte(`{}`))
		require.ErrorIs(t, err, jobs.ErrBadArgs, path)
		_, err = reg.DecodeArgs(kind, []byte(`{"`+field+`": -1}`))
		require.ErrorIs(t, err, jobs.ErrBadArgs, path)
	}
}
