// Package dbmigrate applies the whole schema of aftercommit: the files of
// package migrations, River's migrations (0001–0008) and then aftercommit's,
// through golang-migrate (iofs source, pgx v5 driver) and its one
// schema_migrations table, exactly as golang-migrate's own CLI applies the
// same directory.
//
// Both the `aftercommit migrate` command and the test harness use it, so a
// test schema is built exactly the way a production database is.
//
// # The old numbering
//
// Until River's migrations joined package migrations, River's tables came
// from River's own migrator (rivermigrate, bookkeeping in river_migration)
// and aftercommit's files were numbered 0001–0008 in schema_migrations. Up
// and Down recognize such a database (schema_migrations at 1–8 while
// aftercommit's first table, pings, exists; or River's tables without any
// schema_migrations version) and renumber schema_migrations to the new
// layout first, in one transaction under golang-migrate's lock, without
// touching any other row. golang-migrate's CLI cannot tell the two
// numberings apart: on such a database run `migrate force N` once, with N
// the old version plus 8 (see LegacyVersion), before its first `up`.
package dbmigrate

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"regexp"
	"slices"
	"strconv"

	"github.com/golang-migrate/migrate/v4"
	"github.com/golang-migrate/migrate/v4/database"
	migratepgx "github.com/golang-migrate/migrate/v4/database/pgx/v5"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/aftercommit/aftercommit/migrations"
)

// Options select where migrations go.
type Options struct {
	// Schema is the schema to migrate. The pool's connections must have the
	// same schema first in their search_path, because the files use
	// unqualified names.
	//
	// Defaults to empty: the current schema of the connection (search_path).
	Schema string

	// Logger receives one line per migration applied or removed, and one
	// for a renumbering of the old layout. Defaults to a logger that drops
	// everything.
	Logger *slog.Logger
}

// Migration is one migration of package migrations.
type Migration struct {
	// Version is its golang-migrate version (the file's NNNN).
	Version uint
	// Name is the rest of the file's name, e.g. "river_002_initial_schema"
	// or "pings".
	Name string
	// River is River's own version of one of River's migrations, 0 for
	// aftercommit's.
	River int
}

// UpFile is the name of the migration's up file in package migrations.
func (m Migration) UpFile() string { return fmt.Sprintf("%04d_%s.up.sql", m.Version, m.Name) }

// DownFile is the name of the migration's down file in package migrations.
func (m Migration) DownFile() string { return fmt.Sprintf("%04d_%s.down.sql", m.Version, m.Name) }

// Version describes what is applied in a database.
type Version struct {
	// App is the newest migration of package migrations applied, River's
	// included: golang-migrate's schema_migrations version (0 when none).
	// In a database of the old layout (OldLayout) it is the old number.
	App uint
	// AppLatest is the newest migration this binary knows.
	AppLatest uint
	// Dirty is true when a migration failed half way; it must be repaired
	// by hand (golang-migrate's `force`) before anything else runs.
	Dirty bool
	// River is the newest River version River's own bookkeeping
	// (river_migration, line main) records, as rivermigrate and riverui
	// read it (0 when none).
	River int
	// RiverLatest is the newest River migration this binary holds.
	RiverLatest int
	// OldLayout is true for a database migrated before River's migrations
	// joined package migrations; Up and Down renumber it first.
	OldLayout bool
}

// Result lists what one Up or Down changed.
type Result struct {
	// Renumbered is set when the database was of the old layout and its
	// schema_migrations version was renumbered first.
	Renumbered *Renumbering
	// Migrations lists the migrations applied (Up) or removed (Down), in
	// the order they ran.
	Migrations []Migration
}

// Renumbering is the move of a database of the old layout to the new one.
type Renumbering struct {
	// From is schema_migrations' version before, in the old numbering (0:
	// no version, River's tables only).
	From uint
	// To is the version after, in the new numbering.
	To uint
	// River is the River version river_migration recorded.
	River int
}

