package dbconn

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
)

func TestMain(m *testing.M) { dbtest.WrapTestMain(m) }

func TestParseConfig(t *testing.T) {
	t.Parallel()

	t.Run("Defaults", func(t *testing.T) {
		t.Parallel()
		cfg, err := ParseConfig("postgres://app@db:6543/app?pool_max_conns=7", nil)
		require.NoError(t, err)
		require.Equal(t, DefaultConnectTimeout, cfg.ConnConfig.ConnectTimeout)
		require.Equal(t, int32(7), cfg.MaxConns, "MaxConns 0 keeps pool_max_conns")
		require.NotContains(t, cfg.ConnConfig.RuntimeParams, "search_path")
	})

	t.Run("Opts", func(t *testing.T) {
		t.Parallel()
		cfg, err := ParseConfig("postgres://app@db/app?pool_max_conns=7",
			&Opts{Schema: "Tenant One", MaxConns: 4, ConnectTimeout: 3 * time.Second})
		require.NoError(t, err)
		require.Equal(t, 3*time.Second, cfg.ConnConfig.ConnectTimeout)
		require.Equal(t, int32(4), cfg.MaxConns, "a positive MaxConns overrides pool_max_conns")
		require.Equal(t, `"Tenant One"`, cfg.ConnConfig.RuntimeParams["search_path"])
	})

	t.Run("URLTimeoutWins", func(t *testing.T) {
		t.Parallel()
		cfg, err := ParseConfig("host=db user=app connect_timeout=2", &Opts{ConnectTimeout: time.Minute})
		require.NoError(t, err)
		require.Equal(t, 2*time.Second, cfg.ConnConfig.ConnectTimeout)
	})
}

func TestParseConfigErrors(t *testing.T) {
	t.Parallel()

	for _, tt := range []struct {
		name string
		raw  string
		opts *Opts
		want []string
	}{
		{"BadPort", "postgres://u:s3cret@127.0.0.1:notaport/db", &Opts{Component: "worker", Source: "DATABASE_URL"},
			[]string{"worker: cannot parse the database URL given by DATABASE_URL: ", "invalid port"}},
		{"BadEscape", "postgres://u:s3cret@127.0.0.1/%zz", &Opts{Component: "aftercommit"},
			[]string{"aftercommit: cannot parse the database URL given by --database-url / DATABASE_URL: "}},
		{"KeywordValue", "host=db password=s3cret connect_timeout=soon", nil,
			[]string{"dbconn: cannot parse the database URL given by --database-url / DATABASE_URL: ", "connect_timeout"}},
		{"EscapedPassword", "postgres://u:s3cr%20et@127.0.0.1/db?connect_timeout=soon", nil,
			[]string{"connect_timeout"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := ParseConfig(tt.raw, tt.opts)
			var dbErr *Error
			require.ErrorAs(t, err, &dbErr)
			require.Equal(t, dbErr.Line, err.Error())
			require.NotNil(t, dbErr.Err)
			require.NotContains(t, err.Error(), "\n")
			require.NotContains(t, err.Error(), "s3cr")
			for _, w := range tt.want {
				require.Contains(t, err.Error(), w)
			}
		})
	}
}

