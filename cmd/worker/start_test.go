package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/internal/testlog"
	"github.com/aftercommit/aftercommit/jobs"
)

// TestStartClientRetriesWhileTheDatabaseIsAway starts a River client whose
// connections go through a proxy that is down: Start fails, is retried
// with backoff, and succeeds once the proxy is up again. A failure no retry
// can cure (River's tables missing) is returned at once.
func TestStartClientRetriesWhileTheDatabaseIsAway(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})

	newClient := func(t *testing.T, url, schema string) (*pgxpool.Pool, *testlog.Buffer, func() error) {
		t.Helper()
		cfg, err := pgxpool.ParseConfig(url)
		require.NoError(t, err)
		cfg.MaxConns = 4
		cfg.ConnConfig.ConnectTimeout = 2 * time.Second
		pool, err := pgxpool.NewWithConfig(ctx, cfg)
		require.NoError(t, err)
		t.Cleanup(pool.Close)
		reg := jobs.NewRegistry()
		jobs.RegisterPing(reg, pool)
		logs := &testlog.Buffer{}
		logger := slog.New(slog.NewTextHandler(logs, nil))
		client, err := jobs.NewClient(pool, reg, &jobs.ClientConfig{Schema: schema, Logger: logger, Queues: []string{"default"}})
		require.NoError(t, err)
		return pool, logs, func() error {
			err := startClient(ctx, client, logger, 30*time.Second)
			if err == nil {
				t.Cleanup(func() { require.NoError(t, client.Stop(context.WithoutCancel(ctx))) })
			}
			return err
		}
	}

	t.Run("retried_until_the_database_is_back", func(t *testing.T) {
		t.Parallel()
		cc, err := pgconn.ParseConfig(s.URL)
		require.NoError(t, err)
		if strings.HasPrefix(cc.Host, "/") {
			t.Skip("the test server is on a Unix socket; this test proxies TCP")
		}
		proxy := startProxy(t, net.JoinHostPort(cc.Host, strconv.Itoa(int(cc.Port))))
		proxy.setDown(true)
		_, logs, start := newClient(t, viaProxy(t, s.URL, proxy.ln.Addr().String()), s.Name)
		time.AfterFunc(700*time.Millisecond, func() { proxy.setDown(false) })
		begun := time.Now()
		require.NoError(t, start())
		took := time.Since(begun)
		retries := strings.Count(logs.String(), "worker: the database went away while the River client started; retrying")
		t.Logf("started after %s and %d retries", took.Round(10*time.Millisecond), retries)
		require.GreaterOrEqual(t, retries, 2, "log:\n%s", logs)
		require.GreaterOrEqual(t, took, 700*time.Millisecond)
	})

	t.Run("not_retried_when_no_retry_can_help", func(t *testing.T) {
		t.Parallel()
		_, logs, start := newClient(t, s.URL, "no_such_schema")
		begun := time.Now()
		err := start()
		require.Error(t, err)
		require.False(t, transient(err), "%v", err)
		require.NotContains(t, logs.String(), "retrying")
		require.Less(t, time.Since(begun), 5*time.Second)
	})
}

func TestTransient(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{&pgconn.PgError{Code: "57P01"}, true},
		{&pgconn.PgError{Code: "57P03"}, true},
		{&pgconn.PgError{Code: "08006"}, true},
		{fmt.Errorf("wrapped: %w", &pgconn.PgError{Code: "08001"}), true},
		{&pgconn.PgError{Code: "28P01"}, false}, // wrong password
		{&pgconn.PgError{Code: "42P01"}, false}, // missing table
		{&net.OpError{Op: "dial", Err: errors.New("connection refused")}, true},
		{io.ErrUnexpectedEOF, true},
		{errors.New("client Queues and Workers must be configured"), false},
	} {
		require.Equal(t, tc.want, transient(tc.err), "%v", tc.err)
	}
}