// Changed reports whether anything was applied, removed or renumbered.
func (r Result) Changed() bool { return r.Renumbered != nil || len(r.Migrations) > 0 }

// Errors of Up, Down and CurrentVersion, matched with errors.Is.
var (
	// ErrDirty means a migration failed half way through.
	ErrDirty = errors.New("dbmigrate: database is dirty")
	// ErrSearchPath means Options.Schema is not the first schema of the
	// pool's search_path: unqualified names would go to another schema.
	ErrSearchPath = errors.New("dbmigrate: Options.Schema is not the current schema of the pool's connections")
	// ErrOldLayout means a database of the old layout cannot be renumbered
	// safely (its River version does not match where the new layout puts
	// aftercommit's first migration, or its tables and versions disagree).
	ErrOldLayout = errors.New("dbmigrate: cannot renumber a database of the old layout")
)

// legacyNames are aftercommit's migrations as they were numbered before
// River's joined them (commit ad3d8b2): old version i+1 is legacyNames[i].
var legacyNames = []string{
	"pings", "job_locks", "outbox_events", "donations",
	"inventory", "inventory_buckets", "job_views", "reporting",
}

// LegacyVersion maps a version of the old numbering (1–8, aftercommit's
// files before River's joined them) to the same migration's version now.
func LegacyVersion(old uint) (uint, bool) {
	if old < 1 || int(old) > len(legacyNames) {
		return 0, false
	}
	all, err := Migrations()
	if err != nil {
		return 0, false
	}
	for _, m := range all {
		if m.Name == legacyNames[old-1] && m.River == 0 {
			return m.Version, true
		}
	}
	return 0, false
}

var fileRE = regexp.MustCompile(`^([0-9]+)_(.+)\.up\.sql$`)
var riverNameRE = regexp.MustCompile(`^river_([0-9]{3})_`)

// Migrations lists every migration of package migrations, in order.
func Migrations() ([]Migration, error) {
	entries, err := fs.ReadDir(migrations.FS, ".")
	if err != nil {
		return nil, fmt.Errorf("dbmigrate: reading embedded migrations: %w", err)
	}
	var out []Migration
	for _, e := range entries {
		sub := fileRE.FindStringSubmatch(e.Name())
		if sub == nil {
			continue
		}
		v, err := strconv.ParseUint(sub[1], 10, 32)
		if err != nil {
			return nil, fmt.Errorf("dbmigrate: embedded migration %s: %w", e.Name(), err)
		}
		m := Migration{Version: uint(v), Name: sub[2]}
		if r := riverNameRE.FindStringSubmatch(sub[2]); r != nil {
			m.River, _ = strconv.Atoi(r[1])
		}
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b Migration) int { return int(a.Version) - int(b.Version) })
	return out, nil
}

// LatestAppVersion is the newest migration embedded in the binary.
func LatestAppVersion() (uint, error) {
	all, err := Migrations()
	if err != nil {
		return 0, err
	}
	if len(all) == 0 {
		return 0, errors.New("dbmigrate: no embedded migrations")
	}
	return all[len(all)-1].Version, nil
}

// riverLayout maps each River version held to its golang-migrate version,
// and gives the newest River version held.
func riverLayout(all []Migration) (byRiver map[int]uint, latest int) {
	byRiver = map[int]uint{}
	for _, m := range all {
		if m.River > 0 {
			byRiver[m.River] = m.Version
			latest = max(latest, m.River)
		}
	}
	return byRiver, latest
}

// Up applies every migration not applied yet, after renumbering a database
// of the old layout. Running it on an up-to-date database changes nothing.
func Up(ctx context.Context, pool *pgxpool.Pool, opts *Options) (Result, error) {
	return run(ctx, pool, opts, "up")
}

