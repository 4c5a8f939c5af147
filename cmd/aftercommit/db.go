package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aftercommit/aftercommit/internal/dbconn"
)

// defaultDatabaseURL is used when neither --database-url nor DATABASE_URL is
// given: the local development server.
const defaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// defaultConnectTimeout bounds the first connection when the URL has no
// connect_timeout (nor PGCONNECT_TIMEOUT).
const defaultConnectTimeout = 10 * time.Second

// dbFlags are the connection flags shared by every command that talks to the
// database.
type dbFlags struct {
	url    string
	schema string
}

// register adds --database-url and --schema to fs. Their defaults are
// resolved by resolve (flag, else environment, else default), so that --help
// never prints a URL, and its password, taken from the environment.
func (f *dbFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.url, "database-url", "",
		"Postgres connection URL or keyword/value string\n(default $DATABASE_URL, else "+defaultDatabaseURL+")")
	fs.StringVar(&f.schema, "schema", "",
		"schema that holds River's and aftercommit's tables\n(default $AFTERCOMMIT_SCHEMA, else the connection's search_path)")
}

// resolve applies the environment and the defaults to the flags not given.
func (f *dbFlags) resolve(fs *flag.FlagSet, e *env) {
	given := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
	// An empty URL would mean libpq's defaults (PGHOST, a Unix socket, …);
	// take it as not given.
	if f.url == "" {
		f.url = e.getenv("DATABASE_URL")
	}
	if f.url == "" {
		f.url = defaultDatabaseURL
	}
	// An explicit --schema "" overrides AFTERCOMMIT_SCHEMA: use search_path.
	if !given["schema"] {
		f.schema = e.getenv("AFTERCOMMIT_SCHEMA")
	}
}

// openConns connects to the database with a pool of at most maxConns
// connections (overriding the URL's pool_max_conns) and checks it answers,
// within the connection timeout. On failure it returns an error whose text
// is one line meant for a person, without the password; it wraps
// dbconn.ErrInterrupted when ctx ended first.
func (f *dbFlags) openConns(ctx context.Context, maxConns int32) (*pgxpool.Pool, error) {
	return dbconn.Open(ctx, f.url, &dbconn.Opts{
		Component:      "aftercommit",
		Source:         "--database-url / DATABASE_URL",
		Schema:         f.schema,
		MaxConns:       maxConns,
		ConnectTimeout: defaultConnectTimeout,
	})
}

// connect opens a pool of at most maxConns connections (0: open's 4) and
// checks the schema exists. When it cannot, it has reported why on
// e.stderr and returns ok false with the exit code; otherwise the caller
// closes the pool.
func (f *dbFlags) connect(ctx context.Context, e *env, maxConns int32) (pool *pgxpool.Pool, code int, ok bool) {
	pool, err := f.openConns(ctx, cmp.Or(maxConns, 4))
	if err != nil {
		return nil, reportError(ctx, e, err), false
	}
	if err := checkSchema(ctx, pool, f.schema); err != nil {
		pool.Close()
		return nil, reportError(ctx, e, err), false
	}
	return pool, exitOK, true
}

// errInterrupted is returned when the command's context ended (SIGINT or
// SIGTERM) before the work was done.
var errInterrupted = errors.New("aftercommit: interrupted")
