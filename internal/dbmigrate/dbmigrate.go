// Package dbmigrate applies the whole schema of aftercommit: River's tables
// through River's own migrator (rivermigrate), then the project's files from
// package migrations through golang-migrate (iofs source, pgx v5 driver).
//
// Both the `aftercommit migrate` command and the test harness use it, so a
// test schema is built exactly the way a production database is.
package dbmigrate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/golang-migrate/migrate/v4"
	migratepgx "github.com/golang-migrate/migrate/v4/database/pgx/v5"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"

	"github.com/aftercommit/aftercommit/migrations"
)

// Options select where migrations go.
type Options struct {
	// Schema is the schema to migrate. The pool's connections must have the
	// same schema first in their search_path, because the project's files use
	// unqualified names.
	//
	// Defaults to empty: the current schema of the connection (search_path).
	Schema string

	// Logger receives River's migrator logs. Defaults to a logger that drops
	// everything below warnings.
	Logger *slog.Logger
}

// Version describes what is applied in a database.
type Version struct {
	// River is the newest River migration applied (0 when none).
	River int
	// RiverLatest is the newest River migration this binary knows.
	RiverLatest int
	// App is the newest project migration applied (0 when none).
	App uint
	// AppLatest is the newest project migration this binary knows.
	AppLatest uint
	// Dirty is true when a project migration failed half way; it must be
	// repaired by hand (golang-migrate's `force`) before anything else runs.
	Dirty bool
}

// Result lists what one Up or Down changed.
type Result struct {
	// River lists the River migration versions applied or removed.
	River []int
	// App lists the project migration versions applied or removed, in order.
	App []uint
}

// Changed reports whether anything was applied or removed.
func (r Result) Changed() bool { return len(r.River) > 0 || len(r.App) > 0 }

// Up applies every River migration, then every project migration, that is
// not applied yet. Running it on an up-to-date database changes nothing.
func Up(ctx context.Context, pool *pgxpool.Pool, opts *Options) (Result, error) {
	var res Result
	if opts == nil {
		opts = &Options{}
	}
	if err := checkTarget(ctx, pool, opts); err != nil {
		return res, err
	}
	// A dirty database stops everything, River's migrations included.
	if _, _, err := readAppVersion(ctx, pool); err != nil {
		return res, err
	}

	riverMig, err := riverMigrator(pool, opts)
	if err != nil {
		return res, err
	}
	rr, err := riverMig.Migrate(ctx, rivermigrate.DirectionUp, nil)
	if err != nil {
		return res, fmt.Errorf("migrating River's tables up: %w", err)
	}
	for _, v := range rr.Versions {
		res.River = append(res.River, v.Version)
	}

	err = withAppMigrator(ctx, pool, opts, func(m *migrate.Migrate) error {
		before, _, err := appVersion(m)
		if err != nil {
			return err
		}
		if err := m.Up(); err != nil && !errors.Is(err, migrate.ErrNoChange) {
			return fmt.Errorf("migrating aftercommit's tables up: %w", err)
		}
		after, _, err := appVersion(m)
		if err != nil {
			return err
		}
		res.App = appliedBetween(before, after)
		return nil
	})
	return res, err
}

// Down removes every project migration, then every River migration: the
// database is left without any table of aftercommit or River. Running it on
// an empty database changes nothing.
func Down(ctx context.Context, pool *pgxpool.Pool, opts *Options) (Result, error) {
	var res Result
	if opts == nil {
		opts = &Options{}
	}
	if err := checkTarget(ctx, pool, opts); err != nil {
		return res, err
	}

	err := withAppMigrator(ctx, pool, opts, func(m *migrate.Migrate) error {
		before, _, err := appVersion(m)
		if err != nil {
			return err
		}
		if err := m.Down(); err != nil && !errors.Is(err, migrate.ErrNoChange) {
			return fmt.Errorf("migrating aftercommit's tables down: %w", err)
		}
		res.App = appliedBetween(0, before)
		for i, j := 0, len(res.App)-1; i < j; i, j = i+1, j-1 {
			res.App[i], res.App[j] = res.App[j], res.App[i]
		}
		return nil
	})
	if err != nil {
		return res, err
	}

	riverMig, err := riverMigrator(pool, opts)
	if err != nil {
		return res, err
	}
	existing, err := riverMig.ExistingVersions(ctx)
	if err != nil {
		return res, fmt.Errorf("reading River's migration versions: %w", err)
	}
	if len(existing) == 0 {
		return res, nil
	}
	rr, err := riverMig.Migrate(ctx, rivermigrate.DirectionDown, &rivermigrate.MigrateOpts{TargetVersion: -1})
	if err != nil {
		return res, fmt.Errorf("migrating River's tables down: %w", err)
	}
	for _, v := range rr.Versions {
		res.River = append(res.River, v.Version)
	}
	return res, nil
}