// Down removes every migration, newest first, after renumbering a database
// of the old layout: the database is left without any table of aftercommit
// or River but golang-migrate's schema_migrations. Running it on an empty
// database changes nothing.
func Down(ctx context.Context, pool *pgxpool.Pool, opts *Options) (Result, error) {
	return run(ctx, pool, opts, "down")
}

func run(ctx context.Context, pool *pgxpool.Pool, opts *Options, direction string) (Result, error) {
	var res Result
	if opts == nil {
		opts = &Options{}
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	schema, err := checkTarget(ctx, pool, opts)
	if err != nil {
		return res, err
	}
	all, err := Migrations()
	if err != nil {
		return res, err
	}
	res.Renumbered, err = prepare(ctx, pool, schema, all)
	if err != nil {
		return res, err
	}
	if res.Renumbered != nil {
		logger.InfoContext(ctx, "dbmigrate: renumbered a database of the old layout",
			slog.Uint64("from", uint64(res.Renumbered.From)), slog.Uint64("to", uint64(res.Renumbered.To)),
			slog.Int("river", res.Renumbered.River))
	}

	byVersion := make(map[uint]Migration, len(all))
	for _, m := range all {
		byVersion[m.Version] = m
	}
	// What ran is recorded by the driver golang-migrate calls, under its
	// lock: a concurrent runner's migrations are never counted here.
	onDone := func(v uint) {
		m := byVersion[v]
		res.Migrations = append(res.Migrations, m)
		logger.InfoContext(ctx, "dbmigrate: "+direction, slog.Uint64("version", uint64(m.Version)), slog.String("name", m.Name))
	}
	err = withMigrator(ctx, pool, schema, onDone, func(m *migrate.Migrate) error {
		var err error
		if direction == "up" {
			err = m.Up()
		} else {
			err = m.Down()
		}
		var dirty migrate.ErrDirty
		switch {
		case errors.As(err, &dirty):
			return dirtyError(uint(max(dirty.Version, 0)))
		case err != nil && !errors.Is(err, migrate.ErrNoChange):
			return fmt.Errorf("dbmigrate: migrating %s: %w", direction, err)
		}
		return nil
	})
	return res, err
}

// recorder is golang-migrate's database driver, telling which migration
// each clean SetVersion finished: going up, the version set; going down,
// the version it replaced.
type recorder struct {
	database.Driver
	current int
	done    func(uint)
}

func (r *recorder) Version() (int, bool, error) {
	v, dirty, err := r.Driver.Version()
	if err == nil && !dirty {
		r.current = v
	}
	return v, dirty, err
}

func (r *recorder) SetVersion(version int, dirty bool) error {
	if err := r.Driver.SetVersion(version, dirty); err != nil {
		return err
	}
	if dirty {
		return nil
	}
	switch {
	case version > r.current:
		r.done(uint(version))
	case version < r.current && r.current > 0:
		r.done(uint(r.current))
	}
	r.current = version
	return nil
}

// CurrentVersion reports what is applied and what this binary knows. It
// only reads, so a role with SELECT on the two bookkeeping tables can run
// it (cmd/worker's startup check does).
func CurrentVersion(ctx context.Context, pool *pgxpool.Pool, opts *Options) (Version, error) {
	var v Version
	if opts == nil {
		opts = &Options{}
	}
	schema, err := checkTarget(ctx, pool, opts)
	if err != nil {
		return v, err
	}
	all, err := Migrations()
	if err != nil {
		return v, err
	}
	_, v.RiverLatest = riverLayout(all)
	v.AppLatest = all[len(all)-1].Version
	st, err := readState(ctx, pool, schema)
	if err != nil {
		return v, err
	}
	v.River = st.river
	v.App, v.Dirty = st.version, st.dirty
	if !st.dirty {
		plan, _ := planRenumber(st, all)
		v.OldLayout = plan != nil
	}
	if st.dirty {
		return v, dirtyError(st.version)
	}
	return v, nil
}

func dirtyError(v uint) error {
	return fmt.Errorf("%w: version %d; fix it by hand, then force the version", ErrDirty, v)
}

// state is what the bookkeeping of a schema says.
type state struct {
	hasVersion bool // schema_migrations has a row
	version    uint
	dirty      bool
	river      int  // newest River version of river_migration (main line)
	pings      bool // aftercommit's first table exists
}

// stateSQL reads the bookkeeping of schema $1 without failing on a table
// that does not exist.
const stateSQL = `
SELECT to_regclass(format('%I.schema_migrations', $1::text)) IS NOT NULL,
       to_regclass(format('%I.river_migration', $1::text)) IS NOT NULL,
       EXISTS (SELECT 1 FROM pg_attribute
                WHERE attrelid = to_regclass(format('%I.river_migration', $1::text))
                  AND attname = 'line' AND NOT attisdropped),
       to_regclass(format('%I.pings', $1::text)) IS NOT NULL`

type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func readState(ctx context.Context, q querier, schema string) (state, error) {
	var (
		st                                 state
		hasMigrations, hasRiver, hasLineID bool
	)
	if err := q.QueryRow(ctx, stateSQL, schema).Scan(&hasMigrations, &hasRiver, &hasLineID, &st.pings); err != nil {
		return st, fmt.Errorf("dbmigrate: reading the migration versions: %w", err)
	}
	if hasMigrations {
		var (
			version int64
			dirty   bool
		)
		err := q.QueryRow(ctx, `SELECT version, dirty FROM `+pgx.Identifier{schema, "schema_migrations"}.Sanitize()+` LIMIT 1`).Scan(&version, &dirty)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
		case err != nil:
			return st, fmt.Errorf("dbmigrate: reading the migration version: %w", err)
		default:
			st.hasVersion, st.dirty = true, dirty
			// golang-migrate writes -1 for a failed down of the first
			// migration (dirty).
			st.version = uint(max(version, 0))
		}
	}
	if hasRiver {
		riverSQL := `SELECT coalesce(max(version), 0) FROM ` + pgx.Identifier{schema, "river_migration"}.Sanitize()
		if hasLineID {
			riverSQL += ` WHERE line = 'main'`
		}
		if err := q.QueryRow(ctx, riverSQL).Scan(&st.river); err != nil {
			return st, fmt.Errorf("dbmigrate: reading River's migration version: %w", err)
		}
	}
	return st, nil
}

