package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"

	"github.com/aftercommit/aftercommit/internal/dbmigrate"
)

// migrateHint tells how to fix a database that is not migrated.
const migrateHint = "run `go run ./cmd/aftercommit migrate up` first, with the same database URL and schema"

// SQL of the start-up checks. Names are unqualified: the pool's search_path
// is the configured schema, the same one River and the migrations use.
const (
	riverJobExistsSQL = `SELECT coalesce(current_schema(), ''), to_regclass('river_job') IS NOT NULL`
	appVersionSQL     = `SELECT version, dirty FROM schema_migrations LIMIT 1`
)

// checkMigrated makes sure River's and aftercommit's tables exist and are at
// least at the versions this binary knows. It only reads: a worker never
// creates or changes tables.
func checkMigrated(ctx context.Context, pool *pgxpool.Pool, schema string) error {
	var (
		current  string
		hasTable bool
	)
	if err := pool.QueryRow(ctx, riverJobExistsSQL).Scan(&current, &hasTable); err != nil {
		return fmt.Errorf("worker: checking the schema: %w", err)
	}
	where := fmt.Sprintf("schema '%s'", schema)
	if schema == "" {
		where = fmt.Sprintf("the search_path schema '%s'", current)
		if current == "" {
			where = "the search_path (no schema of it exists)"
		}
	}
	if !hasTable {
		return fmt.Errorf("worker: %s has no River tables (river_job is missing): %s", where, migrateHint)
	}

	migrator, err := rivermigrate.New(riverpgxv5.New(pool), &rivermigrate.Config{
		Schema: schema,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return fmt.Errorf("worker: building River's migrator: %w", err)
	}
	existing, err := migrator.ExistingVersions(ctx)
	if err != nil {
		return fmt.Errorf("worker: reading River's migration versions: %w", err)
	}
	all := migrator.AllVersions()
	riverHave, riverWant := 0, all[len(all)-1].Version
	if len(existing) > 0 {
		riverHave = existing[len(existing)-1].Version
	}
	if riverHave < riverWant {
		return fmt.Errorf("worker: River's tables in %s are at migration %d, this worker needs %d: %s",
			where, riverHave, riverWant, migrateHint)
	}

	appWant, err := dbmigrate.LatestAppVersion()
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	var (
		appHave int64
		dirty   bool
	)
	err = pool.QueryRow(ctx, appVersionSQL).Scan(&appHave, &dirty)
	var pgErr *pgconn.PgError
	switch {
	case errors.Is(err, pgx.ErrNoRows), errors.As(err, &pgErr) && pgErr.Code == "42P01": // undefined_table
		appHave = 0
	case err != nil:
		return fmt.Errorf("worker: reading aftercommit's migration version: %w", err)
	case dirty:
		return fmt.Errorf("worker: aftercommit's migration %d in %s failed half way (dirty): repair it by hand, then force the version",
			appHave, where)
	}
	if appHave < int64(appWant) {
		return fmt.Errorf("worker: aftercommit's tables in %s are at migration %d, this worker needs %d: %s",
			where, appHave, appWant, migrateHint)
	}
	return nil
}

// describeConnectError turns a failed first connection into one line that
// says where, why and what to do, without the password.
func describeConnectError(cfg *pgxpool.Config, err error) string {
	cc := cfg.ConnConfig
	where := serverAddress(&cc.Config)
	const fix = "set DATABASE_URL/--database-url"

	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "28P01", "28000": // invalid_password, invalid_authorization_specification
			return fmt.Sprintf("worker: Postgres at %s refused user '%s' (%s): check the user and password, or %s",
				where, cc.User, oneLine(pgErr.Message), fix)
		case "3D000": // invalid_catalog_name
			return fmt.Sprintf("worker: Postgres at %s has no database '%s': create it or %s", where, cc.Database, fix)
		case "57P03": // cannot_connect_now
			return fmt.Sprintf("worker: Postgres at %s is not accepting connections yet (%s): wait for it to start",
				where, oneLine(pgErr.Message))
		default:
			return fmt.Sprintf("worker: Postgres at %s refused the connection (%s, SQLSTATE %s)",
				where, oneLine(pgErr.Message), pgErr.Code)
		}
	}
	return fmt.Sprintf("worker: cannot reach Postgres at %s (%s): start Postgres or %s",
		where, networkReason(cc.ConnectTimeout, err), fix)
}

// networkReason names a connection failure below the protocol in a few words.
func networkReason(timeout time.Duration, err error) string {
	var (
		dnsErr *net.DNSError
		netErr net.Error
	)
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case pgconn.Timeout(err), errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return "no answer within " + timeout.String()
	case errors.As(err, &dnsErr):
		return fmt.Sprintf("cannot resolve host '%s'", dnsErr.Name)
	case errors.Is(err, syscall.EHOSTUNREACH):
		return "host unreachable"
	case errors.Is(err, syscall.ENETUNREACH):
		return "network unreachable"
	case errors.Is(err, syscall.ENOENT):
		return "no such socket"
	case errors.Is(err, syscall.EACCES):
		return "permission denied"
	}
	// The innermost error is the most specific; the outer ones repeat the
	// address and, in some pgx versions, parts of the connection string.
	for {
		inner := errors.Unwrap(err)
		if inner == nil {
			break
		}
		err = inner
	}
	return oneLine(err.Error())
}

// serverAddress names the first server of cfg: host:port or a socket path.
func serverAddress(cfg *pgconn.Config) string {
	host := cfg.Host
	if host == "" {
		host = "localhost"
	}
	var addr string
	if strings.HasPrefix(host, "/") {
		addr = fmt.Sprintf("%s/.s.PGSQL.%d", strings.TrimSuffix(host, "/"), cfg.Port)
	} else {
		addr = net.JoinHostPort(host, strconv.Itoa(int(cfg.Port)))
	}
	if n := len(cfg.Fallbacks); n > 0 {
		addr += fmt.Sprintf(" (and %d more)", n)
	}
	return addr
}

// oneLine folds s onto one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
