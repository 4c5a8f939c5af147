package jobs_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/riverqueue/river"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/jobs"
)

// dcGiftArgs exercises every rule: an ID, a list of IDs, a required string
// checked by Validate, optional fields, a nested struct with a required
// field of its own.
type dcGiftArgs struct {
	GiftID   int64        `json:"gift_id" jobs:"id"`
	ItemIDs  []int64      `json:"item_ids" jobs:"id"`
	Currency string       `json:"currency" jobs:"required"`
	Note     string       `json:"note"`
	Count    int          `json:"count,omitempty"`
	Wrap     *dcWrapping  `json:"wrap"`
	Seller   uint32       `json:"seller" jobs:"id,optional_typo_is_refused_elsewhere"`
	Internal string       `json:"-"`
	Shipping dcAddressOpt `json:"shipping"`
}

type dcWrapping struct {
	Paper string `json:"paper" jobs:"required"`
}

type dcAddressOpt struct {
	Zip string `json:"zip"`
}

func (dcGiftArgs) Kind() string { return "test.gift" }

// errBadCurrency is the sentinel Validate wraps.
var errBadCurrency = errors.New("test: bad currency")

func (a dcGiftArgs) Validate() error {
	if len(a.Currency) != 3 || strings.ToUpper(a.Currency) != a.Currency {
		return &jobs.FieldError{Field: "currency", Reason: fmt.Sprintf("must be an ISO 4217 code such as EUR, got %q", a.Currency), Err: errBadCurrency}
	}
	return nil
}

type dcWorker[T river.JobArgs] struct {
	river.WorkerDefaults[T]
}

func (dcWorker[T]) Work(context.Context, *river.Job[T]) error { return nil }

// dcGoodArgs are the gift args without the tag typo, registered below.
type dcGoodArgs struct {
	GiftID   int64       `json:"gift_id" jobs:"id"`
	ItemIDs  []int64     `json:"item_ids" jobs:"id"`
	Currency string      `json:"currency" jobs:"required"`
	Note     string      `json:"note"`
	Count    int         `json:"count,omitempty"`
	Wrap     *dcWrapping `json:"wrap"`
	Seller   uint32      `json:"seller,string" jobs:"optional"`
	Internal string      `json:"-"`
}

func (dcGoodArgs) Kind() string          { return "test.good_gift" }
func (dcGoodArgs) KindAliases() []string { return []string{"test.gift_v0"} }

func (a dcGoodArgs) Validate() error { return dcGiftArgs{Currency: a.Currency}.Validate() }

func dcRegistry(t *testing.T) *jobs.Registry {
	t.Helper()
	reg := jobs.NewRegistry()
	jobs.AddWorker(reg, river.QueueDefault, dcWorker[dcGoodArgs]{})
	jobs.AddWorker(reg, river.QueueDefault, dcWorker[jobs.PingArgs]{})
	jobs.AddWorker(reg, river.QueueDefault, dcWorker[jobs.PruneEventsArgs]{})
	require.NoError(t, reg.Err())
	return reg
}