// planRenumber decides whether st is a database of the old layout and, if
// so, its version in the new one. It returns nil for a database of the new
// layout (or an empty one).
func planRenumber(st state, all []Migration) (*Renumbering, error) {
	byRiver, _ := riverLayout(all)
	first, ok := LegacyVersion(1)
	if !ok {
		return nil, fmt.Errorf("%w: this binary has no migration %q", ErrOldLayout, legacyNames[0])
	}
	// The River versions laid before aftercommit's first migration: the old
	// migrator applied exactly those before aftercommit's files.
	riverBefore := 0
	for r, v := range byRiver {
		if v < first {
			riverBefore = max(riverBefore, r)
		}
	}
	switch {
	case !st.hasVersion && st.river == 0:
		return nil, nil // empty
	case !st.hasVersion:
		// River's tables by rivermigrate, none of aftercommit's files.
		if st.pings {
			return nil, fmt.Errorf("%w: aftercommit's tables exist but schema_migrations has no version", ErrOldLayout)
		}
		to, ok := byRiver[st.river]
		if !ok {
			return nil, fmt.Errorf("%w: river_migration records River version %d, which this binary does not hold", ErrOldLayout, st.river)
		}
		return &Renumbering{From: 0, To: to, River: st.river}, nil
	case st.version >= 1 && int(st.version) <= len(legacyNames) && st.version < first && st.pings:
		// aftercommit's tables exist at a version that, in the new layout,
		// is still one of River's: the old numbering.
		if st.river != riverBefore {
			return nil, fmt.Errorf("%w: schema_migrations is at %d (old numbering) but river_migration records River version %d, not %d: "+
				"apply River's migrations with the aftercommit that migrated this database first", ErrOldLayout, st.version, st.river, riverBefore)
		}
		to, _ := LegacyVersion(st.version)
		return &Renumbering{From: st.version, To: to, River: st.river}, nil
	}
	return nil, nil
}

