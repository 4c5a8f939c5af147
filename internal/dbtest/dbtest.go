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
// The schemas live in the test database, TestDatabase on the URL's server
// (created when missing; a role without CREATEDB works in the URL's
// database instead), and outlive the test binary: a schema is a pool
// schema, named after a hash of the migrations it holds, that one test
// binary at a time leases with a session advisory lock. A test binary
// takes an unleased pool schema of its migrations, empties it and checks
// its structure, or creates and migrates a new one when none is free
// (about half a second of the server's time, and a hundred files).
// When a test ends, the tables it wrote are emptied (DELETE, or TRUNCATE
// once a table is large) and the schema goes to the next test (a few
// milliseconds), with a pool of the size that test asks for; when the
// binary exits, its leases end and the schemas wait for the next binary.
// So a run creates almost no schema, database or file: on the project's
// machines (no autovacuum, ext4 without a journal) creating and dropping
// them left dead catalog rows behind and made every file the server
// created cost more.
//
// A schema whose structure a test changed is dropped, as are the schemas
// of other migrations once no binary leases them, and the dead catalog
// rows of the test database are vacuumed away when they pile up.
package dbtest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
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

	"github.com/aftercommit/aftercommit/internal/testexit"
)

// DefaultURL is used when neither TEST_DATABASE_URL nor DATABASE_URL is set.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// TestDatabase is the database, on the URL's server, that holds the test
// schemas.
const TestDatabase = "aftercommit_test"

// schemaPrefix started the names of the databases and schemas of earlier
// versions of the harness; gc drops what is left of them.
const schemaPrefix = "act_"

// poolPrefix starts the name of every pool schema:
// actpool_<migrations hash>_<pid>_<n>.
const poolPrefix = "actpool_"

// poolName matches the name of a pool schema; schemas named after one
// plus a suffix ("<pool schema>_target") are a test's own, and go when
// the next binary takes the pool schema.
var poolName = regexp.MustCompile(`^actpool_[0-9a-f]{12}_[0-9]+_[0-9]+$`)

// testPrefixEnv names the environment variable that gives the pool schemas
// of a test binary another prefix, which no other binary lists: the
// harness's own tests start child binaries with it.
const testPrefixEnv = "DBTEST_POOL_PREFIX"

// leaseKey is the first key of the advisory locks that lease pool schemas
// (the second is the schema name's hashtext): "actp".
const leaseKey = 0x61637470

// vacuumDeadRows is how many dead rows the test database's catalogs may
// hold before a binary vacuums them at start. Tests that migrate schemas of
// their own (the migrate commands') and drop them leave thousands each.
const vacuumDeadRows = 100_000

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

	fingerprint string   // tables and migration versions right after creation
	tables      []string // the tables a reset empties (names within the schema)
	sequences   []uint32 // the OIDs of their sequences
	seqStarts   []int64  // and each sequence's start value
}

// Opts tune one schema. A nil *Opts takes the defaults.
type Opts struct {
	// MaxConns caps Pool. Defaults to 10.
	MaxConns int32
}

type harness struct {
	once      sync.Once
	err       error
	baseURL   string        // the URL of the test database
	admin     *pgxpool.Pool // on the test database
	server    *pgxpool.Pool // on the URL's database
	stop      func()        // terminates a container, when one was started
	superuser bool          // whether the role is a superuser (resets may DELETE)
	prefix    string        // poolPrefix + the migrations' hash + "_"
	counter   atomic.Int64

	leaseMu sync.Mutex
	lease   *pgx.Conn       // holds the advisory lock of every schema the binary has
	leased  map[string]bool // and their names: a session takes a lock it holds again

	mu      sync.Mutex
	idle    []*Schema
	created []*Schema
}

var h harness