func TestDescribeConnectError(t *testing.T) {
	t.Parallel()

	cfg, err := pgx.ParseConfig("postgres://app@db.internal:6543/shop?sslmode=disable")
	require.NoError(t, err)
	pgErr := func(code string) error {
		return fmt.Errorf("failed to connect: %w", &pgconn.PgError{Code: code, Message: "some\nreason"})
	}
	for _, tt := range []struct {
		name string
		err  error
		want string
	}{
		{"BadPassword", pgErr("28P01"),
			`worker: Postgres at db.internal:6543 refused user "app" (some reason): check the user and password, or set DATABASE_URL / --database-url`},
		{"NoSuchRole", pgErr("28000"),
			`worker: Postgres at db.internal:6543 refused user "app" (some reason): check the user and password, or set DATABASE_URL / --database-url`},
		{"NoDatabase", pgErr("3D000"),
			`worker: Postgres at db.internal:6543 has no database "shop": create it (createdb shop) or set DATABASE_URL / --database-url`},
		{"Starting", pgErr("57P03"),
			`worker: Postgres at db.internal:6543 is not accepting connections yet (some reason): wait for it to start`},
		{"Other", pgErr("53300"),
			`worker: Postgres at db.internal:6543 refused the connection (some reason, SQLSTATE 53300)`},
		{"Refused", fmt.Errorf("dial: %w", syscall.ECONNREFUSED),
			`worker: cannot reach Postgres at db.internal:6543 (connection refused): start Postgres or set DATABASE_URL / --database-url`},
		{"Timeout", fmt.Errorf("dial: %w", context.DeadlineExceeded),
			`worker: cannot reach Postgres at db.internal:6543 (no answer within 5s): start Postgres or set DATABASE_URL / --database-url`},
		{"DNS", fmt.Errorf("dial: %w", &net.DNSError{Name: "db.internal", Err: "no such host"}),
			`worker: cannot reach Postgres at db.internal:6543 (cannot resolve host "db.internal"): start Postgres or set DATABASE_URL / --database-url`},
		{"Joined", fmt.Errorf("all failed: %w", errors.Join(fmt.Errorf("first: %w", errors.New("tls:\nbad")), errors.New("second"))),
			`worker: cannot reach Postgres at db.internal:6543 (tls: bad): start Postgres or set DATABASE_URL / --database-url`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, describeConnectError(context.Background(), "worker", cfg, 5*time.Second, tt.err))
		})
	}
}

func TestServerAddress(t *testing.T) {
	t.Parallel()

	for _, tt := range []struct{ raw, want string }{
		{"postgres://u@db:5433/x?sslmode=disable", "db:5433"},
		{"postgres://u@[::1]:5432/x?sslmode=disable", "[::1]:5432"},
		{"host=/var/run/postgresql/ port=5432 user=u", "/var/run/postgresql/.s.PGSQL.5432"},
		{"postgres://u@a:1,b:2/x?sslmode=disable", "a:1 (and 1 other address)"},
		{"postgres://u@a:1/x", "a:1"}, // sslmode=prefer's non-TLS fallback is the same server
		{"postgres://u@a:1,b:2/x", "a:1 (and 1 other address)"},
		{"postgres://u@a:1,b:2,c:3/x?sslmode=disable", "a:1 (and 2 other addresses)"},
	} {
		cfg, err := pgconn.ParseConfig(tt.raw)
		require.NoError(t, err, tt.raw)
		require.Equal(t, tt.want, serverAddress(cfg), tt.raw)
	}
}

func TestConnectUnreachable(t *testing.T) {
	t.Parallel()

	raw := "postgres://postgres:s3cret@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=2"
	_, err := Open(context.Background(), raw, &Opts{Component: "worker"})
	var dbErr *Error
	require.ErrorAs(t, err, &dbErr)
	require.Equal(t, "worker: cannot reach Postgres at 127.0.0.1:1 (connection refused): start Postgres or set DATABASE_URL / --database-url",
		err.Error())
	require.NotErrorIs(t, err, ErrInterrupted)
}

func TestConnectInterrupted(t *testing.T) {
	t.Parallel()

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Open(ctx, dbtest.ServerURL(t), &Opts{Component: "aftercommit"})
	require.ErrorIs(t, err, ErrInterrupted)
	require.Equal(t, "aftercommit: interrupted", err.Error())
}

func TestOpen(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	pool, err := Open(ctx, dbtest.ServerURL(t), &Opts{Schema: "No Such Schema", MaxConns: 2})
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	require.Equal(t, int32(2), pool.Config().MaxConns)
	var searchPath string
	require.NoError(t, pool.QueryRow(ctx, `SHOW search_path`).Scan(&searchPath))
	require.Equal(t, `"No Such Schema"`, searchPath)
}

func TestOpenMissingDatabase(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	cfg, err := pgxpool.ParseConfig(dbtest.ServerURL(t))
	require.NoError(t, err)
	cfg.ConnConfig.Database = "dbconn_no_such_db"
	_, err = Connect(ctx, cfg, "worker")
	require.ErrorContains(t, err, `has no database "dbconn_no_such_db": create it (createdb dbconn_no_such_db) or set DATABASE_URL / --database-url`)
	require.True(t, strings.HasPrefix(err.Error(), "worker: Postgres at "), err.Error())
}