func TestDecodeArgs(t *testing.T) {
	t.Parallel()
	reg := dcRegistry(t)
	const kind = "test.good_gift"

	t.Run("ValidArgsDecode", func(t *testing.T) {
		t.Parallel()
		args, err := reg.DecodeArgs(kind, []byte(`{"gift_id": 7, "item_ids": [1, 2], "currency": "EUR", "wrap": {"paper": "red"}, "seller": "9"}`))
		require.NoError(t, err)
		require.Equal(t, dcGoodArgs{GiftID: 7, ItemIDs: []int64{1, 2}, Currency: "EUR", Wrap: &dcWrapping{Paper: "red"}, Seller: 9}, args)

		// An empty list of IDs is a list of IDs; optional fields may be
		// absent or null (nilable ones), and keys match ignoring case as
		// encoding/json matches them.
		args, err = reg.DecodeArgs(kind, []byte(`{"GIFT_ID": 7, "item_ids": [], "currency": "USD", "wrap": null}`))
		require.NoError(t, err)
		require.Equal(t, dcGoodArgs{GiftID: 7, ItemIDs: []int64{}, Currency: "USD"}, args)

		// Through an alias.
		args, err = reg.DecodeArgs("test.gift_v0", []byte(`{"gift_id": 1, "item_ids": [3], "currency": "EUR"}`))
		require.NoError(t, err)
		require.Equal(t, dcGoodArgs{GiftID: 1, ItemIDs: []int64{3}, Currency: "EUR"}, args)
	})

	t.Run("UnknownFieldsAloneAreNoError", func(t *testing.T) {
		t.Parallel()
		args, err := reg.DecodeArgs(kind, []byte(`{"gift_id": 7, "item_ids": [1], "currency": "EUR", "ribbon": true, "wrap": {"paper": "red", "glitter": 1}}`))
		require.NoError(t, err)
		require.Equal(t, dcGoodArgs{GiftID: 7, ItemIDs: []int64{1}, Currency: "EUR", Wrap: &dcWrapping{Paper: "red"}}, args)
	})

	// Every way args cannot mean anything, with the error the job is
	// cancelled with.
	for _, tc := range []struct {
		name, args, wantErr string
	}{
		{"Array", `[{"gift_id": 7}]`, "test.good_gift: args: must be a JSON object, got an array"},
		{"String", `"7"`, "test.good_gift: args: must be a JSON object, got a string"},
		{"Number", `7`, "test.good_gift: args: must be a JSON object, got a number"},
		{"Null", `null`, "test.good_gift: args: must be a JSON object, got null"},
		{"EmptyObject", `{}`, "test.good_gift: args: gift_id: missing (required); item_ids: missing (required); currency: missing (required)"},
		{"MissingID", `{"item_ids": [1], "currency": "EUR"}`, "test.good_gift: args: gift_id: missing (required)"},
		{"NullID", `{"gift_id": null, "item_ids": [1], "currency": "EUR"}`, "test.good_gift: args: gift_id: null (required)"},
		{"ZeroID", `{"gift_id": 0, "item_ids": [1], "currency": "EUR"}`, "test.good_gift: args: gift_id: must be an ID above 0, got 0"},
		{"NegativeID", `{"gift_id": -1, "item_ids": [1], "currency": "EUR"}`, "test.good_gift: args: gift_id: must be an ID above 0, got -1"},
		{"ZeroInAList", `{"gift_id": 1, "item_ids": [4, 0], "currency": "EUR"}`, "test.good_gift: args: item_ids: [1] must be an ID above 0, got 0"},
		{"NullList", `{"gift_id": 1, "item_ids": null, "currency": "EUR"}`, "test.good_gift: args: item_ids: null (required)"},
		{"IDAsString", `{"gift_id": "7", "item_ids": [1], "currency": "EUR"}`, "test.good_gift: args: gift_id: wrong type: a JSON string where int64 is expected"},
		{"IDAsFloat", `{"gift_id": 1.5, "item_ids": [1], "currency": "EUR"}`, "test.good_gift: args: gift_id: wrong type: a JSON number 1.5 where int64 is expected"},
		{"IDOverflows", `{"gift_id": 9223372036854775808, "item_ids": [1], "currency": "EUR"}`, "test.good_gift: args: gift_id: wrong type: a JSON number 9223372036854775808 where int64 is expected"},
		{"ListElementOfTheWrongType", `{"gift_id": 1, "item_ids": [1, "2"], "currency": "EUR"}`, "test.good_gift: args: item_ids: wrong type: a JSON string in the []int64 where int64 is expected"},
		{"OptionalOfTheWrongType", `{"gift_id": 1, "item_ids": [1], "currency": "EUR", "count": "3"}`, "test.good_gift: args: count: wrong type: a JSON string where int is expected"},
		{"NestedRequiredMissing", `{"gift_id": 1, "item_ids": [1], "currency": "EUR", "wrap": {}}`, "test.good_gift: args: wrap.paper: missing (required)"},
		{"ValidateFails", `{"gift_id": 1, "item_ids": [1], "currency": "euro"}`, `test.good_gift: args: currency: must be an ISO 4217 code such as EUR, got "euro"`},
		{"RequiredNullString", `{"gift_id": 1, "item_ids": [1], "currency": null}`, "test.good_gift: args: currency: null (required)"},
		// The typo of a producer in another language: the missing field
		// and the key that was meant for it are both named.
		{"Typo", `{"giftId": 7, "item_ids": [1], "currency": "EUR"}`, `test.good_gift: args: gift_id: missing (required); unknown field "giftId" (ignored)`},
		{"SeveralAtOnce", `{"gift_id": -3, "item_ids": "1", "note": 5}`, "test.good_gift: args: gift_id: must be an ID above 0, got -3; item_ids: wrong type: a JSON string where []int64 is expected; currency: missing (required); note: wrong type: a JSON number where string is expected"},
		{"InvalidJSON", `{"gift_id": 1,`, "test.good_gift: args: do not decode into jobs_test.dcGoodArgs: unexpected end of JSON input"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args, err := reg.DecodeArgs(kind, []byte(tc.args))
			require.Nil(t, args)
			require.EqualError(t, err, tc.wantErr)
			require.ErrorIs(t, err, jobs.ErrBadArgs)
			var argsErr *jobs.ArgsError
			require.ErrorAs(t, err, &argsErr)
			require.Equal(t, kind, argsErr.Kind)
			require.NotEmpty(t, argsErr.Failures())
		})
	}

	t.Run("ErrorNamesEachProblem", func(t *testing.T) {
		t.Parallel()
		_, err := reg.DecodeArgs(kind, []byte(`{"giftId": 7, "item_ids": [0], "currency": "EUR"}`))
		var argsErr *jobs.ArgsError
		require.ErrorAs(t, err, &argsErr)
		require.Equal(t, []jobs.ArgsProblem{
			{Kind: kind, Problem: jobs.ArgsProblemMissingField, Severity: jobs.ArgsSeverityFailure, Field: "gift_id", Message: "missing (required)"},
			{Kind: kind, Problem: jobs.ArgsProblemInvalidID, Severity: jobs.ArgsSeverityFailure, Field: "item_ids", Message: "[0] must be an ID above 0, got 0"},
			{Kind: kind, Problem: jobs.ArgsProblemUnknownField, Severity: jobs.ArgsSeverityWarning, Field: "giftId", Message: "not a field of jobs_test.dcGoodArgs: its value is dropped when the job is decoded"},
		}, argsErr.Problems)
		require.Equal(t, []string{"giftId"}, argsErr.UnknownFields())
		require.Len(t, argsErr.Failures(), 2)
	})

	t.Run("ValidateErrorIsWrapped", func(t *testing.T) {
		t.Parallel()
		_, err := reg.DecodeArgs(kind, []byte(`{"gift_id": 1, "item_ids": [1], "currency": "e"}`))
		require.ErrorIs(t, err, jobs.ErrBadArgs)
		require.ErrorIs(t, err, errBadCurrency, "the sentinel of Validate's FieldError")
		var fe *jobs.FieldError
		require.ErrorAs(t, err, &fe)
		require.Equal(t, "currency", fe.Field)
		// Through river.JobCancel, as the worker returns it.
		require.ErrorIs(t, river.JobCancel(err), jobs.ErrBadArgs)
	})

	t.Run("UnknownKind", func(t *testing.T) {
		t.Parallel()
		_, err := reg.DecodeArgs("test.nobody", []byte(`{}`))
		require.ErrorIs(t, err, jobs.ErrUnknownKind)
		require.NotErrorIs(t, err, jobs.ErrBadArgs)
		require.EqualError(t, err, `jobs: unknown kind: no worker is registered for kind "test.nobody"`)
	})

	t.Run("ThePingKind", func(t *testing.T) {
		t.Parallel()
		// ping_id 0 is the documented no-op ping; negative is refused by
		// PingArgs.Validate, a missing one by its required tag.
		args, err := reg.DecodeArgs(jobs.PingKind, []byte(`{"ping_id": 0}`))
		require.NoError(t, err)
		require.Equal(t, jobs.PingArgs{}, args)
		_, err = reg.DecodeArgs(jobs.PingKind, []byte(`{"ping_id": -1}`))
		require.EqualError(t, err, "aftercommit.ping: args: ping_id: must be a row's ID, or 0 for a no-op ping, got -1")
		_, err = reg.DecodeArgs(jobs.PingKind, []byte(`{"sleep_ms": 5}`))
		require.EqualError(t, err, "aftercommit.ping: args: ping_id: missing (required)")
		_, err = reg.DecodeArgs(jobs.PingKind, []byte(`{"ping_id": 1, "sleep_ms": 60001}`))
		require.EqualError(t, err, "aftercommit.ping: args: sleep_ms: must be between 0 and 60000, got 60001")
		require.ErrorIs(t, err, jobs.ErrPingSleepOutOfRange)
	})

	t.Run("ArgsWithoutFields", func(t *testing.T) {
		t.Parallel()
		args, err := reg.DecodeArgs(jobs.PruneEventsKind, []byte(`{}`))
		require.NoError(t, err)
		require.Equal(t, jobs.PruneEventsArgs{}, args)
		_, err = reg.DecodeArgs(jobs.PruneEventsKind, []byte(`{"anything": 1}`))
		require.NoError(t, err)
		_, err = reg.DecodeArgs(jobs.PruneEventsKind, []byte(`[]`))
		require.EqualError(t, err, "aftercommit.prune_events: args: must be a JSON object, got an array")
	})
}

