// Package dbtest gives every test its own Postgres schema with every migration
// applied (River's tables and the project's), so tests run in parallel against
// a real server and never see each other's rows.
//
// The server comes from TEST_DATABASE_URL, else DATABASE_URL, else
// DefaultURL. When nothing answers there and a Docker engine is reachable, a
// postgres:16 container is started with testcontainers; otherwise the run
// stops with one line that says how to provide a database. Nothing is ever
// skipped for want of a database.
//
// A schema costs one CREATE SCHEMA plus the migrations the first time (tens of
// milliseconds); when its test ends the tables it wrote are emptied with one
// TRUNCATE and it is handed to the next test of the same binary (a few
// milliseconds), with a pool of the size that test asks for. Schemas of a run
// that passed are dropped when the binary exits; a failed run leaves them for
// inspection and a later run drops them once they are an hour old.
package dbtest

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/aftercommit/aftercommit/internal/dbmigrate"
	"github.com/aftercommit/aftercommit/internal/testexit"
)

// DefaultURL is used when neither TEST_DATABASE_URL nor DATABASE_URL is set.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// schemaPrefix starts the name of every schema the harness creates.
const schemaPrefix = "act_"

// gcAge is how old a leftover schema of an earlier run must be before it is
// dropped. Younger ones may belong to a run still going in another process.
const gcAge = time.Hour

// Schema is one isolated, fully migrated schema.
type Schema struct {
	// Name is the schema's name; pass it to river.Config{Schema: …}.
	Name string
	// Pool's connections have search_path set to Name, so the project's
	// unqualified table names resolve to it.
	Pool *pgxpool.Pool
	// URL is a connection string for the same schema (search_path in the
	// URL), for code under test that opens its own pool or for subprocesses.
	URL string

	fingerprint string // tables and migration versions right after creation
}

// Opts tune one schema. A nil *Opts takes the defaults.
type Opts struct {
	// MaxConns caps Pool. Defaults to 10.
	MaxConns int32
}

type harness struct {
	once    sync.Once
	err     error
	baseURL string
	admin   *pgxpool.Pool
	stop    func() // terminates a container, when one was started
	base    string // per-binary name base: act_<pkg>_<time>_<pid>_
	counter atomic.Int64

	mu      sync.Mutex
	idle    []*Schema
	created []*Schema
}

var h harness

// WrapTestMain runs a package's tests: it makes sure a server answers before
// any test starts (or exits 1 with one line saying how to provide one), runs
// them, drops the schemas of a passing run, and fails the run when goroutines
// leak. A passing run exits without the race detector's idle second (see
// package testexit).
func WrapTestMain(m *testing.M) {
	defaultParallel()
	if err := h.init(); err != nil {
		fmt.Fprintln(os.Stderr, err.Error())
		os.Exit(1)
	}
	code := m.Run()
	h.shutdown(code == 0)
	if code == 0 {
		if err := goleak.Find(goleak.IgnoreCurrent()); err != nil {
			fmt.Fprintln(os.Stderr, "dbtest: goroutines leaked:", err)
			code = 1
		}
	}
	testexit.Exit(code)
}

// minParallel is how many parallel tests a binary runs at once unless
// -parallel says otherwise. Go's default is GOMAXPROCS, 2 on the project's
// machines, but these tests spend most of their time waiting for Postgres
// and for River's fetch and poll timers (a -race test binary of this
// project uses a fifth of a core), so two at a time leaves the machine
// idle. More than 3 would crowd the server's connections: go test runs two
// binaries at once, each test's schema pool holds up to 10 connections,
// and max_connections is 100 by default.
const minParallel = 3

// defaultParallel raises -test.parallel to minParallel when it was not set
// on the command line, in the quick suite only: the full suite's load runs
// (a bench scenario's 32 clients, a fault test's worker processes) would
// crowd the server's connections three at a time.
func defaultParallel() {
	if !flag.Parsed() {
		flag.Parse()
	}
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "test.parallel" })
	if f := flag.Lookup("test.parallel"); f != nil && !set && !longBuild && runtime.GOMAXPROCS(0) < minParallel {
		_ = f.Value.Set(strconv.Itoa(minParallel))
	}
}

