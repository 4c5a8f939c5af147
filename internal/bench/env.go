package bench

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aftercommit/aftercommit/internal/dbconn"
	"github.com/aftercommit/aftercommit/internal/dbmigrate"
)

// maxConns sizes a scenario's pool: the loads' goroutines, a worker's
// fetches and completions, River's services.
const maxConns = 40

// Env is a scenario's scratch schema on the server, migrated, with a pool
// whose search_path is that schema.
type Env struct {
	// Pool reaches the schema.
	Pool *pgxpool.Pool
	// Schema is the scratch schema's name.
	Schema string
	// Scale and Duration are the run's.
	Scale    float64
	Duration time.Duration
	// Logger discards River's logs.
	Logger *slog.Logger

	admin  *pgxpool.Pool
	server string
	// url is the run's database URL, for pgbench (the schema goes in
	// PGOPTIONS).
	url string
}

// runSeq numbers the runs of this process.
var runSeq atomic.Int64

// newRunID names one Run or Soak: the process and the run's number in it,
// so that runs going on at once in one process (tests in parallel) never
// share, drop or count each other's scratch schemas.
func newRunID() string {
	return fmt.Sprintf("%d_%d", os.Getpid(), runSeq.Add(1))
}

// SchemaPrefix is how the scratch schemas of the run runID begin; a
// scenario's schema is SchemaPrefix + its name + "_" + runID.
const SchemaPrefix = "aftercommit_bench_"

// connectAdmin opens a pool of two connections to url, for a run's own
// statements (schemas, databases).
func connectAdmin(ctx context.Context, url string) (*pgxpool.Pool, error) {
	base, err := dbconn.ParseConfig(url, &dbconn.Opts{Component: "bench", Source: "--database-url / DATABASE_URL", MaxConns: 2})
	if err != nil {
		return nil, err
	}
	return dbconn.Connect(ctx, base, "bench")
}

// newEnv creates, migrates and connects the scratch schema of scenario for
// the run runID.
func newEnv(ctx context.Context, cfg Config, runID, scenario string) (*Env, error) {
	admin, err := connectAdmin(ctx, cfg.DatabaseURL)
	if err != nil {
		return nil, err
	}
	schema := SchemaPrefix + strings.ReplaceAll(scenario, "-", "_") + "_" + runID
	ident := pgx.Identifier{schema}.Sanitize()
	if _, err := admin.Exec(ctx, "DROP SCHEMA IF EXISTS "+ident+" CASCADE; CREATE SCHEMA "+ident); err != nil {
		admin.Close()
		return nil, fmt.Errorf("creating schema %s: %w", schema, err)
	}
	env := &Env{Schema: schema, Scale: cfg.Scale, Duration: cfg.Duration, admin: admin, url: cfg.DatabaseURL,
		Logger: slog.New(slog.DiscardHandler)}
	var version string
	if err := admin.QueryRow(ctx, `SELECT current_setting('server_version')`).Scan(&version); err == nil {
		env.server = "PostgreSQL " + version
	}

	pcfg, err := dbconn.ParseConfig(cfg.DatabaseURL, &dbconn.Opts{Component: "bench", Schema: schema, MaxConns: maxConns})
	if err != nil {
		env.close(ctx)
		return nil, err
	}
	if env.Pool, err = dbconn.Connect(ctx, pcfg, "bench"); err != nil {
		env.close(ctx)
		return nil, err
	}
	if _, err := dbmigrate.Up(ctx, env.Pool, &dbmigrate.Options{Schema: schema}); err != nil {
		env.close(ctx)
		return nil, fmt.Errorf("migrating %s: %w", schema, err)
	}
	return env, nil
}

// close drops the scratch schema, also after ctx ended.
func (e *Env) close(ctx context.Context) {
	if e.Pool != nil {
		e.Pool.Close()
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	_, _ = e.admin.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{e.Schema}.Sanitize()+" CASCADE")
	e.admin.Close()
}

// Truncate empties tables of the schema (and restarts their sequences).
func (e *Env) Truncate(ctx context.Context, tables ...string) error {
	_, err := e.Pool.Exec(ctx, "TRUNCATE "+strings.Join(tables, ", ")+" RESTART IDENTITY")
	return err
}
