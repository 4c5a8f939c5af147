// Package aftercommit is the front door for an application that embeds
// aftercommit: one call registers every job kind aftercommit ships — the
// ping, the events pruner and the donations, inventory and reporting
// domains — on a jobs.Registry the application made, beside its own kinds;
// another applies aftercommit's migrations to the application's database.
//
// cmd/worker, cmd/aftercommit and an embedding application all build their
// registry with Register, so every process that may lead (River runs the
// rescuer and the periodic jobs on whichever process is leader) knows every
// kind:
//
//	reg := jobs.NewRegistry()
//	jobs.AddWorker(reg, river.QueueDefault, &SendInvoiceWorker{pool: pool}) // the app's own kinds
//	aftercommit.Register(reg, pool, nil)                                   // every kind of aftercommit
//	client, err := jobs.NewClient(pool, reg, nil)                          // insert-only; checks reg.Err()
//	ob, err := jobs.NewOutbox(pool, client, reg, nil)
//
// examples/embed is a complete, tested application built this way: its own
// pool, table, kind and HTTP handler, enqueueing with ob.InTx in its
// business transaction, and a worker in the same process.
package aftercommit

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/aftercommit/aftercommit/donations"
	"github.com/aftercommit/aftercommit/internal/dbmigrate"
	"github.com/aftercommit/aftercommit/inventory"
	"github.com/aftercommit/aftercommit/jobs"
	"github.com/aftercommit/aftercommit/reporting"
)

// Config tunes what Register registers. A nil *Config takes every default.
type Config struct {
	// EventPruner tunes the periodic job that deletes published events past
	// their retention (jobs.RegisterEventPruner).
	//
	// Defaults to nil: jobs.EventPrunerConfig's defaults (events kept 7
	// days, pruned every hour).
	EventPruner *jobs.EventPrunerConfig

	// Inventory tunes the inventory domain: claim lifetimes, lock and
	// statement timeouts, the checkout completion semaphore, the claim
	// pruner (inventory.Register). Give inventory.NewService the
	// same Config.
	//
	// Defaults to nil: inventory.Config's defaults.
	Inventory *inventory.Config

	// CounterReconciler tunes the periodic check and repair of the
	// donations' counter caches (donations.RegisterReconciler): how often,
	// how many rows a run, and a hook for each drift found.
	//
	// Defaults to nil: donations.ReconcileConfig's defaults (100
	// fundraisers and 100 users a minute).
	CounterReconciler *donations.ReconcileConfig
}

// Register declares every queue, topic, subscription, worker and periodic
// job of aftercommit on reg: the aftercommit.ping kind, the events pruner,
// and the donations, inventory and reporting domains. The application
// registers its own kinds on the same reg, before or after; a kind or a
// queue declared twice is reported by reg.Err (and by jobs.NewClient, which
// refuses such a registry), naming the culprit.
//
// pool is the database the workers read and write; it may be nil for a
// registry that is only inspected (its kinds, queues and args types) and
// never given to a client that works jobs. cfg may be nil.
//
// Register panics when cfg.Inventory or cfg.CounterReconciler is out of
// range (a negative duration, a concurrency above jobs.LockPermitsMax): a
// programming error, found at startup.
func Register(reg *jobs.Registry, pool *pgxpool.Pool, cfg *Config) {
	if cfg == nil {
		cfg = &Config{}
	}
	jobs.RegisterPing(reg, pool)
	jobs.RegisterEventPruner(reg, pool, cfg.EventPruner)
	donations.Register(reg, pool)
	donations.RegisterReconciler(reg, pool, cfg.CounterReconciler)
	inventory.Register(reg, pool, cfg.Inventory)
	reporting.Register(reg, pool)
}

// MigrateOpts are the optional settings of Migrate. A nil *MigrateOpts takes
// every default.
type MigrateOpts struct {
	// Schema is the schema to migrate; the pool's connections must have it
	// first in their search_path, because aftercommit's tables are named
	// unqualified. Give jobs.ClientConfig.Schema the same.
	//
	// Defaults to empty: the current schema of the pool's connections.
	Schema string

	// Logger receives a line for each migration applied.
	//
	// Defaults to nil: nothing is logged.
	Logger *slog.Logger
}

// Migrate applies every migration of River and of aftercommit that pool's
// database does not have yet — what `aftercommit migrate up` does — and
// changes nothing on a database that is up to date. An application that
// migrates at startup calls it before building its River client; its own
// tables may come after, in its own migrations.
func Migrate(ctx context.Context, pool *pgxpool.Pool, opts *MigrateOpts) error {
	if opts == nil {
		opts = &MigrateOpts{}
	}
	if _, err := dbmigrate.Up(ctx, pool, &dbmigrate.Options{Schema: opts.Schema, Logger: opts.Logger}); err != nil {
		return fmt.Errorf("aftercommit: %w", err)
	}
	return nil
}