// ServerURL returns the URL of the server tests run against (after starting
// it if need be); its database is shared, so use it only to open pools whose
// search_path you set yourself.
func ServerURL(t testing.TB) string {
	t.Helper()
	if err := h.init(); err != nil {
		t.Fatal(err.Error())
	}
	return h.baseURL
}

// TestSchema returns a fresh, fully migrated schema of its own for t. It is
// emptied and reused by a later test once t ends.
func TestSchema(ctx context.Context, t testing.TB, opts *Opts) *Schema {
	t.Helper()
	s, release, err := NewSchema(ctx, opts)
	if err != nil {
		t.Fatal(err.Error())
	}
	t.Cleanup(release)
	return s
}

// NewSchema is TestSchema for code without a testing.TB, such as Example
// functions: call release when done with the schema.
func NewSchema(ctx context.Context, opts *Opts) (s *Schema, release func(), err error) {
	if err := h.init(); err != nil { //nolint:contextcheck // the one connect per process (sync.Once) must not end with the first caller's ctx
		return nil, nil, err
	}
	if opts == nil {
		opts = &Opts{}
	}
	s, err = h.checkout(ctx, opts)
	if err != nil {
		return nil, nil, fmt.Errorf("dbtest: opening a pool on a test schema: %w", err)
	}
	if s == nil {
		s, err = h.create(ctx, opts)
		if err != nil {
			return nil, nil, fmt.Errorf("dbtest: creating a test schema: %w", err)
		}
	}
	// release runs when the test is over, maybe after ctx has ended.
	return s, func() { h.checkin(context.WithoutCancel(ctx), s) }, nil
}

func (h *harness) init() error {
	h.once.Do(func() { h.err = h.connect() })
	return h.err
}

func resolveURL() string {
	for _, k := range []string{"TEST_DATABASE_URL", "DATABASE_URL"} {
		if v := os.Getenv(k); v != "" {
			return v
		}
	}
	return DefaultURL
}

func (h *harness) connect() error {
	ctx := context.Background()
	rawURL := resolveURL()
	admin, pingErr := openAndPing(ctx, rawURL)
	if pingErr != nil {
		containerURL, stop, dockerErr := startContainer(ctx)
		if dockerErr != nil {
			return fmt.Errorf("dbtest: no Postgres answers at %s (%v) and no Docker engine for testcontainers (%v): start Postgres there or set TEST_DATABASE_URL=postgres://user@host:port/db",
				describeURL(rawURL), oneLine(pingErr), oneLine(dockerErr))
		}
		h.stop = stop
		rawURL = containerURL
		admin, pingErr = openAndPing(ctx, rawURL)
		if pingErr != nil {
			stop()
			return fmt.Errorf("dbtest: the postgres:16 container does not answer: %v", oneLine(pingErr))
		}
	}
	h.admin = admin
	h.baseURL = rawURL
	h.base = fmt.Sprintf("%s%s_%s_%d_", schemaPrefix, callerPackage(), time.Now().UTC().Format("20060102t150405"), os.Getpid())
	h.gc(ctx)
	return nil
}

func openAndPing(ctx context.Context, rawURL string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(rawURL)
	if err != nil {
		return nil, fmt.Errorf("parsing database URL: %w", err)
	}
	cfg.MaxConns = 4
	cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}

// gc drops schemas that earlier runs of this package left behind.
func (h *harness) gc(ctx context.Context) {
	pkgPrefix := schemaPrefix + callerPackage() + "_"
	cutoff := pkgPrefix + time.Now().UTC().Add(-gcAge).Format("20060102t150405")
	rows, err := h.admin.Query(ctx,
		`SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1) AND nspname < $2`, pkgPrefix, cutoff)
	if err != nil {
		return
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return
	}
	for _, n := range names {
		_, _ = h.admin.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{n}.Sanitize()+" CASCADE")
	}
}

