// Package devdb finds the Postgres server of a command run on a developer's
// machine (`aftercommit demo`, `worker --dev`): the URL the user gave, else
// the local default server, else a throw-away postgres:16 container started
// with testcontainers — the very container the test harness (internal/dbtest)
// starts — removed when the command ends.
//
// testcontainers and the Docker client add about 6 MB to a binary and, at
// start, list the host's processes (testcontainers' bootstrap). A build with
// -tags nodevdb (a production image, which has no Docker engine anyway)
// leaves them out: StartContainer then fails with ErrNoContainers.
package devdb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Image is the Postgres image StartContainer runs.
const Image = "postgres:16"

// DefaultURL is the local development server every command defaults to.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// ErrNoContainers is StartContainer's error in a binary built with -tags
// nodevdb.
var ErrNoContainers = errors.New("devdb: built with -tags nodevdb, without testcontainers")

// ProbeTimeoutDefault bounds the check that a server answers at the default
// URL.
const ProbeTimeoutDefault = 3 * time.Second

// Config says where Find looks. A nil *Config takes every default.
type Config struct {
	// URL is the connection string the user gave (a flag, DATABASE_URL).
	// When set, Find returns it as is: it never probes it and never starts
	// a container, so a mistyped URL fails where the command connects.
	//
	// Defaults to empty: none was given.
	URL string

	// DefaultURL is where Find looks for a server when URL is empty.
	//
	// Defaults to DefaultURL.
	DefaultURL string

	// Start starts a throw-away server when nothing answers at DefaultURL
	// and returns its URL and a function that removes it.
	//
	// Defaults to StartContainer.
	Start func(ctx context.Context, logger *slog.Logger) (url string, stop func(), err error)

	// Logger receives testcontainers' log lines at debug level.
	//
	// Defaults to nil: they are dropped.
	Logger *slog.Logger

	// ProbeTimeout bounds the connection attempt to DefaultURL.
	//
	// Defaults to ProbeTimeoutDefault.
	ProbeTimeout time.Duration
}

// Database is the server Find chose.
type Database struct {
	// URL is the connection string to use.
	URL string
	// Started is true when Find started a container; Close removes it.
	Started bool

	addr string // host:port of the default URL, where nothing answered
	stop func()
	once sync.Once
}

// Note is the line a command prints when Find started a container, saying
// where the database is and that it goes away; "" when none was started.
func (d *Database) Note() string {
	if !d.Started {
		return ""
	}
	return fmt.Sprintf("no Postgres answers at %s: started %s with testcontainers at %s; it is removed on exit", d.addr, Image, d.URL)
}

// Close removes the container Find started, if any. It may be called more
// than once.
func (d *Database) Close() {
	if d.stop != nil {
		d.once.Do(d.stop)
	}
}

// NoServerError is Find's error when nothing answers at the default URL and
// no container could be started: its text is one line telling how to
// provide a database.
type NoServerError struct {
	// Addr is the host:port of the default URL.
	Addr string
	// Err is why the container could not start (no Docker engine, …).
	Err error
}

// Error returns the line for a person.
func (e *NoServerError) Error() string {
	return fmt.Sprintf("no Postgres answers at %s and Docker could not start %s (%s): start Postgres there, or set DATABASE_URL (or --database-url) to your server",
		e.Addr, Image, oneLine(e.Err))
}

// Unwrap returns Err.
func (e *NoServerError) Unwrap() error { return e.Err }

// Find returns the database a command should use: cfg.URL when the user
// gave one; else the default URL when a server answers there (even with an
// error, such as a wrong password, which the command then reports); else a
// container started with cfg.Start, which the caller removes with Close.
// When nothing answers and no container starts, the error is a
// *NoServerError. When ctx ends first, the error wraps ctx's.
func Find(ctx context.Context, cfg *Config) (*Database, error) {
	c := Config{}
	if cfg != nil {
		c = *cfg
	}
	if c.URL != "" {
		return &Database{URL: c.URL}, nil
	}
	if c.DefaultURL == "" {
		c.DefaultURL = DefaultURL
	}
	if c.Start == nil {
		c.Start = StartContainer
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.ProbeTimeout == 0 {
		c.ProbeTimeout = ProbeTimeoutDefault
	}

	probe, err := pgconn.ParseConfig(c.DefaultURL)
	if err != nil {
		return nil, fmt.Errorf("devdb: parsing the default URL: %w", err)
	}
	if answers(ctx, probe, c.ProbeTimeout) {
		return &Database{URL: c.DefaultURL}, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("devdb: looking for a server: %w", err)
	}
	addr := net.JoinHostPort(probe.Host, strconv.Itoa(int(probe.Port)))
	url, stop, err := c.Start(ctx, c.Logger)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, fmt.Errorf("devdb: starting %s: %w", Image, ctxErr)
		}
		return nil, &NoServerError{Addr: addr, Err: err}
	}
	return &Database{URL: url, Started: true, addr: addr, stop: stop}, nil
}

// answers reports whether a Postgres server answers at cfg: a connection,
// or an error the server sent (a wrong password, a missing database).
func answers(ctx context.Context, cfg *pgconn.Config, timeout time.Duration) bool {
	cfg.ConnectTimeout = timeout
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err == nil {
		_ = conn.Close(ctx)
		return true
	}
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr)
}

// oneLine is err's text with every run of white space, line breaks
// included, folded into one space.
func oneLine(err error) string {
	if err == nil {
		return "no reason given"
	}
	return strings.Join(strings.Fields(err.Error()), " ")
}