// dcV1Args and dcV2Args are two releases of one kind: v2 added an optional
// field; dcV3Args added a required one.
type dcV1Args struct {
	OrderID int64 `json:"order_id" jobs:"id"`
}

type dcV2Args struct {
	OrderID int64  `json:"order_id" jobs:"id"`
	Channel string `json:"channel"` // new, optional: absent from v1 jobs
}

type dcV3Args struct {
	OrderID int64  `json:"order_id" jobs:"id"`
	Channel string `json:"channel"`
	Tenant  int64  `json:"tenant_id" jobs:"id"` // new, required
}

func (dcV1Args) Kind() string { return "test.order_evolution" }
func (dcV2Args) Kind() string { return "test.order_evolution" }
func (dcV3Args) Kind() string { return "test.order_evolution" }

func TestDecodeArgsEvolution(t *testing.T) {
	t.Parallel()
	regOf := func(add func(reg *jobs.Registry)) *jobs.Registry {
		reg := jobs.NewRegistry()
		add(reg)
		require.NoError(t, reg.Err())
		return reg
	}
	v1 := regOf(func(reg *jobs.Registry) { jobs.AddWorker(reg, river.QueueDefault, dcWorker[dcV1Args]{}) })
	v2 := regOf(func(reg *jobs.Registry) { jobs.AddWorker(reg, river.QueueDefault, dcWorker[dcV2Args]{}) })
	v3 := regOf(func(reg *jobs.Registry) { jobs.AddWorker(reg, river.QueueDefault, dcWorker[dcV3Args]{}) })
	const kind = "test.order_evolution"
	oldJob := []byte(`{"order_id": 5}`)
	newJob := []byte(`{"order_id": 5, "channel": "web"}`)

	// A v1 job runs on v2 workers, with the new field's zero value.
	args, err := v2.DecodeArgs(kind, oldJob)
	require.NoError(t, err)
	require.Equal(t, dcV2Args{OrderID: 5}, args)
	// A v2 job runs on v1 workers still in the rolling deploy: the new
	// field is unknown to them, reported, not fatal.
	args, err = v1.DecodeArgs(kind, newJob)
	require.NoError(t, err)
	require.Equal(t, dcV1Args{OrderID: 5}, args)
	// A new required field cancels the jobs queued before it: what
	// check-args reports before such a deploy.
	_, err = v3.DecodeArgs(kind, oldJob)
	require.EqualError(t, err, "test.order_evolution: args: tenant_id: missing (required)")
}