// checkout takes an idle schema, preferably one whose pool has the size
// opts asks for; an idle schema of another size gets a new pool of that
// size (an idle pool holds no connection, so a new one costs nothing until
// used), which is far cheaper than creating and migrating a schema.
func (h *harness) checkout(ctx context.Context, opts *Opts) (*Schema, error) {
	h.mu.Lock()
	want := maxConns(opts)
	var s *Schema
	for i, idle := range h.idle {
		if idle.Pool.Config().MaxConns == want {
			s = idle
			h.idle = append(h.idle[:i], h.idle[i+1:]...)
			break
		}
	}
	if s == nil && len(h.idle) > 0 {
		s = h.idle[len(h.idle)-1]
		h.idle = h.idle[:len(h.idle)-1]
	}
	h.mu.Unlock()
	if s == nil || s.Pool.Config().MaxConns == want {
		return s, nil
	}
	pool, err := newPool(ctx, s.URL, want)
	if err != nil {
		h.retire(ctx, s)
		return nil, err
	}
	s.Pool.Close()
	s.Pool = pool
	return s, nil
}

// newPool opens a pool on schemaURL with at most maxConns connections.
// Its sessions commit without waiting for the WAL flush
// (synchronous_commit off): a commit is as visible and as atomic as
// before, only a crash of the server could lose it, and the quick tests
// never crash it (the fault suite, behind the build tag long, runs its own
// server). The URL keeps the server's setting: libpq clients (psql,
// psycopg) refuse unknown URL parameters.
func newPool(ctx context.Context, schemaURL string, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(schemaURL)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = maxConns
	cfg.MaxConnIdleTime = time.Minute
	cfg.ConnConfig.RuntimeParams["synchronous_commit"] = "off"
	return pgxpool.NewWithConfig(ctx, cfg)
}

func maxConns(opts *Opts) int32 {
	if opts.MaxConns > 0 {
		return opts.MaxConns
	}
	return 10
}

func (h *harness) create(ctx context.Context, opts *Opts) (*Schema, error) {
	name := fmt.Sprintf("%s%d", h.base, h.counter.Add(1))
	if len(name) > 63 {
		return nil, fmt.Errorf("schema name %q is longer than 63 bytes", name)
	}
	if _, err := h.admin.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{name}.Sanitize()); err != nil {
		return nil, err
	}

	schemaURL, err := withSearchPath(h.baseURL, name)
	if err != nil {
		return nil, err
	}
	pool, err := newPool(ctx, schemaURL, maxConns(opts))
	if err != nil {
		return nil, err
	}
	s := &Schema{Name: name, Pool: pool, URL: schemaURL}
	h.mu.Lock()
	h.created = append(h.created, s)
	h.mu.Unlock()

	if _, err := dbmigrate.Up(ctx, pool, &dbmigrate.Options{Schema: name}); err != nil {
		return nil, fmt.Errorf("migrating schema %s: %w", name, err)
	}
	if s.fingerprint, err = fingerprint(ctx, s); err != nil {
		return nil, err
	}
	return s, nil
}

// checkin empties s and makes it available to the next test. A schema whose
// structure the test changed (tables, migrations) or that cannot be emptied
// is retired: dropped, never reused.
func (h *harness) checkin(ctx context.Context, s *Schema) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	fp, err := fingerprint(ctx, s)
	if err == nil && fp == s.fingerprint {
		err = truncateAll(ctx, s)
	}
	if err != nil || fp != s.fingerprint {
		h.retire(ctx, s)
		return
	}
	// An idle schema holds no connection: parallel test binaries share one
	// server and its max_connections (100 by default).
	s.Pool.Reset()
	h.mu.Lock()
	h.idle = append(h.idle, s)
	h.mu.Unlock()
}

func (h *harness) retire(ctx context.Context, s *Schema) {
	h.mu.Lock()
	h.created = slices.DeleteFunc(h.created, func(c *Schema) bool { return c == s })
	h.mu.Unlock()
	s.Pool.Close()
	_, _ = h.admin.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{s.Name}.Sanitize()+" CASCADE")
}