// WrapTestMain runs a package's tests: it makes sure a server answers before
// any test starts (or exits 1 with one line saying how to provide one), runs
// them, hands the binary's schemas back to the pool, and fails the run when
// goroutines leak. A passing run exits without the race detector's idle second (see
// package testexit).
func WrapTestMain(m *testing.M) {
	defaultParallel()
	if err := h.init(); err != nil {
		fmt.Fprintln(os.Stderr, err.Error())
		os.Exit(1)
	}
	code := m.Run()
	h.shutdown()
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
	if f := flag.Lookup("test.parallel"); f != nil && !set && !Long && runtime.GOMAXPROCS(0) < minParallel {
		_ = f.Value.Set(strconv.Itoa(minParallel))
	}
}

// ServerURL returns the URL of the database tests run in (after starting
// the server if need be): TestDatabase, which every test of every binary
// shares, so use it only to open pools whose search_path you set yourself,
// and drop what a test creates there. A schema named after a test's own
// schema plus a suffix (s.Name + "_target") is dropped for the test when a
// later binary takes s, should the test's cleanup not have run.
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

// Scratch runs createSQL in s for a test that needs objects of its own
// (a table, a trigger) and dropSQL when t ends, before s is emptied for the
// next test. A schema whose structure differs from a freshly migrated one
// is dropped instead of reused, and creating its replacement costs the
// migrations again (about half a second of the server's time); dropSQL
// must therefore remove everything createSQL made. Register it after
// anything in t that uses the objects (a River client), so that it runs
// after they stopped.
func (s *Schema) Scratch(ctx context.Context, t testing.TB, createSQL, dropSQL string) {
	t.Helper()
	if _, err := s.Pool.Exec(ctx, createSQL); err != nil {
		t.Fatalf("dbtest: creating scratch objects in %s: %v", s.Name, err)
	}
	t.Cleanup(func() {
		if _, err := s.Pool.Exec(context.WithoutCancel(ctx), dropSQL); err != nil {
			t.Errorf("dbtest: dropping scratch objects in %s: %v", s.Name, err)
		}
	})
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
		s, err = h.adopt(ctx, opts)
		if err != nil {
			return nil, nil, fmt.Errorf("dbtest: taking a pool schema: %w", err)
		}
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
	h.server = admin
	var su string
	if err := admin.QueryRow(ctx, `SELECT current_setting('is_superuser')`).Scan(&su); err != nil {
		return fmt.Errorf("dbtest: reading whether the role is a superuser: %w", err)
	}
	h.superuser = su == "on"
	hash, err := migrationsHash()
	if err != nil {
		return err
	}
	h.prefix = poolPrefix + hash + "_"
	if p := os.Getenv(testPrefixEnv); p != "" {
		h.prefix = p
	}
	h.gc(ctx)
	h.admin, h.baseURL = admin, rawURL
	if err := h.testDatabase(ctx, rawURL); err != nil {
		return err
	}
	lease, err := pgx.Connect(ctx, h.baseURL)
	if err != nil {
		return fmt.Errorf("dbtest: connecting to the test database: %w", err)
	}
	h.lease = lease
	h.dropOtherMigrations(ctx)
	h.vacuumCatalogs(ctx)
	return nil
}

