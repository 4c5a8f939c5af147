package jobs

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/stretchr/testify/require"
)

// clean is the strict decode's shortcut: when it says an object is clean,
// the walk it skips must have found nothing. Which objects it must pass
// (else the shortcut is never taken) and which it must leave to the walk.
func TestShapeClean(t *testing.T) {
	t.Parallel()
	order := shapeOf(reflect.TypeFor[fzOrderArgs]())
	nested := shapeOf(reflect.TypeFor[fzNestedArgs]())

	// A required struct is walked into: fzOrderArgs' customer sends every
	// complete object of it to the walk.
	require.False(t, order.clean([]byte(`{"order_id":1,"tags":[],"count":"3","customer":{"email":"a"}}`)))

	cleanShape := shapeOf(reflect.TypeFor[dcCleanArgs]())
	for _, raw := range []string{
		` {"user_id": 5, "ids": [1, 2], "note": "x\"}]{,", "n": -1.5e3} `,
		`{"user_id":5,"ids":[]}`,
		"{\"ids\":[7],\t\"user_id\":1}\n",
	} {
		require.True(t, cleanShape.clean([]byte(raw)), raw)
	}
	for _, raw := range []string{
		`{"ids":[1]}`,                           // required user_id missing
		`{"user_id":0,"ids":[1]}`,               // not an ID
		`{"user_id":5,"ids":[1,0]}`,             // an element not an ID
		`{"user_id":5,"ids":null}`,              // null
		`{"user_id":5,"ids":[1],"note":null}`,   // null where a string cannot be nil
		`{"user_id":5,"ids":[1],"user_id":6}`,   // repeated
		`{"user_id":5,"IDS":[1]}`,               // matched ignoring case
		`{"user_\u0069d":5,"ids":[1]}`,          // escaped key
		`{"user_id":5,"ids":[1],"extra":true}`,  // unknown
		`{"user_id":5,"ids":[1]} x`,             // trailing bytes
		`{"user_id":5,"ids":[1]`,                // unterminated
		`[1]`, `null`, `"x"`, ``, `{"user_id"}`, // not an object of fields
	} {
		require.False(t, cleanShape.clean([]byte(raw)), raw)
	}
	require.False(t, nested.clean([]byte(`{"tenant_id":1,"items":[],"raw":{},"seen":{},"parent":{"email":"p"}}`)), "parent is walked into")
}

type dcCleanArgs struct {
	UserID int64   `json:"user_id" jobs:"id"`
	IDs    []int64 `json:"ids" jobs:"id"`
	Note   string  `json:"note,omitempty"`
	N      float64 `json:"n,omitempty"`
}

func (dcCleanArgs) Kind() string { return "test.clean" }

// FuzzShapeClean: whatever the bytes, an object clean calls clean decodes
// and the walk finds no problem in it.
func FuzzShapeClean(f *testing.F) {
	f.Add([]byte(`{"user_id":5,"ids":[1,2],"note":"a"}`), uint8(0))
	f.Add([]byte(`{"user_id":5,"ids":[1],"user_id":0}`), uint8(0))
	f.Add([]byte(`{"order_id":1,"tags":[],"count":"3","customer":{"email":"a@b.c"}}`), uint8(1))
	f.Add([]byte(`{"tenant_id":1,"by":"me","items":[{"email":2}],"raw":{"k":[]},"seen":{"a":null}}`), uint8(2))
	types := []reflect.Type{reflect.TypeFor[dcCleanArgs](), reflect.TypeFor[fzOrderArgs](), reflect.TypeFor[fzNestedArgs]()}
	f.Fuzz(func(t *testing.T, raw []byte, sel uint8) {
		typ := types[int(sel)%len(types)]
		shape := shapeOf(typ)
		if json.Unmarshal(raw, reflect.New(typ).Interface()) != nil || !shape.clean(raw) {
			return
		}
		var obj map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(raw, &obj))
		var issues []argsIssue
		require.Zero(t, walkArgs(&issues, obj, shape, "", "", false, 0))
		require.Empty(t, issues, "clean, yet the walk finds problems in %s", raw)
	})
}