// CurrentVersion reports what is applied and what this binary knows.
func CurrentVersion(ctx context.Context, pool *pgxpool.Pool, opts *Options) (Version, error) {
	var v Version
	if opts == nil {
		opts = &Options{}
	}
	if err := checkTarget(ctx, pool, opts); err != nil {
		return v, err
	}
	riverMig, err := riverMigrator(pool, opts)
	if err != nil {
		return v, err
	}
	existing, err := riverMig.ExistingVersions(ctx)
	if err != nil {
		// Before River's first migration there is no river_migration table.
		existing = nil
		if !isUndefinedTable(err) {
			return v, fmt.Errorf("reading River's migration versions: %w", err)
		}
	}
	if len(existing) > 0 {
		v.River = existing[len(existing)-1].Version
	}
	all := riverMig.AllVersions()
	v.RiverLatest = all[len(all)-1].Version

	v.AppLatest, err = LatestAppVersion()
	if err != nil {
		return v, err
	}
	v.App, v.Dirty, err = readAppVersion(ctx, pool)
	return v, err
}

// LatestAppVersion is the newest project migration embedded in the binary.
func LatestAppVersion() (uint, error) {
	src, err := iofs.New(migrations.FS, ".")
	if err != nil {
		return 0, fmt.Errorf("reading embedded migrations: %w", err)
	}
	defer src.Close()
	v, err := src.First()
	if err != nil {
		return 0, fmt.Errorf("reading embedded migrations: %w", err)
	}
	for {
		next, err := src.Next(v)
		if err != nil {
			return v, nil //nolint:nilerr // os.ErrNotExist marks the last one
		}
		v = next
	}
}

func riverMigrator(pool *pgxpool.Pool, opts *Options) (*rivermigrate.Migrator[pgxTx], error) {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m, err := rivermigrate.New(riverpgxv5.New(pool), &rivermigrate.Config{Schema: opts.Schema, Logger: logger})
	if err != nil {
		return nil, fmt.Errorf("building River's migrator: %w", err)
	}
	return m, nil
}

func withAppMigrator(ctx context.Context, pool *pgxpool.Pool, opts *Options, fn func(*migrate.Migrate) error) error {
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()

	drv, err := migratepgx.WithInstance(db, &migratepgx.Config{SchemaName: opts.Schema})
	if err != nil {
		return fmt.Errorf("opening golang-migrate's pgx driver: %w", err)
	}
	src, err := iofs.New(migrations.FS, ".")
	if err != nil {
		return fmt.Errorf("reading embedded migrations: %w", err)
	}
	m, err := migrate.NewWithInstance("iofs", src, "pgx5", drv)
	if err != nil {
		return fmt.Errorf("building golang-migrate: %w", err)
	}
	defer m.Close()

	// golang-migrate has no context API; stop it between migrations when
	// ctx ends.
	stop := context.AfterFunc(ctx, func() {
		select {
		case m.GracefulStop <- true:
		default:
		}
	})
	defer stop()
	return fn(m)
}

func appVersion(m *migrate.Migrate) (uint, bool, error) {
	v, dirty, err := m.Version()
	if errors.Is(err, migrate.ErrNilVersion) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("reading aftercommit's migration version: %w", err)
	}
	if dirty {
		return v, true, fmt.Errorf("%w: version %d; fix it by hand, then force the version", ErrDirty, v)
	}
	return v, false, nil
}

// ErrDirty means a project migration failed half way through.
var ErrDirty = errors.New("dbmigrate: database is dirty")

// appliedBetween lists the embedded versions v with from < v <= to.
func appliedBetween(from, to uint) []uint {
	var out []uint
	src, err := iofs.New(migrations.FS, ".")
	if err != nil {
		return nil
	}
	defer src.Close()
	for v, err := src.First(); err == nil; v, err = src.Next(v) {
		if v > from && v <= to {
			out = append(out, v)
		}
	}
	return out
}

type pgxTx = pgx.Tx

func isUndefinedTable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42P01"
}

// ErrSearchPath means Options.Schema is not the first schema of the pool's
// search_path: River's tables would go to one schema and the project's
// unqualified ones to another.
var ErrSearchPath = errors.New("dbmigrate: Options.Schema is not the current schema of the pool's connections")

func checkTarget(ctx context.Context, pool *pgxpool.Pool, opts *Options) error {
	var current *string
	if err := pool.QueryRow(ctx, `SELECT current_schema()`).Scan(&current); err != nil {
		return fmt.Errorf("reading the current schema: %w", err)
	}
	if current == nil {
		return fmt.Errorf("%w: no schema of the search_path exists", ErrSearchPath)
	}
	if opts.Schema != "" && *current != opts.Schema {
		return fmt.Errorf("%w: Schema is %q, current_schema() is %q; set search_path on the pool", ErrSearchPath, opts.Schema, *current)
	}
	return nil
}

// readAppVersion reads golang-migrate's bookkeeping without creating it (the
// driver creates schema_migrations when it opens), so reading a version never
// writes. It returns ErrDirty for a dirty database.
func readAppVersion(ctx context.Context, pool *pgxpool.Pool) (uint, bool, error) {
	var exists bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass(quote_ident(current_schema()) || '.schema_migrations') IS NOT NULL`).Scan(&exists); err != nil {
		return 0, false, fmt.Errorf("reading aftercommit's migration version: %w", err)
	}
	if !exists {
		return 0, false, nil
	}
	var (
		version int64
		dirty   bool
	)
	err := pool.QueryRow(ctx, `SELECT version, dirty FROM schema_migrations LIMIT 1`).Scan(&version, &dirty)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("reading aftercommit's migration version: %w", err)
	}
	if dirty {
		return uint(version), true, fmt.Errorf("%w: version %d; fix it by hand, then force the version", ErrDirty, version)
	}
	return uint(version), false, nil
}
