package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aftercommit/aftercommit/internal/dbconn"
	"github.com/aftercommit/aftercommit/internal/dbmigrate"
)

func printMigrateUsage(w io.Writer, printFlags func(io.Writer)) {
	fmt.Fprint(w, `Usage:
  aftercommit migrate up [flags]
  aftercommit migrate down --yes [flags]
  aftercommit migrate version [flags]

Actions:
  up       apply every migration of migrations/ not applied yet, in order:
           River's (0001-0008, River's own 1-8), then aftercommit's; a
           database migrated before River's migrations joined the set is
           renumbered first, keeping every row
  down     remove every migration: drops every table of River and aftercommit,
           with all their rows; needs --yes
  version  show the applied and the latest version, of the whole set and of
           River's own bookkeeping (river_migration)

Up on an up-to-date database, or down on an empty one, changes nothing. The
files are plain golang-migrate files: 'migrate -path migrations -database
URL up' (golang-migrate's CLI) builds the same schema.

Flags:
`)
	printFlags(w)
}

func runMigrate(ctx context.Context, args []string, e *env) int {
	c := newFrame("migrate", e, printMigrateUsage)
	fs := c.fs
	yes := fs.Bool("yes", false, "confirm down, which drops every table of River and aftercommit with their rows")

	positional, code, ok := c.parse(args, false)
	if !ok {
		return code
	}
	switch {
	case len(positional) == 0:
		return c.usageError("missing action: up, down or version")
	case len(positional) > 1:
		return c.usageError(fmt.Sprintf("too many arguments: %s", strings.Join(positional, " ")))
	}
	action := positional[0]
	switch action {
	case "up", "down", "version":
	default:
		return c.usageError(fmt.Sprintf("unknown action %q: want up, down or version", action))
	}
	if action == "down" && !*yes {
		fmt.Fprintln(e.stderr, "aftercommit migrate: refusing to run down without --yes: it drops every table of River and aftercommit, with all their rows; run 'aftercommit migrate down --yes' to do it")
		return exitUsage
	}

	pool, code, ok := c.connect(ctx, 0)
	if !ok {
		return code
	}
	defer pool.Close()

	opts := &dbmigrate.Options{Schema: c.db.schema}
	switch action {
	case "up":
		res, err := dbmigrate.Up(ctx, pool, opts)
		return reportResult(ctx, e, "up", res, err)
	case "down":
		res, err := dbmigrate.Down(ctx, pool, opts)
		return reportResult(ctx, e, "down", res, err)
	default:
		return migrateVersion(ctx, e, pool, opts)
	}
}

// checkSchema makes sure the schema that will receive the tables exists, so
// a typo in --schema is reported as such rather than as a failed CREATE.
func checkSchema(ctx context.Context, pool *pgxpool.Pool, schema string) error {
	var current *string
	var searchPath, database string
	err := pool.QueryRow(ctx, `SELECT current_schema(), current_setting('search_path'), current_database()`).
		Scan(&current, &searchPath, &database)
	if err != nil {
		return fmt.Errorf("aftercommit: reading the connection's schema: %s", dbconn.OneLine(err.Error()))
	}
	if current != nil {
		return nil
	}
	if schema != "" {
		return fmt.Errorf("aftercommit: schema %q does not exist in database %q: create it (CREATE SCHEMA %s) or change --schema / AFTERCOMMIT_SCHEMA",
			schema, database, pgx.Identifier{schema}.Sanitize())
	}
	return fmt.Errorf("aftercommit: no schema of the search_path (%s) exists in database %q: create one or choose one with --schema / AFTERCOMMIT_SCHEMA",
		searchPath, database)
}

// reportResult prints what an up or down changed (also when it stopped half
// way) and the error, if any, and returns the exit code.
func reportResult(ctx context.Context, e *env, action string, res dbmigrate.Result, err error) int {
	if err == nil || res.Changed() {
		fmt.Fprintln(e.stdout, describeResult(action, res))
	}
	if err != nil {
		return reportError(ctx, e, fmt.Errorf("aftercommit migrate %s: %w", action, err))
	}
	if ctx.Err() != nil {
		// golang-migrate stops between migrations without an error.
		return reportError(ctx, e, errInterrupted)
	}
	return exitOK
}