func TestAddWorkerRefusesMisusedJobsTags(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		add     func(reg *jobs.Registry)
		wantErr string
	}{
		{"UnknownOption", func(reg *jobs.Registry) { jobs.AddWorker(reg, river.QueueDefault, dcWorker[dcGiftArgs]{}) },
			`jobs: registry: kind "test.gift": args field "seller" (Seller): unknown jobs tag option "optional_typo_is_refused_elsewhere" (want required, id, optional or queue_lock)`},
		{"IDOnAString", func(reg *jobs.Registry) { jobs.AddWorker(reg, river.QueueDefault, dcWorker[dcStringIDArgs]{}) },
			`jobs: registry: kind "test.string_id": args field "ref" (Ref): tagged id, but string is not an integer nor a list of integers`},
		{"RequiredAndOmitempty", func(reg *jobs.Registry) { jobs.AddWorker(reg, river.QueueDefault, dcWorker[dcOmitArgs]{}) },
			`jobs: registry: kind "test.omit": args field "user_id" (UserID): required, yet its json tag leaves it out when zero (omitempty, omitzero): such a job would be cancelled`},
		{"RequiredAndOptional", func(reg *jobs.Registry) { jobs.AddWorker(reg, river.QueueDefault, dcWorker[dcBothArgs]{}) },
			`jobs: registry: kind "test.both": args field "user_id" (UserID): tagged both optional and required`},
		{"InANestedStruct", func(reg *jobs.Registry) { jobs.AddWorker(reg, river.QueueDefault, dcWorker[dcNestedTagArgs]{}) },
			`jobs: registry: kind "test.nested_tag": args field "inner.ids" (IDs): tagged id, but []string is not an integer nor a list of integers`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			reg := jobs.NewRegistry()
			tc.add(reg)
			err := reg.Err()
			require.ErrorIs(t, err, jobs.ErrRegistry)
			require.EqualError(t, err, tc.wantErr)
			require.Empty(t, reg.Kinds(), "the kind is not registered")
		})
	}
}