// fingerprint describes the structure a test may have changed: the
// relations, their columns, constraints, triggers and privileges, the
// functions (their bodies, settings and privileges), the privileges on the
// types and on the schema, and both migration versions. It reads
// pg_catalog, not information_schema (whose views cost tens of milliseconds
// a call; every test's checkin calls it).
func fingerprint(ctx context.Context, s *Schema) (string, error) {
	var fp string
	err := s.Pool.QueryRow(ctx, `
		SELECT coalesce((SELECT string_agg(c.relname || '.' || a.attname || ':' || format_type(a.atttypid, a.atttypmod), ',' ORDER BY c.relname, a.attname)
		                   FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
		                  WHERE c.relnamespace = $1::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
		                    AND a.attnum > 0 AND NOT a.attisdropped), '')
		    || '|' || coalesce((SELECT string_agg(relname || ':' || coalesce(relacl::text, '') || ':' || coalesce(array_to_string(reloptions, ','), ''), ',' ORDER BY relname)
		                   FROM pg_class WHERE relnamespace = $1::regnamespace), '')
		    || '|' || coalesce((SELECT string_agg(conname, ',' ORDER BY conname)
		                   FROM pg_constraint WHERE connamespace = $1::regnamespace), '')
		    || '|' || coalesce((SELECT string_agg(t.tgname || ':' || t.tgenabled::text, ',' ORDER BY t.tgname)
		                   FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid WHERE c.relnamespace = $1::regnamespace), '')
		    || '|' || coalesce((SELECT string_agg(oid::regprocedure::text || ':' || md5(prosrc) || ':' || coalesce(proacl::text, '') || ':' || coalesce(array_to_string(proconfig, ','), ''), ',' ORDER BY oid::regprocedure::text)
		                   FROM pg_proc WHERE pronamespace = $1::regnamespace), '')
		    || '|' || coalesce((SELECT string_agg(typname || ':' || coalesce(typacl::text, ''), ',' ORDER BY typname)
		                   FROM pg_type WHERE typnamespace = $1::regnamespace AND typacl IS NOT NULL), '')
		    || '|' || coalesce((SELECT nspacl::text FROM pg_namespace WHERE oid = $1::regnamespace), '')
		    || '|' || coalesce((SELECT string_agg(version::text || dirty::text, ',') FROM schema_migrations), '')
		    || '|' || coalesce((SELECT max(version)::text FROM river_migration), '')`, s.Name).Scan(&fp)
	if err != nil {
		return "", fmt.Errorf("dbtest: reading the structure of %s: %w", s.Name, err)
	}
	return fp, nil
}

// keptTables hold what migrations wrote, not tests (the bookkeeping, the
// role grants of 0018_role_grants), and survive a reset.
var keptTables = map[string]bool{"schema_migrations": true, "river_migration": true, "aftercommit_role_grants": true}

