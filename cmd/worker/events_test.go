package main

import (
	"context"
	"encoding/json"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/natstest"
	"github.com/aftercommit/aftercommit/outbox/natsrelay"
)

// TestRunRelaysEventsToNATS: two workers with --nats-url: one relays (its
// /readyz says active, the other's standby), the stream gets every event
// once, the lag gauges read 0 once it caught up; when the active worker
// stops, the other takes over and relays what follows, nothing twice.
func TestRunRelaysEventsToNATS(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(ctx, t)
	nc := natstest.Connect(t, natstest.URL())
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	stream, prefix := natstest.Names(ctx, t, nc)
	insert := func(from, to int) {
		t.Helper()
		_, err := b.schema.Pool.Exec(ctx, `INSERT INTO outbox_events (topic, key, payload)
			SELECT 'worker.test', (g % 3)::text, jsonb_build_object('n', g) FROM generate_series($1::int, $2::int) AS g`, from, to)
		require.NoError(t, err)
	}
	insert(1, 100)

	natsArgs := []string{"--nats-url", natstest.URL(), "--nats-stream", stream, "--nats-subject-prefix", prefix}
	w1 := startRun(ctx, t, b.args(t, natsArgs...)...)
	c1 := newHTTPClient(t, w1.httpAddr(t))
	waitStream(t, js, stream, 100)
	w2 := startRun(ctx, t, b.args(t, natsArgs...)...)
	c2 := newHTTPClient(t, w2.httpAddr(t))

	readyLine := func(c *httpClient) string {
		code, body := c.status(ctx, t, "/readyz")
		if code != http.StatusOK {
			return ""
		}
		for l := range strings.SplitSeq(body, "\n") {
			if strings.HasPrefix(l, "events relay: ") {
				return l
			}
		}
		return ""
	}
	w2.waitFor(t, 15*time.Second, "both workers ready, the first active and the second standing by", func() bool {
		return strings.HasPrefix(readyLine(c1), "events relay: active, stream "+stream) &&
			strings.HasPrefix(readyLine(c2), "events relay: standby, stream "+stream)
	})
	require.Contains(t, readyLine(c1), "last event 100 (stream sequence 100), 100 published by this process")

	metric := func(c *httpClient, name string) string {
		code, body := c.status(ctx, t, "/metrics")
		require.Equal(t, http.StatusOK, code)
		m := regexp.MustCompile(`(?m)^` + name + `\{stream="` + stream + `"\} (\S+)$`).FindStringSubmatch(body)
		if m == nil {
			return ""
		}
		return m[1]
	}
	w1.waitFor(t, 10*time.Second, "the active relay's lag gauges at 0", func() bool {
		return metric(c1, "aftercommit_events_relay_pending") == "0" && metric(c1, "aftercommit_events_relay_oldest_pending_seconds") == "0"
	})
	require.Equal(t, "1", metric(c1, "aftercommit_events_relay_active"))
	require.Equal(t, "100", metric(c1, "aftercommit_events_relay_published_total"))
	require.Equal(t, "0", metric(c2, "aftercommit_events_relay_active"))
	require.Empty(t, metric(c2, "aftercommit_events_relay_pending"), "only the active relay reads the lag")

	require.Equal(t, 0, w1.stop(t, 30*time.Second))
	took := time.Now()
	insert(101, 150)
	waitStream(t, js, stream, 150)
	t.Logf("the standby relayed the next events %s after the active worker stopped", time.Since(took).Round(time.Millisecond))
	w2.waitFor(t, 10*time.Second, "the second worker active", func() bool {
		return strings.HasPrefix(readyLine(c2), "events relay: active")
	})

	s, err := js.Stream(ctx, stream)
	require.NoError(t, err)
	for seq := uint64(1); seq <= 150; seq++ {
		m, err := s.GetMsg(ctx, seq)
		require.NoError(t, err)
		var ev natsrelay.CloudEvent
		require.NoError(t, json.Unmarshal(m.Data, &ev))
		var p struct{ N uint64 }
		require.NoError(t, json.Unmarshal(ev.Data, &p))
		require.Equal(t, seq, p.N, "message %d", seq)
	}
}

// waitStream waits up to 30 s for the stream to hold n messages, and fails
// if it holds more.
func waitStream(t *testing.T, js jetstream.JetStream, stream string, n uint64) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var last uint64
		if s, err := js.Stream(ctx, stream); err == nil {
			info, err := s.Info(ctx)
			require.NoError(t, err)
			last = info.State.LastSeq
		}
		require.LessOrEqual(t, last, n, "the stream holds more messages than events")
		if last == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stream holds %d messages after 30s, want %d", last, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
