package outbox

import (
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// riverQueueNameRE is River's own rule (client.go, nameRegex); the hand-written
// ValidQueueName must agree with it on every name.
var riverQueueNameRE = regexp.MustCompile(`^(?:[a-z0-9])+(?:[_|\-]?[a-z0-9]+)*$`)

func TestValidQueueNameAgreesWithRiver(t *testing.T) {
	t.Parallel()
	names := []string{
		"", "a", "default", "account_default", "account-refresh", "a|b", "a_b_c", "a1_2b",
		"_a", "a_", "a__b", "a_-b", "A", "a b", "a.b", "é", "-", "|", "0", "a-", strings.Repeat("a", 64), strings.Repeat("a", 65),
	}
	// Every string of up to 3 characters from an alphabet around the rule.
	alphabet := []byte("a0_-|A.")
	var gen func(prefix string, n int)
	gen = func(prefix string, n int) {
		names = append(names, prefix)
		if n == 0 {
			return
		}
		for _, c := range alphabet {
			gen(prefix+string(c), n-1)
		}
	}
	gen("", 4)
	for _, n := range names {
		want := len(n) <= 64 && riverQueueNameRE.MatchString(n)
		require.Equal(t, want, ValidQueueName(n), "queue name %q", n)
	}
}

func FuzzValidQueueName(f *testing.F) {
	for _, s := range []string{"default", "a_b", "a__b", "_", "A"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, n string) {
		want := len(n) <= 64 && riverQueueNameRE.MatchString(n)
		if got := ValidQueueName(n); got != want {
			t.Fatalf("ValidQueueName(%q) = %v, River says %v", n, got, want)
		}
	})
}

func TestHasNUL(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]bool{
		`{"a":"x"}`:          false,
		`{"a":"\u0000"}`:     true,
		`{"a":"b\u0000c"}`:   true,
		`{"a":"\\u0000"}`:    false, // an escaped backslash, then text
		`{"a":"\\\u0000"}`:   true,  // an escaped backslash, then a NUL
		`{"a":"\\\\u0000"}`:  false,
		`{"a":"\u00000"}`:    true,
		`{"a":"\u0001"}`:     false,
		`{"\u0000":1}`:       true,
		`{"a":"x","b":"\\"}`: false,
	} {
		require.Equal(t, want, hasNUL([]byte(in)), in)
	}
}
