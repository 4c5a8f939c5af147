package dbtest

import (
	"context"
	"fmt"
	"io/fs"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aftercommit/aftercommit/internal/dbmigrate"
	"github.com/aftercommit/aftercommit/migrations"
)

// addValue finds a migration that adds an enum value: Postgres refuses to
// use the new value in the transaction that added it, so the next
// migration starts a new batch.
var addValue = regexp.MustCompile(`(?im)^\s*ALTER\s+TYPE\s+.*\sADD\s+VALUE\s`)

// migrate applies every migration to schema, which the pool's search_path
// names, as golang-migrate would, in a few round trips. golang-migrate
// runs each file in its own transaction and records each version twice
// (dirty, then clean) with a TRUNCATE and an INSERT of schema_migrations,
// under an advisory lock: about a hundred statements around the twenty
// files, which cost more of the server's time than the files themselves.
// Here the files run back to back, batched into as few implicit
// transactions as the files allow, and the final version is recorded once.
// TestUpDownUp/DownThenUpGivesTheSameSchema (package dbmigrate) checks
// that the result is the schema golang-migrate builds: every object of the
// catalog, and the bookkeeping rows of River and golang-migrate.
func migrate(ctx context.Context, pool *pgxpool.Pool, schema string) error {
	all, err := dbmigrate.Migrations()
	if err != nil {
		return err
	}
	if len(all) == 0 {
		return fmt.Errorf("no migrations embedded")
	}
	var batches []string
	var batch strings.Builder
	for _, m := range all {
		sql, err := fs.ReadFile(migrations.FS, fmt.Sprintf("%04d_%s.up.sql", m.Version, m.Name))
		if err != nil {
			return fmt.Errorf("reading migration %d: %w", m.Version, err)
		}
		batch.Write(sql)
		batch.WriteString("\n;\n")
		if addValue.Match(sql) {
			batches = append(batches, batch.String())
			batch.Reset()
		}
	}
	// golang-migrate's pgx/v5 driver creates its table so, in the schema it
	// is configured with.
	table := pgx.Identifier{schema, "schema_migrations"}.Sanitize()
	fmt.Fprintf(&batch, "CREATE TABLE IF NOT EXISTS %s (version bigint not null primary key, dirty boolean not null);\n", table)
	fmt.Fprintf(&batch, "INSERT INTO %s (version, dirty) VALUES (%d, false);\n", table, all[len(all)-1].Version)
	batches = append(batches, batch.String())

	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	for i, b := range batches {
		// No arguments: the simple protocol, which runs the statements in
		// one implicit transaction.
		if _, err := conn.Exec(ctx, b); err != nil {
			return fmt.Errorf("migration batch %d of %d: %w", i+1, len(batches), err)
		}
	}
	return nil
}
