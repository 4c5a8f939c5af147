package aftercommit_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit"
	"github.com/aftercommit/aftercommit/internal/dbtest"
	"github.com/aftercommit/aftercommit/inventory"
	"github.com/aftercommit/aftercommit/jobs"
)

// everyKind is what Register declares, sorted.
var everyKind = []string{
	"aftercommit.ping",
	"aftercommit.prune_events",
	"donations.fold_email_counters",
	"donations.fold_fundraiser_counters",
	"donations.fold_user_counters",
	"donations.reconcile_counters",
	"donations.recount_fundraiser",
	"donations.recount_user",
	"donations.update_email_donation",
	"inventory.complete_checkout",
	"inventory.expire_checkout",
	"inventory.prune_expired_claims",
	"reporting.car_report",
	"reporting.car_users_imported",
	"reporting.create_car_users_in_bulk",
	"reporting.rollup_fundraiser_day",
}

func TestRegister(t *testing.T) {
	t.Parallel()

	t.Run("EveryKind", func(t *testing.T) {
		t.Parallel()
		reg := jobs.NewRegistry()
		aftercommit.Register(reg, nil, nil)
		require.NoError(t, reg.Err())
		require.Equal(t, everyKind, reg.Kinds())
		require.Equal(t, []string{
			"default", "donations_counters", "donations_default", "inventory_checkout", "inventory_maintenance",
			"reporting_bulk", "reporting_reports",
		}, reg.QueueNames())
		require.Equal(t, []string{"donation.created", "import.finished"}, reg.TopicNames())
	})

	t.Run("BesideTheAppsKindsBeforeOrAfter", func(t *testing.T) {
		t.Parallel()
		want := slices.Insert(slices.Clone(everyKind), 2, "billing.send_invoice") // sorted

		before := jobs.NewRegistry()
		jobs.AddWorker(before, before.AddQueue("billing", "default", jobs.WeightNormal, nil), &sendInvoiceWorker{})
		aftercommit.Register(before, nil, nil)
		require.NoError(t, before.Err())
		require.Equal(t, want, before.Kinds())

		after := jobs.NewRegistry()
		aftercommit.Register(after, nil, &aftercommit.Config{})
		jobs.AddWorker(after, after.AddQueue("billing", "default", jobs.WeightNormal, nil), &sendInvoiceWorker{})
		require.NoError(t, after.Err())
		require.Equal(t, want, after.Kinds())
	})

	t.Run("ClashesNameTheCulprit", func(t *testing.T) {
		t.Parallel()
		reg := jobs.NewRegistry()
		reg.AddQueue("inventory", "checkout", jobs.WeightHigh, nil) // the app took a queue of a domain
		jobs.RegisterPing(reg, nil)                                 // and registered a kind twice
		aftercommit.Register(reg, nil, nil)
		err := reg.Err()
		require.ErrorIs(t, err, jobs.ErrRegistry)
		require.Equal(t, `jobs: registry: kind "aftercommit.ping": worker for kind "aftercommit.ping" is already registered`+"\n"+
			`jobs: registry: queue "inventory_checkout" declared twice`, err.Error())
	})

	t.Run("ConfigReachesTheEventPruner", func(t *testing.T) {
		t.Parallel()
		reg := jobs.NewRegistry()
		aftercommit.Register(reg, nil, &aftercommit.Config{EventPruner: &jobs.EventPrunerConfig{Retention: -time.Hour}})
		require.EqualError(t, reg.Err(), "jobs: registry: events pruner: Retention, Interval and BatchSize must not be negative")
	})

	t.Run("ConfigReachesInventory", func(t *testing.T) {
		t.Parallel()
		require.PanicsWithError(t, fmt.Sprintf("inventory: Config.CompletionConcurrency must be in 1…%d, got -1", jobs.LockPermitsMax), func() {
			aftercommit.Register(jobs.NewRegistry(), nil, &aftercommit.Config{Inventory: &inventory.Config{CompletionConcurrency: -1}})
		})
	})
}

func TestMigrate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	// A schema of its own, empty: dbtest's schemas come migrated already.
	schema := fmt.Sprintf("act_root_migrate_%d", time.Now().UnixNano())
	cfg, err := pgxpool.ParseConfig(dbtest.ServerURL(t))
	require.NoError(t, err)
	cfg.MaxConns = 2
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		_, err := pool.Exec(context.WithoutCancel(ctx), "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE")
		require.NoError(t, err)
		pool.Close()
	})

	// The schema does not exist yet: there is nothing to migrate into.
	err = aftercommit.Migrate(ctx, pool, nil)
	require.EqualError(t, err, "aftercommit: dbmigrate: Options.Schema is not the current schema of the pool's connections: no schema of the search_path exists")

	_, err = pool.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize())
	require.NoError(t, err)
	require.NoError(t, aftercommit.Migrate(ctx, pool, &aftercommit.MigrateOpts{Schema: schema}))
	require.NoError(t, aftercommit.Migrate(ctx, pool, nil), "a second run changes nothing")

	var tables []string
	rows, err := pool.Query(ctx, `
		SELECT table_name::text FROM information_schema.tables
		 WHERE table_schema = $1 AND table_name IN ('river_job', 'pings', 'outbox_events', 'donations', 'schema_migrations')
		 ORDER BY 1`, schema)
	require.NoError(t, err)
	tables, err = pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Equal(t, []string{"donations", "outbox_events", "pings", "river_job", "schema_migrations"}, tables)
}