type dcStringIDArgs struct {
	Ref string `json:"ref" jobs:"id"`
}

func (dcStringIDArgs) Kind() string { return "test.string_id" }

type dcOmitArgs struct {
	UserID int64 `json:"user_id,omitempty" jobs:"required"`
}

func (dcOmitArgs) Kind() string { return "test.omit" }

type dcBothArgs struct {
	UserID int64 `json:"user_id" jobs:"required,optional"`
}

func (dcBothArgs) Kind() string { return "test.both" }

type dcNestedTagArgs struct {
	Inner struct {
		IDs []string `json:"ids" jobs:"id"`
	} `json:"inner"`
}

func (dcNestedTagArgs) Kind() string { return "test.nested_tag" }

// The strict decode runs on every job: what it costs on a typical args
// object of one ID, beside River's own json.Unmarshal of it, which still
// follows.
func BenchmarkDecodeArgs(b *testing.B) {
	reg := jobs.NewRegistry()
	jobs.AddWorker(reg, river.QueueDefault, dcWorker[dcV1Args]{})
	raw := []byte(`{"order_id": 123456789}`)
	b.Run("Strict", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := reg.DecodeArgs("test.order_evolution", raw); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("RiverUnmarshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var args dcV1Args
			if err := json.Unmarshal(raw, &args); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestRegistryCheckArgs checks that CheckArgs returns every problem the
// worker finds, warnings included, in the order of ArgsError.Problems, and
// ErrUnknownKind alone for a kind without a worker.
func TestRegistryCheckArgs(t *testing.T) {
	t.Parallel()
	reg := dcRegistry(t)
	const kind = "test.good_gift"

	t.Run("Clean", func(t *testing.T) {
		t.Parallel()
		problems, err := reg.CheckArgs(kind, []byte(`{"gift_id": 7, "item_ids": [1, 2], "currency": "EUR", "wrap": {"paper": "red"}, "seller": "9"}`))
		require.NoError(t, err)
		require.Nil(t, problems)
	})

	t.Run("WarningsOnly", func(t *testing.T) {
		t.Parallel()
		// The job runs (DecodeArgs returns no error), with an unknown key
		// at the top and one nested, and an optional string that is null.
		raw := []byte(`{"gift_id": 7, "item_ids": [1], "currency": "EUR", "note": null, "ribbon": true, "wrap": {"paper": "red", "glitter": 1}}`)
		_, err := reg.DecodeArgs(kind, raw)
		require.NoError(t, err)
		problems, err := reg.CheckArgs(kind, raw)
		require.NoError(t, err)
		require.Equal(t, []jobs.ArgsProblem{
			{Kind: kind, Problem: jobs.ArgsProblemNullField, Severity: jobs.ArgsSeverityWarning, Field: "note", Message: "null where string cannot be nil: taken as the zero value"},
			{Kind: kind, Problem: jobs.ArgsProblemUnknownField, Severity: jobs.ArgsSeverityWarning, Field: "wrap.glitter", Message: "not a field of jobs_test.dcWrapping: its value is dropped when the job is decoded"},
			{Kind: kind, Problem: jobs.ArgsProblemUnknownField, Severity: jobs.ArgsSeverityWarning, Field: "ribbon", Message: "not a field of jobs_test.dcGoodArgs: its value is dropped when the job is decoded"},
		}, problems)
	})

	t.Run("Failing", func(t *testing.T) {
		t.Parallel()
		// The problems of DecodeArgs's ArgsError, through an alias, which
		// names the kind as asked.
		raw := []byte(`{"giftId": 7, "item_ids": [0], "currency": "EUR"}`)
		problems, err := reg.CheckArgs("test.gift_v0", raw)
		require.NoError(t, err)
		want := []jobs.ArgsProblem{
			{Kind: "test.gift_v0", Problem: jobs.ArgsProblemMissingField, Severity: jobs.ArgsSeverityFailure, Field: "gift_id", Message: "missing (required)"},
			{Kind: "test.gift_v0", Problem: jobs.ArgsProblemInvalidID, Severity: jobs.ArgsSeverityFailure, Field: "item_ids", Message: "[0] must be an ID above 0, got 0"},
			{Kind: "test.gift_v0", Problem: jobs.ArgsProblemUnknownField, Severity: jobs.ArgsSeverityWarning, Field: "giftId", Message: "not a field of jobs_test.dcGoodArgs: its value is dropped when the job is decoded"},
		}
		require.Equal(t, want, problems)
		_, err = reg.DecodeArgs("test.gift_v0", raw)
		var argsErr *jobs.ArgsError
		require.ErrorAs(t, err, &argsErr)
		require.Equal(t, want, argsErr.Problems)

		// Validate runs on args that decode, as the worker runs it.
		problems, err = reg.CheckArgs(kind, []byte(`{"gift_id": 1, "item_ids": [1], "currency": "euro"}`))
		require.NoError(t, err)
		require.Equal(t, []jobs.ArgsProblem{
			{Kind: kind, Problem: jobs.ArgsProblemInvalid, Severity: jobs.ArgsSeverityFailure, Field: "currency", Message: `must be an ISO 4217 code such as EUR, got "euro"`},
		}, problems)

		problems, err = reg.CheckArgs(kind, []byte(`[1]`))
		require.NoError(t, err)
		require.Equal(t, []jobs.ArgsProblem{
			{Kind: kind, Problem: jobs.ArgsProblemUndecodable, Severity: jobs.ArgsSeverityFailure, Message: "must be a JSON object, got an array"},
		}, problems)
	})

	t.Run("UnknownKind", func(t *testing.T) {
		t.Parallel()
		problems, err := reg.CheckArgs("test.nobody", []byte(`{}`))
		require.Nil(t, problems)
		require.ErrorIs(t, err, jobs.ErrUnknownKind)
		require.EqualError(t, err, `jobs: unknown kind: no worker is registered for kind "test.nobody"`)
	})
}