// describeResult is the one line `migrate up` or `migrate down` prints, e.g.
// "applied 0001-0019 (River 1-8, aftercommit 0009-0019)".
func describeResult(action string, res dbmigrate.Result) string {
	verb, none := "applied", "already up to date"
	if action == "down" {
		verb, none = "removed", "nothing to remove"
	}
	var parts []string
	if r := res.Renumbered; r != nil {
		from := strconv.FormatUint(uint64(r.From), 10)
		if r.From == 0 {
			from = "none"
		}
		parts = append(parts, fmt.Sprintf("renumbered the old layout: schema_migrations %s is now %04d (River %d applied by rivermigrate)", from, r.To, r.River))
	}
	if len(res.Migrations) == 0 {
		if len(parts) == 0 {
			return none
		}
		if action == "down" {
			return strings.Join(append(parts, "nothing to remove"), "; ")
		}
		return strings.Join(append(parts, "nothing else to apply"), "; ")
	}
	var all, river, app []int
	for _, m := range res.Migrations {
		all = append(all, int(m.Version))
		if m.River > 0 {
			river = append(river, m.River)
		} else {
			app = append(app, int(m.Version))
		}
	}
	var which []string
	if action == "down" {
		which = append(which, "aftercommit "+ranges(app, "%04d"), "River "+ranges(river, "%d"))
	} else {
		which = append(which, "River "+ranges(river, "%d"), "aftercommit "+ranges(app, "%04d"))
	}
	which = slices.DeleteFunc(which, func(s string) bool { return strings.HasSuffix(s, " ") })
	parts = append(parts, fmt.Sprintf("%s %s (%s)", verb, ranges(all, "%04d"), strings.Join(which, ", ")))
	return strings.Join(parts, "; ")
}

// ranges writes vs (ascending or descending) as runs of consecutive
// numbers: [1 2 3 5] → "1-3,5".
func ranges(vs []int, format string) string {
	var out []string
	for i := 0; i < len(vs); {
		j := i
		for j+1 < len(vs) && (vs[j+1]-vs[j] == 1 || vs[j+1]-vs[j] == -1) && (j == i || vs[j+1]-vs[j] == vs[j]-vs[j-1]) {
			j++
		}
		if j == i {
			out = append(out, fmt.Sprintf(format, vs[i]))
		} else {
			out = append(out, fmt.Sprintf(format+"-"+format, vs[i], vs[j]))
		}
		i = j + 1
	}
	return strings.Join(out, ",")
}

func migrateVersion(ctx context.Context, e *env, pool *pgxpool.Pool, opts *dbmigrate.Options) int {
	v, err := dbmigrate.CurrentVersion(ctx, pool, opts)
	if err != nil && !errors.Is(err, dbmigrate.ErrDirty) {
		return reportError(ctx, e, fmt.Errorf("aftercommit migrate version: %w", err))
	}
	state := ahead(v.App > v.AppLatest)
	if v.Dirty {
		state += " dirty"
	}
	if v.OldLayout {
		to, _ := dbmigrate.LegacyVersion(v.App)
		state += fmt.Sprintf(", old layout: 'aftercommit migrate up' renumbers it to %d (golang-migrate's CLI: 'migrate force %d' first)", to, to)
	}
	fmt.Fprintf(e.stdout, "migrations: %d (latest %d)%s\n", v.App, v.AppLatest, state)
	fmt.Fprintf(e.stdout, "river: %d (latest %d)%s\n", v.River, v.RiverLatest, ahead(v.River > v.RiverLatest))
	if err != nil {
		return reportError(ctx, e, err)
	}
	return exitOK
}

func ahead(b bool) string {
	if b {
		return " newer than this binary"
	}
	return ""
}

// reportError prints err as one line on stderr and returns the exit code.
func reportError(ctx context.Context, e *env, err error) int {
	switch {
	case errors.Is(err, errInterrupted), errors.Is(err, dbconn.ErrInterrupted), ctx.Err() != nil:
		fmt.Fprintln(e.stderr, errInterrupted.Error())
		return exitInterrupted
	case errors.Is(err, dbmigrate.ErrDirty):
		fmt.Fprintln(e.stderr, "aftercommit: the database is dirty: a migration failed half way (see 'aftercommit migrate version'); "+
			"finish or undo it by hand, then record the version really applied: UPDATE schema_migrations SET version = <N>, dirty = false (or golang-migrate's 'migrate force <N>')")
		return exitFailure
	}
	msg := dbconn.OneLine(err.Error())
	if !strings.HasPrefix(msg, "aftercommit") {
		msg = "aftercommit: " + msg
	}
	fmt.Fprintln(e.stderr, msg)
	return exitFailure
}