// testDatabase points the harness at TestDatabase, creating it when it is
// missing. A role that may not create databases works in the URL's.
func (h *harness) testDatabase(ctx context.Context, rawURL string) error {
	var exists bool
	if err := h.server.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)`, TestDatabase).Scan(&exists); err != nil {
		return fmt.Errorf("dbtest: looking for the test database: %w", err)
	}
	if !exists {
		if _, err := h.server.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{TestDatabase}.Sanitize()); err != nil {
			var pgErr *pgconn.PgError
			switch {
			case errors.As(err, &pgErr) && pgErr.Code == "42501": // insufficient_privilege
				fmt.Fprintf(os.Stderr, "dbtest: the role may not create databases (%s); working in the URL's database\n", pgErr.Message)
				return nil
			// Another binary created it at the same time.
			case errors.As(err, &pgErr) && (pgErr.Code == "42P04" || pgErr.Code == "23505"): // duplicate_database, unique_violation
			default:
				return fmt.Errorf("dbtest: creating the test database %s: %w", TestDatabase, err)
			}
		}
	}
	dbURL, err := withDatabase(rawURL, TestDatabase)
	if err != nil {
		return err
	}
	admin, err := openAndPing(ctx, dbURL)
	if err != nil {
		return fmt.Errorf("dbtest: connecting to the test database %s: %w", TestDatabase, err)
	}
	h.admin, h.baseURL = admin, dbURL
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

// gc drops the databases and schemas that earlier versions of the harness
// left behind for this package: a database per test binary, and before
// that schemas in the URL's database.
func (h *harness) gc(ctx context.Context) {
	pkgPrefix := schemaPrefix + callerPackage() + "_"
	cutoff := pkgPrefix + time.Now().UTC().Add(-gcAge).Format("20060102t150405")
	for _, q := range []struct{ list, drop string }{
		{`SELECT datname FROM pg_database WHERE starts_with(datname, $1) AND datname < $2`, "DROP DATABASE IF EXISTS %s WITH (FORCE)"},
		{`SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1) AND nspname < $2`, "DROP SCHEMA IF EXISTS %s CASCADE"},
	} {
		for _, n := range h.names(ctx, h.server, q.list, pkgPrefix, cutoff) {
			_, _ = h.server.Exec(ctx, fmt.Sprintf(q.drop, pgx.Identifier{n}.Sanitize()))
		}
	}
}

// names runs a query that lists names; an error lists none.
func (h *harness) names(ctx context.Context, pool *pgxpool.Pool, sql string, args ...any) []string {
	rows, err := pool.Query(ctx, sql, args...)
	if err != nil {
		return nil
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil
	}
	return names
}

// dropOtherMigrations drops the pool schemas of other migrations (an older
// or newer checkout of the code) that no binary leases.
func (h *harness) dropOtherMigrations(ctx context.Context) {
	for _, n := range h.names(ctx, h.admin, `SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1) AND NOT starts_with(nspname, $2) ORDER BY 1`, poolPrefix, h.prefix) {
		if !poolName.MatchString(n) {
			continue
		}
		if ok, err := h.tryLease(ctx, n); err == nil && ok {
			h.dropSchema(ctx, n)
		}
	}
}

// vacuumCatalogs vacuums the test database's catalogs when their dead rows
// pile up (the server may run without autovacuum, as on the project's
// machines): one binary at a time, the others go on. Only a superuser may.
func (h *harness) vacuumCatalogs(ctx context.Context) {
	if !h.superuser {
		return
	}
	var dead int64
	if err := h.admin.QueryRow(ctx, `SELECT coalesce(sum(n_dead_tup), 0) FROM pg_stat_sys_tables WHERE schemaname = 'pg_catalog'`).Scan(&dead); err != nil || dead < vacuumDeadRows {
		return
	}
	conn, err := h.admin.Acquire(ctx)
	if err != nil {
		return
	}
	defer conn.Release()
	var locked bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1, 0)`, leaseKey).Scan(&locked); err != nil || !locked {
		return
	}
	defer func() { _, _ = conn.Exec(ctx, `SELECT pg_advisory_unlock($1, 0)`, leaseKey) }()
	if _, err := conn.Exec(ctx, `VACUUM pg_catalog.pg_attribute, pg_catalog.pg_class, pg_catalog.pg_depend, pg_catalog.pg_type,
		pg_catalog.pg_constraint, pg_catalog.pg_index, pg_catalog.pg_attrdef, pg_catalog.pg_namespace, pg_catalog.pg_proc,
		pg_catalog.pg_trigger, pg_catalog.pg_description, pg_catalog.pg_sequence, pg_catalog.pg_init_privs, pg_catalog.pg_rewrite`); err != nil {
		fmt.Fprintf(os.Stderr, "dbtest: vacuuming the test database's catalogs (%d dead rows): %v\n", dead, err)
	}
}