// truncateAll empties every table but the kept ones and restarts their
// identities. TRUNCATE gives every table it empties new files, which costs
// about 10 ms a table; a test writes to a few of the schema's tables, so
// only the tables that hold a row are truncated, and the sequences of all
// of them are set back to their start.
//
// The tables are locked first, in the same transaction: a transaction the
// test left running (its client gave up on a deadline, the server went on)
// may still commit rows, and the check for rows must see them, as one
// TRUNCATE of every table did by waiting for its locks.
func truncateAll(ctx context.Context, s *Schema) error {
	rows, err := s.Pool.Query(ctx,
		`SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY tablename`, s.Name)
	if err != nil {
		return err
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	var idents, checks []string
	for _, tbl := range tables {
		if !keptTables[tbl] {
			ident := pgx.Identifier{s.Name, tbl}.Sanitize()
			idents = append(idents, ident)
			checks = append(checks, fmt.Sprintf("CASE WHEN EXISTS (SELECT FROM %s) THEN %s END", ident, quoteLiteral(tbl)))
		}
	}
	if len(idents) == 0 {
		return nil
	}
	kept := make([]string, 0, len(keptTables))
	for tbl := range keptTables {
		kept = append(kept, tbl)
	}
	return pgx.BeginFunc(ctx, s.Pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "LOCK TABLE "+strings.Join(idents, ", ")+" IN ACCESS EXCLUSIVE MODE"); err != nil {
			return err
		}
		var nonEmpty []string
		if err := tx.QueryRow(ctx,
			"SELECT array_remove(ARRAY["+strings.Join(checks, ", ")+"]::text[], NULL)").Scan(&nonEmpty); err != nil {
			return err
		}
		if len(nonEmpty) > 0 {
			truncate := make([]string, len(nonEmpty))
			for i, tbl := range nonEmpty {
				truncate[i] = pgx.Identifier{s.Name, tbl}.Sanitize()
			}
			if _, err := tx.Exec(ctx, "TRUNCATE "+strings.Join(truncate, ", ")+" RESTART IDENTITY CASCADE"); err != nil {
				return err
			}
		}
		// The sequences of the emptied tables, written to or not (a
		// rolled-back insert advances a sequence too), as TRUNCATE …
		// RESTART IDENTITY would.
		_, err := tx.Exec(ctx, `
			SELECT setval(seq.seqrelid, seq.seqstart, false)
			  FROM pg_sequence seq
			  JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = seq.seqrelid
			                  AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
			  JOIN pg_class t ON t.oid = d.refobjid
			 WHERE t.relnamespace = $1::regnamespace AND t.relname <> ALL($2)
			   AND pg_sequence_last_value(seq.seqrelid) IS NOT NULL`, s.Name, kept)
		return err
	})
}

// quoteLiteral quotes s as an SQL string literal.
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

func (h *harness) shutdown(dropSchemas bool) {
	if h.admin == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	h.mu.Lock()
	created := h.created
	h.created, h.idle = nil, nil
	h.mu.Unlock()
	for _, s := range created {
		s.Pool.Close()
		if dropSchemas {
			_, _ = h.admin.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{s.Name}.Sanitize()+" CASCADE")
		}
	}
	h.admin.Close()
	if h.stop != nil {
		h.stop()
	}
}

// withSearchPath returns rawURL with search_path set to schema. pgx sends
// unknown URL parameters to the server as run-time parameters.
func withSearchPath(rawURL, schema string) (string, error) {
	if strings.Contains(rawURL, "://") {
		u, err := url.Parse(rawURL)
		if err != nil {
			return "", fmt.Errorf("parsing database URL: %w", err)
		}
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	return rawURL + " search_path=" + schema, nil
}

// describeURL names host, port and database of a URL without its password.
func describeURL(rawURL string) string {
	cfg, err := pgconn.ParseConfig(rawURL)
	if err != nil {
		return "an unparsable URL"
	}
	return fmt.Sprintf("%s:%d (database %q, user %q)", cfg.Host, cfg.Port, cfg.Database, cfg.User)
}

// oneLine gives the innermost cause of err on one line: the driver's
// wrapping repeats host and user, which the message already names.
func oneLine(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Message
	}
	for {
		next := errors.Unwrap(err)
		if next == nil {
			break
		}
		err = next
	}
	return strings.ReplaceAll(err.Error(), "\n", " ")
}

var nonIdent = regexp.MustCompile(`[^a-z0-9]+`)

// callerPackage names the package under test, from the test binary's name
// (e.g. outbox.test → outbox), so schemas of parallel package binaries never
// collide and garbage collection only touches one package's leftovers.
func callerPackage() string {
	name := os.Args[0]
	if i := strings.LastIndexAny(name, `/\`); i >= 0 {
		name = name[i+1:]
	}
	name = strings.TrimSuffix(strings.TrimSuffix(name, ".exe"), ".test")
	name = nonIdent.ReplaceAllString(strings.ToLower(name), "")
	if name == "" {
		_, file, _, _ := runtime.Caller(0)
		name = nonIdent.ReplaceAllString(strings.ToLower(file), "")
	}
	if len(name) > 16 {
		name = name[:16]
	}
	return name
}
