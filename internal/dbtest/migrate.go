package dbtest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"slices"
	"strings"
	"sync"

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
	set, err := loadMigrations()
	if err != nil {
		return err
	}
	batches := slices.Clone(set.batches)
	// golang-migrate's pgx/v5 driver creates its table so, in the schema it
	// is configured with.
	table := pgx.Identifier{schema, "schema_migrations"}.Sanitize()
	batches[len(batches)-1] += fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s (version bigint not null primary key, dirty boolean not null);\n", table) +
		fmt.Sprintf("INSERT INTO %s (version, dirty) VALUES (%d, false);\n", table, set.last)

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

// migrationSet is the embedded migrations, read once: the batches migrate
// runs (the last one without its schema_migrations statements), the last
// version and a hash of every file.
type migrationSet struct {
	batches []string
	last    uint
	hash    string
}

// harnessLayout goes into the hash of the migrations, which names the pool
// schemas: change it when a pool schema of the same migrations would no
// longer do (what migrate writes besides the files, say).
const harnessLayout = "dbtest pool schemas v1"

var loadMigrations = sync.OnceValues(func() (migrationSet, error) {
	all, err := dbmigrate.Migrations()
	if err != nil {
		return migrationSet{}, err
	}
	if len(all) == 0 {
		return migrationSet{}, errors.New("dbtest: no migrations embedded")
	}
	set := migrationSet{last: all[len(all)-1].Version}
	sum := sha256.New()
	sum.Write([]byte(harnessLayout))
	var batch strings.Builder
	for _, m := range all {
		sql, err := fs.ReadFile(migrations.FS, m.UpFile())
		if err != nil {
			return migrationSet{}, fmt.Errorf("dbtest: reading migration %d: %w", m.Version, err)
		}
		sum.Write(fmt.Appendf(nil, "\x00%d\x00", m.Version))
		sum.Write(sql)
		batch.Write(sql)
		batch.WriteString("\n;\n")
		if addValue.Match(sql) {
			set.batches = append(set.batches, batch.String())
			batch.Reset()
		}
	}
	set.batches = append(set.batches, batch.String())
	set.hash = hex.EncodeToString(sum.Sum(nil))[:12]
	return set, nil
})

// migrationsHash names the migrations in pool schema names: 12 hex digits
// of a hash of every migration file.
func migrationsHash() (string, error) {
	set, err := loadMigrations()
	return set.hash, err
}
