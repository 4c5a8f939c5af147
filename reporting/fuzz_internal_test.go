package reporting

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"testing"
)

// fuzzIDs turns fuzz input into a list of user IDs: every two bytes of raw
// are one small signed ID (so duplicates, zero and negatives are common),
// followed by extra consecutive IDs from start (so lists can pass
// MaxBulkUserIDs).
func fuzzIDs(raw []byte, start int64, extra uint16) []int64 {
	ids := make([]int64, 0, len(raw)/2+int(extra))
	for i := 0; i+1 < len(raw); i += 2 {
		ids = append(ids, int64(int16(binary.LittleEndian.Uint16(raw[i:]))))
	}
	for i := range int64(extra) {
		ids = append(ids, start+i)
	}
	return ids
}

// FuzzBulkArgs checks the input check of a bulk creation (bulkArgs, what
// EnqueueCarUsersInBulk and CreateCarUsersInBulk run before any SQL) and the
// args' JSON encoding. bulkArgs never panics and never changes its input; it
// refuses with a *ValidationError matching ErrInvalidInput (and
// ErrTooManyUserIDs for more than MaxBulkUserIDs distinct IDs); what it
// accepts is the input's set of IDs, sorted, distinct and above zero. Args
// of at most MaxBulkUserIDs IDs survive a JSON round trip; longer ones
// refuse to encode with ErrTooManyUserIDs.
func FuzzBulkArgs(f *testing.F) {
	f.Add(int64(1), []byte{1, 0, 2, 0, 1, 0}, int64(100), uint16(0))
	f.Add(int64(1), []byte{}, int64(1), uint16(MaxBulkUserIDs))
	f.Add(int64(1), []byte{}, int64(1), uint16(MaxBulkUserIDs+1))
	f.Add(int64(1), []byte{5, 0}, int64(1), uint16(MaxBulkUserIDs)) // 5 is a duplicate: 10,000 distinct
	f.Add(int64(1), []byte{}, int64(1<<62), uint16(MaxBulkUserIDs))
	f.Add(int64(9), []byte{0, 0, 0xff, 0xff, 3, 0}, int64(1), uint16(0))
	f.Add(int64(0), []byte{1, 0}, int64(1), uint16(0))
	f.Add(int64(-3), []byte{}, int64(-30), uint16(40))
	f.Add(int64(1), []byte{}, int64(0), uint16(0))
	f.Fuzz(func(t *testing.T, carID int64, raw []byte, start int64, extra uint16) {
		ids := fuzzIDs(raw, start, extra)
		given := slices.Clone(ids)

		args, err := bulkArgs(carID, ids)
		if !slices.Equal(ids, given) {
			t.Fatal("bulkArgs changed its input")
		}
		distinct := slices.Compact(slices.Sorted(slices.Values(ids)))
		var notAbove []int64
		for _, id := range distinct {
			if id <= 0 {
				notAbove = append(notAbove, id)
			}
		}

		if err != nil {
			var ve *ValidationError
			if !errors.As(err, &ve) || error(ve) != err || !errors.Is(err, ErrInvalidInput) { //nolint:errorlint // identity: the error itself must be the *ValidationError, not wrap one
				t.Fatalf("bulkArgs error is not a *ValidationError: %#v", err)
			}
			if len(ve.IDs) > MaxListedIDs || !slices.IsSorted(ve.IDs) || len(slices.Compact(slices.Clone(ve.IDs))) != len(ve.IDs) {
				t.Fatalf("ValidationError.IDs %v: want at most %d, sorted, distinct", ve.IDs, MaxListedIDs)
			}
			switch {
			case carID <= 0:
				if ve.Field != "car_id" {
					t.Fatalf("car %d: error blames %q", carID, ve.Field)
				}
			case len(ids) == 0:
				if ve.Field != "user_ids" || ve.IDs != nil {
					t.Fatalf("empty list: error %#v", ve)
				}
			case len(notAbove) > 0:
				if ve.Field != "user_ids" || !slices.Equal(ve.IDs, notAbove[:min(len(notAbove), MaxListedIDs)]) {
					t.Fatalf("IDs not above zero %v: error lists %v", notAbove, ve.IDs)
				}
			case len(distinct) > MaxBulkUserIDs:
				if !errors.Is(err, ErrTooManyUserIDs) {
					t.Fatalf("%d distinct IDs: want ErrTooManyUserIDs, got %v", len(distinct), err)
				}
			default:
				t.Fatalf("bulkArgs(%d, %d IDs) refused valid input: %v", carID, len(ids), err)
			}
		} else {
			switch {
			case carID <= 0 || len(ids) == 0 || len(notAbove) > 0 || len(distinct) > MaxBulkUserIDs:
				t.Fatalf("bulkArgs(%d, %d IDs, %d distinct, %d not above zero) accepted invalid input", carID, len(ids), len(distinct), len(notAbove))
			case args.CarID != carID || !slices.Equal(args.UserIDs, distinct):
				t.Fatalf("bulkArgs = car %d with %d IDs, want car %d with the %d distinct IDs sorted", args.CarID, len(args.UserIDs), carID, len(distinct))
			}
			for i, id := range args.UserIDs {
				if id <= 0 || i > 0 && id <= args.UserIDs[i-1] {
					t.Fatalf("accepted IDs are not sorted, distinct and above zero at %d: %d", i, id)
				}
			}
		}

		// Args as any caller might build them, unchecked.
		raw2 := CreateCarUsersInBulkArgs{CarID: carID, UserIDs: ids}
		encoded, err := json.Marshal(raw2)
		if len(ids) > MaxBulkUserIDs {
			if !errors.Is(err, ErrTooManyUserIDs) || !errors.Is(err, ErrInvalidInput) {
				t.Fatalf("encoding %d IDs: want ErrTooManyUserIDs, got %v", len(ids), err)
			}
			return
		}
		if err != nil {
			t.Fatalf("encoding %d IDs: %v", len(ids), err)
		}
		var decoded CreateCarUsersInBulkArgs
		if err := json.Unmarshal(encoded, &decoded); err != nil {
			t.Fatalf("decoding %s: %v", encoded, err)
		}
		if !reflect.DeepEqual(decoded, raw2) {
			t.Fatalf("round trip changed the args: %d IDs → %d IDs", len(raw2.UserIDs), len(decoded.UserIDs))
		}
	})
}