// tryLease takes the advisory lock of the pool schema name on the lease
// connection, if neither another binary nor this one holds it.
func (h *harness) tryLease(ctx context.Context, name string) (bool, error) {
	h.leaseMu.Lock()
	defer h.leaseMu.Unlock()
	if h.leased[name] {
		return false, nil
	}
	var ok bool
	if err := h.lease.QueryRow(ctx, `SELECT pg_try_advisory_lock($1, hashtext($2))`, leaseKey, name).Scan(&ok); err != nil {
		return false, err
	}
	if ok {
		if h.leased == nil {
			h.leased = map[string]bool{}
		}
		h.leased[name] = true
	}
	return ok, nil
}

// endLease releases the lock of the pool schema name.
func (h *harness) endLease(ctx context.Context, name string) {
	h.leaseMu.Lock()
	defer h.leaseMu.Unlock()
	if !h.leased[name] {
		return
	}
	delete(h.leased, name)
	_, _ = h.lease.Exec(ctx, `SELECT pg_advisory_unlock($1, hashtext($2))`, leaseKey, name)
}

// dropSchema drops a pool schema, the schemas named after it, and its lease.
func (h *harness) dropSchema(ctx context.Context, name string) {
	h.dropDerived(ctx, name)
	_, _ = h.admin.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{name}.Sanitize()+" CASCADE")
	h.endLease(ctx, name)
}

