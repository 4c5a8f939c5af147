package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/natstest"
)

// TestNATSSetup: `aftercommit nats setup` creates the stream, updates it
// on a second run, and the server reports exactly the settings asked for;
// bad usage and an unreachable server are one line each.
func TestNATSSetup(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	nc := natstest.Connect(t, natstest.URL())
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	stream, prefix := natstest.Names(ctx, t, nc)
	env := map[string]string{"AFTERCOMMIT_NATS_URL": natstest.URL()}

	res := runCLI(ctx, t, env, "nats", "setup", "--stream", stream, "--subject-prefix", prefix, "--max-age", "48h", "--duplicates", "5m")
	require.Equal(t, exitOK, res.code, res.stderr)
	require.Empty(t, res.stderr)
	require.Equal(t, fmt.Sprintf("stream %s: subjects %s.>, limits retention, max age 48h0m0s, max bytes none, duplicates window 5m0s, file storage, 1 replica(s); 0 messages\n", stream, prefix), res.stdout)
	s, err := js.Stream(ctx, stream)
	require.NoError(t, err)
	c := s.CachedInfo().Config
	require.Equal(t, []string{prefix + ".>"}, c.Subjects)
	require.Equal(t, 48*time.Hour, c.MaxAge)
	require.Equal(t, 5*time.Minute, c.Duplicates)
	require.Equal(t, jetstream.FileStorage, c.Storage)
	require.Equal(t, jetstream.LimitsPolicy, c.Retention)

	res = runCLI(ctx, t, env, "nats", "setup", "--stream", stream, "--subject-prefix", prefix, "--max-bytes", "1048576", "--nats-url", natstest.URL())
	require.Equal(t, exitOK, res.code, res.stderr)
	require.Contains(t, res.stdout, "max age 168h0m0s, max bytes 1048576 bytes, duplicates window 2m0s")
	s, err = js.Stream(ctx, stream)
	require.NoError(t, err)
	require.Equal(t, int64(1048576), s.CachedInfo().Config.MaxBytes)

	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"nats"}, "aftercommit nats: missing action: setup\n"},
		{[]string{"nats", "teardown"}, "aftercommit nats: unknown action \"teardown\": want setup\n"},
		{[]string{"nats", "setup", "--replicas", "2"}, "aftercommit nats: replicas must be 1, 3 or 5, got 2\n"},
		{[]string{"nats", "setup", "--stream", "a.b"}, "aftercommit nats: stream name \"a.b\": use 1 to 255 letters, digits, '-' or '_'\n"},
		{[]string{"nats", "setup", "--duplicates", "0s"}, "aftercommit nats: --max-age and --duplicates must be positive\n"},
	} {
		res := runCLI(ctx, t, env, c.args...)
		require.Equal(t, exitUsage, res.code, "%v", c.args)
		require.Equal(t, c.msg+"Run 'aftercommit nats --help' for usage.\n", res.stderr, "%v", c.args)
	}

	res = runCLI(ctx, t, map[string]string{"AFTERCOMMIT_NATS_URL": "nats://127.0.0.1:1"}, "nats", "setup", "--stream", stream)
	require.Equal(t, exitFailure, res.code)
	require.Contains(t, res.stderr, "aftercommit nats setup: connecting to NATS: ")
}