// FuzzBulkArgsDecode decodes arbitrary JSON as CreateCarUsersInBulkArgs,
// as River does for a queued job. It never panics; args that decode and
// hold at most MaxBulkUserIDs IDs encode again, and that encoding decodes
// to the same args.
func FuzzBulkArgsDecode(f *testing.F) {
	f.Add([]byte(`{"car_id":1,"user_ids":[3,1,2,3]}`))
	f.Add([]byte(`{"car_id":1,"user_ids":null}`))
	f.Add([]byte(`{"car_id":"1","user_ids":[1]}`))
	f.Add([]byte(`{"car_id":1,"user_ids":[1.5]}`))
	f.Add([]byte(`{"CAR_ID":1,"User_Ids":[]}`))
	f.Add([]byte(`{"car_id":9223372036854775808}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		var args CreateCarUsersInBulkArgs
		if err := json.Unmarshal(raw, &args); err != nil {
			return
		}
		encoded, err := json.Marshal(args)
		if len(args.UserIDs) > MaxBulkUserIDs {
			if !errors.Is(err, ErrTooManyUserIDs) {
				t.Fatalf("encoding %d IDs: want ErrTooManyUserIDs, got %v", len(args.UserIDs), err)
			}
			return
		}
		if err != nil {
			t.Fatalf("encoding decoded args %#v: %v", args, err)
		}
		var again CreateCarUsersInBulkArgs
		if err := json.Unmarshal(encoded, &again); err != nil {
			t.Fatalf("decoding %s: %v", encoded, err)
		}
		if !reflect.DeepEqual(again, args) {
			t.Fatalf("round trip changed the args: %#v → %#v", args, again)
		}
	})
}