// dropDerived drops the schemas a test named after its schema name
// ("<name>_target") and left behind.
func (h *harness) dropDerived(ctx context.Context, name string) {
	for _, n := range h.names(ctx, h.admin, `SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1)`, name+"_") {
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

// adopt leases a pool schema of the binary's migrations that no binary
// holds, if there is one, and readies it for a test: the schemas a test
// named after it are dropped, its structure is checked against the one it
// was created with (COMMENT ON SCHEMA holds its hash), and its tables are
// emptied (a binary that was killed could not). A schema that fails a
// check is dropped and the next one tried.
func (h *harness) adopt(ctx context.Context, opts *Opts) (*Schema, error) {
	rows, err := h.admin.Query(ctx, `
		SELECT nspname, coalesce(obj_description(oid, 'pg_namespace'), '')
		  FROM pg_namespace WHERE starts_with(nspname, $1) ORDER BY nspname`, h.prefix)
	if err != nil {
		return nil, err
	}
	type candidate struct{ name, comment string }
	var candidates []candidate
	var c candidate
	if _, err := pgx.ForEachRow(rows, []any{&c.name, &c.comment}, func() error {
		candidates = append(candidates, c)
		return nil
	}); err != nil {
		return nil, err
	}
	for _, c := range candidates {
		if !poolName.MatchString(c.name) {
			continue
		}
		s, err := h.take(ctx, c.name, c.comment, maxConns(opts))
		if err != nil || s != nil {
			return s, err
		}
	}
	return nil, nil
}

// take leases the pool schema name and readies it; nil when another
// binary holds it, or when it failed a check and was dropped.
func (h *harness) take(ctx context.Context, name, comment string, maxConns int32) (*Schema, error) {
	ok, err := h.tryLease(ctx, name)
	if err != nil || !ok {
		return nil, err
	}
	s, err := h.ready(ctx, name, comment, maxConns)
	if err != nil {
		h.dropSchema(ctx, name)
		return nil, nil //nolint:nilerr // a schema that fails a check is dropped; the caller takes another or creates one
	}
	return s, nil
}

// ready opens a pool on the leased pool schema name and readies it.
func (h *harness) ready(ctx context.Context, name, comment string, maxConns int32) (*Schema, error) {
	h.dropDerived(ctx, name)
	s, err := h.open(ctx, name, maxConns)
	if err != nil {
		return nil, err
	}
	if s.fingerprint, err = fingerprint(ctx, s); err == nil && fingerprintHash(s.fingerprint) != comment {
		err = fmt.Errorf("dbtest: the structure of %s changed", name)
	}
	if err == nil {
		err = s.readResetLists(ctx)
	}
	if err == nil {
		err = emptyTables(ctx, s, h.superuser)
	}
	if err != nil {
		s.Pool.Close()
		return nil, err
	}
	h.mu.Lock()
	h.created = append(h.created, s)
	h.mu.Unlock()
	return s, nil
}

// open opens a pool of maxConns connections on the schema name, whose
// search_path names it.
func (h *harness) open(ctx context.Context, name string, maxConns int32) (*Schema, error) {
	schemaURL, err := withSearchPath(h.baseURL, name)
	if err != nil {
		return nil, err
	}
	pool, err := newPool(ctx, schemaURL, maxConns)
	if err != nil {
		return nil, err
	}
	return &Schema{Name: name, Pool: pool, URL: schemaURL}, nil
}

// create makes a new pool schema, leased by the binary, and migrates it.
func (h *harness) create(ctx context.Context, opts *Opts) (*Schema, error) {
	var name string
	for {
		name = fmt.Sprintf("%s%d_%d", h.prefix, os.Getpid(), h.counter.Add(1))
		ok, err := h.tryLease(ctx, name)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue // a binary of an earlier run with the same pid holds it
		}
		_, err = h.admin.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{name}.Sanitize())
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42P06" { // duplicate_schema: left by an earlier run
			h.endLease(ctx, name)
			continue
		}
		if err != nil {
			h.endLease(ctx, name)
			return nil, err
		}
		break
	}
	s, err := h.open(ctx, name, maxConns(opts))
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	h.created = append(h.created, s)
	h.mu.Unlock()

	if err := migrate(ctx, s.Pool, name); err != nil {
		return nil, fmt.Errorf("migrating schema %s: %w", name, err)
	}
	if s.fingerprint, err = fingerprint(ctx, s); err != nil {
		return nil, err
	}
	// Last: a schema without its comment is one whose creation did not
	// finish, which the next binary drops.
	if _, err := h.admin.Exec(ctx, fmt.Sprintf("COMMENT ON SCHEMA %s IS %s",
		pgx.Identifier{name}.Sanitize(), quoteLiteral(fingerprintHash(s.fingerprint)))); err != nil {
		return nil, err
	}
	if err := s.readResetLists(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// fingerprintHash is what a pool schema's comment holds: the hash of its
// structure right after its migrations.
func fingerprintHash(fp string) string {
	sum := sha256.Sum256([]byte(fp))
	return hex.EncodeToString(sum[:])
}

// checkin empties s and makes it available to the next test. A schema whose
// structure the test changed (tables, migrations) or that cannot be emptied
// is retired: dropped, never reused.
func (h *harness) checkin(ctx context.Context, s *Schema) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	fp, err := fingerprint(ctx, s)
	if err == nil && fp == s.fingerprint {
		err = emptyTables(ctx, s, h.superuser)
	}
	if err != nil || fp != s.fingerprint {
		h.retire(ctx, s)
		return
	}
	keepWarm(ctx, s.Pool)
	h.mu.Lock()
	h.idle = append(h.idle, s)
	h.mu.Unlock()
}

// warmConns is how many connections an idle schema's pool keeps for the
// next test. A new connection costs the server far more than the work of
// most tests (tens of milliseconds of CPU: a forked backend with cold
// catalog caches that parses and plans River's statements again), and a
// test's River client opens several; but parallel test binaries share one
// server and its max_connections (100 by default), so an idle schema
// keeps only a few.
const warmConns = 4

// warmConnsLong replaces warmConns in the full suite: its load runs (a
// bench scenario's 32 clients) and its worker processes, beside another
// binary's, came within three connections of max_connections, where the
// server turns away every role but a superuser.
const warmConnsLong = 1

// resetSessionSQL is DISCARD ALL but for DEALLOCATE ALL and DISCARD PLANS:
// the prepared statements pgx caches stay valid and in place.
const resetSessionSQL = `CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *;
SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES`