// prepare checks the bookkeeping and moves a database of the old layout to
// the new numbering, in one transaction holding golang-migrate's advisory
// lock for the schema: a runner in progress (ours or golang-migrate's CLI)
// is waited for, so its transient dirty version is never mistaken for a
// failure, and a concurrent prepare sees the new version.
func prepare(ctx context.Context, pool *pgxpool.Pool, schema string, all []Migration) (*Renumbering, error) {
	var plan *Renumbering
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		var dbName string
		if err := tx.QueryRow(ctx, `SELECT current_database()`).Scan(&dbName); err != nil {
			return err
		}
		id, err := database.GenerateAdvisoryLockId(dbName, schema, migratepgx.DefaultMigrationsTable)
		if err != nil {
			return err
		}
		lockID, err := strconv.ParseInt(id, 10, 64)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockID); err != nil {
			return err
		}
		st, err := readState(ctx, tx, schema)
		if err != nil {
			return err
		}
		if st.dirty {
			return dirtyError(st.version)
		}
		plan, err = planRenumber(st, all)
		if plan == nil || err != nil {
			return err
		}
		table := pgx.Identifier{schema, migratepgx.DefaultMigrationsTable}.Sanitize()
		_, err = tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+table+` (version bigint not null primary key, dirty boolean not null)`)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM `+table); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO `+table+` (version, dirty) VALUES ($1, false)`, int64(plan.To))
		return err
	})
	switch {
	case err == nil:
		return plan, nil
	case errors.Is(err, ErrDirty), errors.Is(err, ErrOldLayout):
		return nil, err
	default:
		return nil, fmt.Errorf("dbmigrate: checking the migration versions: %w", err)
	}
}

func withMigrator(ctx context.Context, pool *pgxpool.Pool, schema string, done func(uint), fn func(*migrate.Migrate) error) error {
	db := stdlib.OpenDBFromPool(pool)
	// Closing only hands the connection back to pool; the migrations' outcome
	// is fn's error.
	defer func() { _ = db.Close() }()

	pgDrv, err := migratepgx.WithInstance(db, &migratepgx.Config{SchemaName: schema})
	if err != nil {
		return fmt.Errorf("dbmigrate: opening golang-migrate's pgx driver: %w", err)
	}
	drv := &recorder{Driver: pgDrv, current: -1, done: done}
	src, err := iofs.New(migrations.FS, ".")
	if err != nil {
		return fmt.Errorf("dbmigrate: reading embedded migrations: %w", err)
	}
	m, err := migrate.NewWithInstance("iofs", src, "pgx5", drv)
	if err != nil {
		return fmt.Errorf("dbmigrate: building golang-migrate: %w", err)
	}
	defer func() { _, _ = m.Close() }() // closes the embedded source and db, above

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

// checkTarget returns the schema that receives the tables: Options.Schema,
// which must be the connections' current schema, or that current schema.
func checkTarget(ctx context.Context, pool *pgxpool.Pool, opts *Options) (string, error) {
	var current *string
	if err := pool.QueryRow(ctx, `SELECT current_schema()`).Scan(&current); err != nil {
		return "", fmt.Errorf("dbmigrate: reading the current schema: %w", err)
	}
	if current == nil {
		return "", fmt.Errorf("%w: no schema of the search_path exists", ErrSearchPath)
	}
	if opts.Schema != "" && *current != opts.Schema {
		return "", fmt.Errorf("%w: Schema is %q, current_schema() is %q; set search_path on the pool", ErrSearchPath, opts.Schema, *current)
	}
	return *current, nil
}
