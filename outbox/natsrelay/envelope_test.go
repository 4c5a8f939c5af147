package natsrelay_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/outbox/natsrelay"
)

// TestAppendJSONIsJSONMarshal: the relay's encoder writes what
// encoding/json writes, escapes included (for compact data: it copies data
// as it is, where encoding/json compacts it).
func TestAppendJSONIsJSONMarshal(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 12, 7, 15, 4, 5, 123456000, time.UTC)
	for _, ev := range []natsrelay.CloudEvent{
		{SpecVersion: "1.0", ID: "1", Source: "/aftercommit/db", Type: "donation.created", Subject: "42", Time: at,
			DataContentType: "application/json", Data: json.RawMessage(`{"donation_id":1}`)},
		{SpecVersion: "1.0", ID: "2", Source: "/a\"b\\c", Type: "x.y", Time: at.Truncate(time.Second),
			DataContentType: "application/json", Data: json.RawMessage(`[1,2]`)},
		{SpecVersion: "1.0", ID: "3", Source: "/s", Type: "t", Subject: "é <a&b> \n\t\u2028 ☃", Time: at,
			DataContentType: "application/json", Data: json.RawMessage(`"x"`)},
	} {
		want, err := json.Marshal(&ev)
		require.NoError(t, err)
		require.Equal(t, string(want), string(ev.AppendJSON(nil)))
	}
}

// TestSubject: topics' words and keys become tokens, the others are
// encoded, and no two (topic, key) pairs share a subject.
func TestSubject(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		topic, key string
		hasKey     bool
		want       string
	}{
		{"donation.created", "42", true, "p.donation.created.42"},
		{"donation.created", "", false, "p.donation.created._"},
		{"donation.created", "_", true, "p.donation.created._Xw"},
		{"email_opened", "user-7", true, "p.email_opened.user-7"},
		{"a..b", "k", true, "p.a.~.b.k"},
		{"a b.*", "a.b", true, "p.~YSBi.~Kg._YS5i"},
		{"x", "k_1", true, "p.x._a18x"},
	} {
		require.Equal(t, c.want, natsrelay.Subject("p", c.topic, c.key, c.hasKey), "%+v", c)
	}
}
