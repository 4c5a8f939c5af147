package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aftercommit/aftercommit/internal/dbmigrate"
)

// migrateHint tells how to fix a database that is not migrated.
const migrateHint = "run `go run ./cmd/aftercommit migrate up` first, with the same database URL and schema"

// riverJobExistsSQL names the current schema and tells whether River's job
// table is in it. The name is unqualified: the pool's search_path is the
// configured schema, the same one River and the migrations use.
const riverJobExistsSQL = `SELECT coalesce(current_schema(), ''), to_regclass('river_job') IS NOT NULL`

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
	// CurrentVersion cannot tell a schema without River's tables (River 0,
	// or no schema at all) from one whose River migrations are behind.
	if !hasTable {
		return fmt.Errorf("worker: %s has no River tables (river_job is missing): %s", where, migrateHint)
	}

	// A dirty database still reports every version; River's are checked
	// first.
	v, err := dbmigrate.CurrentVersion(ctx, pool, &dbmigrate.Options{Schema: schema})
	if err != nil && !errors.Is(err, dbmigrate.ErrDirty) {
		return fmt.Errorf("worker: %w", err)
	}
	if v.River < v.RiverLatest {
		return fmt.Errorf("worker: River's tables in %s are at migration %d, this worker needs %d: %s",
			where, v.River, v.RiverLatest, migrateHint)
	}
	if v.Dirty || errors.Is(err, dbmigrate.ErrDirty) {
		return fmt.Errorf("worker: aftercommit's migration %d in %s failed half way (dirty): repair it by hand, then force the version",
			v.App, where)
	}
	if v.App < v.AppLatest {
		return fmt.Errorf("worker: aftercommit's tables in %s are at migration %d, this worker needs %d: %s",
			where, v.App, v.AppLatest, migrateHint)
	}
	return nil
}