// keepWarm closes all but warmConns of pool's idle connections and clears
// the session state a test may have left on the kept ones (settings and
// role, cursors, advisory locks, LISTEN, temporary tables), leaving their
// prepared statements in place. When a test leaked a connection that is
// still in use, every connection is closed, that one when it is released.
func keepWarm(ctx context.Context, pool *pgxpool.Pool) {
	idle := pool.AcquireAllIdle(ctx)
	kept := 0
	for _, c := range idle {
		if kept < warmConns && (!Long || kept < warmConnsLong) {
			if _, err := c.Exec(ctx, resetSessionSQL); err == nil {
				kept++
				c.Release()
				continue
			}
		}
		_ = c.Conn().Close(ctx)
		c.Release() // a closed connection leaves the pool
	}
	if pool.Stat().AcquiredConns() > 0 {
		pool.Reset()
	}
}

func (h *harness) retire(ctx context.Context, s *Schema) {
	h.mu.Lock()
	h.created = slices.DeleteFunc(h.created, func(c *Schema) bool { return c == s })
	h.mu.Unlock()
	s.Pool.Close()
	h.dropSchema(ctx, s.Name)
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

// readResetLists reads, once per schema, which tables a reset empties and
// which sequences it restarts. They stay right for as long as the schema is
// reused: checkin retires a schema whose structure changed. Reading them
// from the catalogs at every reset cost more than the reset.
func (s *Schema) readResetLists(ctx context.Context) error {
	rows, err := s.Pool.Query(ctx,
		`SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY tablename`, s.Name)
	if err != nil {
		return fmt.Errorf("dbtest: listing the tables of %s: %w", s.Name, err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("dbtest: listing the tables of %s: %w", s.Name, err)
	}
	kept := make([]string, 0, len(keptTables))
	for _, tbl := range tables {
		if keptTables[tbl] {
			kept = append(kept, tbl)
		} else {
			s.tables = append(s.tables, tbl)
		}
	}
	// The sequences owned by the emptied tables' columns (serial and
	// identity), as TRUNCATE … RESTART IDENTITY would restart them.
	rows, err = s.Pool.Query(ctx, `
		SELECT seq.seqrelid::oid, seq.seqstart
		  FROM pg_sequence seq
		  JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = seq.seqrelid
		                  AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
		  JOIN pg_class t ON t.oid = d.refobjid
		 WHERE t.relnamespace = $1::regnamespace AND t.relname <> ALL($2)
		 ORDER BY 1`, s.Name, kept)
	if err != nil {
		return fmt.Errorf("dbtest: listing the sequences of %s: %w", s.Name, err)
	}
	var oid uint32
	var start int64
	_, err = pgx.ForEachRow(rows, []any{&oid, &start}, func() error {
		s.sequences = append(s.sequences, oid)
		s.seqStarts = append(s.seqStarts, start)
		return nil
	})
	if err != nil {
		return fmt.Errorf("dbtest: listing the sequences of %s: %w", s.Name, err)
	}
	return nil
}

// deleteSizeLimit is the largest table (its heap, in bytes) that a reset
// empties with DELETE; a larger one is truncated, which also gives back
// the space that earlier DELETEs left behind.
const deleteSizeLimit = 1 << 20

// emptyTables empties every table but the kept ones and restarts their
// identities. A test writes to a few of the schema's tables, so only the
// tables that hold a row are emptied, and the sequences of all of them are
// set back to their start.
//
// A table of up to deleteSizeLimit is emptied with DELETE, with triggers
// and foreign keys off (session_replication_role replica, which needs a
// superuser; other roles truncate every table). TRUNCATE gives the table
// and each of its indexes new files, and on the project's machines (ext4
// without a journal, where creating a file scans the inodes deleted in the
// last half minute) that file churn made every reset, and every other
// file the server created, cost tens of milliseconds: with DELETE a reset
// creates no file. The dead rows DELETE leaves go when the table outgrows
// deleteSizeLimit and is truncated, or with the binary's database.
//
// The tables are locked first, in the same transaction: a transaction the
// test left running (its client gave up on a deadline, the server went on)
// may still commit rows, and the check for rows must see them, as one
// TRUNCATE of every table did by waiting for its locks.
func emptyTables(ctx context.Context, s *Schema, superuser bool) error {
	if len(s.tables) == 0 {
		return nil
	}
	idents := make([]string, len(s.tables))
	checks := make([]string, len(s.tables))
	for i, tbl := range s.tables {
		idents[i] = pgx.Identifier{s.Name, tbl}.Sanitize()
		checks[i] = fmt.Sprintf("CASE WHEN EXISTS (SELECT FROM %s) THEN CASE WHEN pg_relation_size(%s::regclass) > %d THEN 't' ELSE 'd' END || %d END",
			idents[i], quoteLiteral(idents[i]), deleteSizeLimit, i)
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
		var del, truncate []string
		for _, e := range nonEmpty {
			i, err := strconv.Atoi(e[1:])
			if err != nil || i >= len(idents) {
				return fmt.Errorf("dbtest: unexpected table check result %q", e)
			}
			if e[0] == 'd' && superuser {
				del = append(del, "DELETE FROM "+idents[i])
			} else {
				truncate = append(truncate, idents[i])
			}
		}
		if len(del) > 0 {
			if _, err := tx.Exec(ctx, "SET LOCAL session_replication_role = replica; "+strings.Join(del, "; ")); err != nil {
				return err
			}
		}
		if len(truncate) > 0 {
			if _, err := tx.Exec(ctx, "TRUNCATE "+strings.Join(truncate, ", ")+" CASCADE"); err != nil {
				return err
			}
		}
		if len(s.sequences) == 0 {
			return nil
		}
		// The sequences of the emptied tables, written to or not (a
		// rolled-back insert advances a sequence too).
		_, err := tx.Exec(ctx, `
			SELECT setval(seq::regclass, start, false)
			  FROM unnest($1::oid[], $2::bigint[]) AS x(seq, start)
			 WHERE pg_sequence_last_value(seq::regclass) IS NOT NULL`, s.sequences, s.seqStarts)
		return err
	})
}

// quoteLiteral quotes s as an SQL string literal.
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// shutdown closes the binary's pools and ends its leases: its schemas,
// emptied when their tests ended, wait in the test database for the next
// binary.
func (h *harness) shutdown() {
	if h.server == nil {
		return
	}
	h.mu.Lock()
	created := h.created
	h.created, h.idle = nil, nil
	h.mu.Unlock()
	for _, s := range created {
		s.Pool.Close()
	}
	if h.lease != nil {
		_ = h.lease.Close(context.Background())
	}
	if h.admin != h.server {
		h.admin.Close()
	}
	h.server.Close()
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

// withDatabase returns rawURL with its database set to name.
func withDatabase(rawURL, name string) (string, error) {
	if strings.Contains(rawURL, "://") {
		u, err := url.Parse(rawURL)
		if err != nil {
			return "", fmt.Errorf("parsing database URL: %w", err)
		}
		u.Path = "/" + name
		u.RawPath = ""
		return u.String(), nil
	}
	return rawURL + " dbname=" + name, nil
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

// HoldSnapshot opens a session of its own on s, with application_name
// application and the runtime parameters params, begins a REPEATABLE READ
// transaction there and takes its snapshot, which holds back vacuum until
// the transaction ends (at the latest when t ends). It returns the
// transaction and the session's backend pid.
func (s *Schema) HoldSnapshot(ctx context.Context, t testing.TB, application string, params map[string]string) (pgx.Tx, int32) {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(s.URL)
	if err != nil {
		t.Fatalf("dbtest: %v", err)
	}
	cfg.MaxConns = 1
	cfg.ConnConfig.RuntimeParams["application_name"] = application
	for k, v := range params {
		cfg.ConnConfig.RuntimeParams[k] = v
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("dbtest: %v", err)
	}
	t.Cleanup(pool.Close)
	tx, err := pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	if err != nil {
		t.Fatalf("dbtest: beginning the snapshot's transaction: %v", err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.WithoutCancel(ctx)) })
	var pid int32
	if err := tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil { // takes the snapshot
		t.Fatalf("dbtest: taking the snapshot: %v", err)
	}
	return tx, pid
}
