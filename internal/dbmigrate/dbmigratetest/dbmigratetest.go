// Package dbmigratetest helps tests of the migrations: empty schemas of
// their own, a snapshot of a schema's catalog and of its rows, and a
// database migrated the old way (River by rivermigrate, aftercommit's files
// numbered 0001–0008, as at commit ad3d8b2). It is a test fixture;
// production code never imports it.
package dbmigratetest

import (
	"context"
	"embed"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/golang-migrate/migrate/v4"
	migratepgx "github.com/golang-migrate/migrate/v4/database/pgx/v5"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbtest"
)

// Target is an empty schema of a test's own.
type Target struct {
	// Name is the schema's name.
	Name string
	// Pool's connections have search_path set to Name.
	Pool *pgxpool.Pool
	// URL connects with search_path set to Name (postgres:// scheme).
	URL string
}

// EmptySchema creates the empty schema base.Name + "_" + suffix (so the
// harness' clean-up of old runs finds it) with a pool on it, and drops it
// when t ends.
func EmptySchema(ctx context.Context, t testing.TB, base *dbtest.Schema, suffix string) *Target {
	t.Helper()
	name := base.Name + "_" + suffix
	require.LessOrEqual(t, len(name), 63, "schema name too long")
	ident := pgx.Identifier{name}.Sanitize()
	_, err := base.Pool.Exec(ctx, "CREATE SCHEMA "+ident)
	require.NoError(t, err)
	u, err := url.Parse(dbtest.ServerURL(t)) //nolint:contextcheck // dbtest sets up the test server once per process (sync.Once) on its own context; no one test's ctx may bound that
	require.NoError(t, err, "these tests need the test database as a URL")
	q := u.Query()
	q.Set("search_path", name)
	u.RawQuery = q.Encode()
	cfg, err := pgxpool.ParseConfig(u.String())
	require.NoError(t, err)
	cfg.MaxConns = 4
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		pool.Close()
		_, err := base.Pool.Exec(context.WithoutCancel(ctx), "DROP SCHEMA IF EXISTS "+ident+" CASCADE")
		require.NoError(t, err)
	})
	return &Target{Name: name, Pool: pool, URL: u.String()}
}

// catalogSQL describes every object of schema $1, one line each, with
// names qualified (it runs with search_path = pg_catalog): relations with
// their kind, persistence, options and privileges; columns in order with
// type, nullability, default, identity, generation, collation and column
// privileges; constraints; indexes; view definitions; functions with their
// whole definition and privileges; triggers; enum labels and other types;
// sequences; every comment; and the rows migrations write (River's and
// golang-migrate's bookkeeping, the role grants).
const catalogSQL = `
WITH ns AS (SELECT oid FROM pg_namespace WHERE nspname = $1),
rel AS (SELECT c.* FROM pg_class c WHERE c.relnamespace = (SELECT oid FROM ns))
SELECT 'relation ' || relname || ' kind=' || relkind::text || ' persistence=' || relpersistence::text
       || ' options=' || coalesce(array_to_string(reloptions, ','), '') || ' acl=' || coalesce(relacl::text, '')
  FROM rel WHERE relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c')
UNION ALL
SELECT 'column ' || c.relname || '.' || a.attname
       || ' #' || row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum)
       || ' ' || format_type(a.atttypid, a.atttypmod) || ' notnull=' || a.attnotnull
       || ' default=' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
       || ' identity=' || a.attidentity::text || ' generated=' || a.attgenerated::text
       || ' collation=' || coalesce((SELECT collname FROM pg_collation WHERE oid = a.attcollation), '')
       || ' acl=' || coalesce(a.attacl::text, '')
  FROM rel c
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
UNION ALL
SELECT 'constraint ' || coalesce(c.relname, format_type(con.contypid, NULL)) || ' ' || con.conname || ' ' || pg_get_constraintdef(con.oid)
  FROM pg_constraint con LEFT JOIN pg_class c ON c.oid = con.conrelid
 WHERE con.connamespace = (SELECT oid FROM ns)
UNION ALL
SELECT 'index ' || i.relname || ' ' || pg_get_indexdef(i.oid) FROM rel i WHERE i.relkind IN ('i', 'I')
UNION ALL
SELECT 'view ' || relname || ' ' || pg_get_viewdef(oid) FROM rel WHERE relkind IN ('v', 'm')
UNION ALL
SELECT 'function ' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ') '
       || pg_get_functiondef(p.oid) || ' acl=' || coalesce(p.proacl::text, '')
  FROM pg_proc p WHERE p.pronamespace = (SELECT oid FROM ns) AND p.prokind IN ('f', 'p')
UNION ALL
SELECT 'trigger ' || t.tgname || ' ' || pg_get_triggerdef(t.oid) || ' enabled=' || t.tgenabled::text
  FROM pg_trigger t JOIN rel c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal
UNION ALL
SELECT 'type ' || t.typname || ' type=' || t.typtype::text
       || ' labels=' || coalesce((SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid), '')
       || ' base=' || CASE WHEN t.typbasetype <> 0 THEN format_type(t.typbasetype, t.typtypmod) ELSE '' END
       || ' acl=' || coalesce(t.typacl::text, '')
  FROM pg_type t
 WHERE t.typnamespace = (SELECT oid FROM ns) AND t.typelem = 0
   AND (t.typrelid = 0 OR EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind = 'c'))
UNION ALL
SELECT 'sequence ' || c.relname || ' ' || format_type(s.seqtypid, NULL) || ' start=' || s.seqstart
       || ' increment=' || s.seqincrement || ' min=' || s.seqmin || ' max=' || s.seqmax
       || ' cache=' || s.seqcache || ' cycle=' || s.seqcycle
       || ' owned_by=' || coalesce((SELECT d.refobjid::regclass::text || '.' || a.attname
                                      FROM pg_depend d
                                      JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                                     WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('a', 'i')
                                     LIMIT 1), '')
  FROM rel c JOIN pg_sequence s ON s.seqrelid = c.oid
UNION ALL
SELECT 'comment ' || pg_describe_object(d.classoid, d.objoid, d.objsubid) || ' = ' || d.description
  FROM (SELECT 'pg_class'::regclass AS classoid, oid FROM rel
        UNION ALL SELECT 'pg_proc'::regclass, oid FROM pg_proc WHERE pronamespace = (SELECT oid FROM ns)
        UNION ALL SELECT 'pg_type'::regclass, oid FROM pg_type WHERE typnamespace = (SELECT oid FROM ns)
        UNION ALL SELECT 'pg_trigger'::regclass, t.oid FROM pg_trigger t JOIN rel c ON c.oid = t.tgrelid
        UNION ALL SELECT 'pg_constraint'::regclass, oid FROM pg_constraint WHERE connamespace = (SELECT oid FROM ns)) o
  JOIN pg_description d ON d.objoid = o.oid AND d.classoid = o.classoid
ORDER BY 1`

// Catalog describes every object of schema (see catalogSQL), with the
// schema's own name replaced by SCHEMA so that two schemas compare, and the
// rows of the bookkeeping tables migrations write.
func Catalog(ctx context.Context, t testing.TB, pool *pgxpool.Pool, schema string) []string {
	t.Helper()
	var out []string
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		// jit off: the planner's estimates for catalog joins are huge, and
		// compiling the query would take seconds.
		if _, err := tx.Exec(ctx, `SET LOCAL search_path = pg_catalog; SET LOCAL jit = off`); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, catalogSQL, schema)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		for _, q := range []struct{ table, sql string }{
			{"river_migration", `SELECT 'river_migration ' || %s FROM %s ORDER BY 1`},
			{"schema_migrations", `SELECT 'schema_migrations ' || version || ' dirty=' || dirty FROM %[2]s`},
			{"aftercommit_role_grants", `SELECT 'aftercommit_role_grants ' || role_kind || ' ' || on_object || ': ' || privileges FROM %[2]s ORDER BY 1`},
		} {
			var exists, hasLine bool
			if err := tx.QueryRow(ctx, `SELECT to_regclass(format('%I.%I', $1::text, $2::text)) IS NOT NULL,
			       EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(format('%I.%I', $1::text, $2::text)) AND attname = 'line' AND NOT attisdropped)`,
				schema, q.table).Scan(&exists, &hasLine); err != nil {
				return err
			}
			if !exists {
				continue
			}
			cols := "'version=' || version"
			if hasLine {
				cols = "'line=' || line || ' version=' || version"
			}
			rows, err := tx.Query(ctx, fmt.Sprintf(q.sql, cols, pgx.Identifier{schema, q.table}.Sanitize()))
			if err != nil {
				return err
			}
			more, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				return err
			}
			out = append(out, more...)
		}
		return nil
	})
	require.NoError(t, err)
	for i, l := range out {
		out[i] = strings.ReplaceAll(l, schema, "SCHEMA")
	}
	return out
}

// Rows returns every row of every table of schema but golang-migrate's
// schema_migrations, as JSON in a stable order, and every sequence's
// position, keyed by table or sequence name. NULL columns are left out of
// a row's JSON, so a migration that adds a nullable column keeps the rows
// equal (a value that becomes NULL still shows).
func Rows(ctx context.Context, t testing.TB, pool *pgxpool.Pool, schema string) map[string]string {
	t.Helper()
	rows, err := pool.Query(ctx, `SELECT relname, relkind::text FROM pg_class
		WHERE relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = $1) AND relkind IN ('r', 'p', 'S')
		  AND relname <> 'schema_migrations' ORDER BY 1`, schema)
	require.NoError(t, err)
	type rel struct{ name, kind string }
	rels, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (rel, error) {
		var x rel
		return x, r.Scan(&x.name, &x.kind)
	})
	require.NoError(t, err)
	out := make(map[string]string, len(rels))
	for _, r := range rels {
		ident := pgx.Identifier{schema, r.name}.Sanitize()
		sql := `SELECT coalesce(jsonb_agg(jsonb_strip_nulls(to_jsonb(t)) ORDER BY jsonb_strip_nulls(to_jsonb(t))::text)::text, '[]') FROM ` + ident + ` t`
		if r.kind == "S" {
			sql = `SELECT last_value || ' ' || is_called FROM ` + ident
		}
		var v string
		require.NoError(t, pool.QueryRow(ctx, sql).Scan(&v), r.name)
		out[r.name] = v
	}
	return out
}

// ad3d8b2 holds aftercommit's migrations and grants.sql as they were at
// commit ad3d8b2, the last one before River's migrations joined the set.
//
//go:embed ad3d8b2/*.sql
var ad3d8b2 embed.FS

// OldLayoutVersion is the schema_migrations version a database migrated by
// aftercommit at ad3d8b2 holds.
const OldLayoutVersion = 8

// OldLayout migrates target the way aftercommit's `migrate up` did at
// ad3d8b2: River's migrations by River's migrator (rivermigrate,
// bookkeeping in river_migration), then aftercommit's eight files, numbered
// 0001–0008, by golang-migrate (schema_migrations at 8).
func OldLayout(ctx context.Context, t testing.TB, target *Target) {
	t.Helper()
	rm, err := rivermigrate.New(riverpgxv5.New(target.Pool), &rivermigrate.Config{Schema: target.Name})
	require.NoError(t, err)
	_, err = rm.Migrate(ctx, rivermigrate.DirectionUp, nil)
	require.NoError(t, err)

	db := stdlib.OpenDBFromPool(target.Pool)
	defer func() { _ = db.Close() }() // hands the connection back to target.Pool
	drv, err := migratepgx.WithInstance(db, &migratepgx.Config{SchemaName: target.Name})
	require.NoError(t, err)
	src, err := iofs.New(ad3d8b2, "ad3d8b2")
	require.NoError(t, err)
	m, err := migrate.NewWithInstance("iofs", src, "pgx5", drv)
	require.NoError(t, err)
	defer func() { _, _ = m.Close() }() // the embedded source and db, above
	require.NoError(t, m.Up())
	v, dirty, err := m.Version()
	require.NoError(t, err)
	require.Equal(t, uint(OldLayoutVersion), v)
	require.False(t, dirty)
}

// OldGrants runs grants.sql of ad3d8b2 on target for app and worker, as
// `aftercommit grant-roles` did then: privileges, and the kind guard
// trigger and function.
func OldGrants(ctx context.Context, t testing.TB, target *Target, app, worker string) {
	t.Helper()
	b, err := ad3d8b2.ReadFile("ad3d8b2/grants.sql")
	require.NoError(t, err)
	sql := strings.NewReplacer(
		`:"schema"`, pgx.Identifier{target.Name}.Sanitize(),
		`:"app_role"`, pgx.Identifier{app}.Sanitize(),
		`:"worker_role"`, pgx.Identifier{worker}.Sanitize(),
	).Replace(string(b))
	require.NoError(t, pgx.BeginFunc(ctx, target.Pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, sql)
		return err
	}))
}

// OldFiles returns the names and contents of aftercommit's migration files
// at ad3d8b2.
func OldFiles(t testing.TB) map[string]string {
	t.Helper()
	entries, err := ad3d8b2.ReadDir("ad3d8b2")
	require.NoError(t, err)
	out := map[string]string{}
	for _, e := range entries {
		if e.Name() == "grants.sql" {
			continue
		}
		b, err := ad3d8b2.ReadFile("ad3d8b2/" + e.Name())
		require.NoError(t, err)
		out[e.Name()] = string(b)
	}
	return out
}

// fillSQL puts rows in every table of aftercommit and River: domain rows
// of each domain, events, a lease, a paused queue, a leader, and jobs in
// every state River has, with errors, metadata, tags and a unique key.
const fillSQL = `
INSERT INTO pings (note, pinged_at, ping_count) VALUES ('one', now(), 1), ('two', NULL, 0);
INSERT INTO users (name, email, donations_count) VALUES ('Ada', 'ada@example.com', 1), ('Bob', 'bob@example.com', 0);
INSERT INTO fundraisers (name, donations_count, donations_total_cents) VALUES ('Roof', 1, 2500);
INSERT INTO emails (user_id, fundraiser_id, opens, clicks, donated) VALUES (1, 1, 3, 1, true), (2, 1, 0, 0, false);
INSERT INTO donations (user_id, fundraiser_id, email_id, donor_email, amount_cents, currency, status, note)
VALUES (1, 1, 1, 'ada@example.com', 2500, 'EUR', 'succeeded', 'for the roof'), (NULL, 1, NULL, 'x@example.com', 100, 'USD', 'failed', '');
INSERT INTO email_counter_deltas (email_id, opens, clicks) VALUES (2, 1, 0);
INSERT INTO products (sku, stock, claim_strategy) VALUES ('mug', 10, 'single_row'), ('tee', 4, 'buckets');
INSERT INTO product_buckets (product_id, bucket, stock, claimed) VALUES (2, 0, 2, 1), (2, 1, 2, 0);
INSERT INTO checkouts (product_id, quantity, state, expires_at) VALUES (1, 2, 'open', now() + interval '10 minutes'), (2, 1, 'paid', now());
INSERT INTO inventory_claims (checkout_id, product_id, quantity, expires_at, bucket) VALUES (1, 1, 2, now() + interval '10 minutes', NULL), (2, 2, 1, 'infinity', 0);
INSERT INTO cars (name) VALUES ('Clio');
INSERT INTO car_users (car_id, user_id) VALUES (1, 1), (1, 2);
INSERT INTO car_reports (car_id, users_count, last_user_added_at) VALUES (1, 2, now());
INSERT INTO fundraiser_daily_totals (fundraiser_id, day, donations_count, total_cents) VALUES (1, current_date, 1, 2500);
INSERT INTO outbox_events (topic, payload) VALUES ('donation.created', '{"donation_id": 1}'), ('donation.created', '{"donation_id": 2}');
INSERT INTO river_job (state, attempt, max_attempts, attempted_at, finalized_at, scheduled_at, priority, args, attempted_by, errors, kind, metadata, queue, tags, unique_key, unique_states)
VALUES ('available', 0, 25, NULL, NULL, now(), 1, '{"donation_id": 1}', NULL, NULL, 'donations.update_email_donation', '{}', 'default', '{}', NULL, NULL),
       ('scheduled', 0, 25, NULL, NULL, now() + interval '1 hour', 2, '{"id": 2}', NULL, NULL, 'ping', '{}', 'default', '{a,b}', NULL, NULL),
       ('running', 1, 25, now(), NULL, now(), 1, '{"id": 1}', '{worker-1}', NULL, 'ping', '{"k": "v"}', 'default', '{}', NULL, NULL),
       ('retryable', 1, 25, now(), NULL, now() + interval '1 minute', 1, '{"id": 3}', '{worker-1}',
        ARRAY['{"at": "2026-01-01T00:00:00Z", "attempt": 1, "error": "boom", "trace": ""}'::jsonb], 'ping', '{}', 'default', '{}', NULL, NULL),
       ('completed', 1, 25, now(), now(), now(), 1, '{"fundraiser_id": 1}', '{worker-2}', NULL, 'donations.recount_fundraiser', '{}', 'donations', '{}',
        '\x0102'::bytea, B'11110101'),
       ('discarded', 25, 25, now(), now(), now(), 4, '{"id": 4}', '{worker-2}',
        ARRAY['{"at": "2026-01-01T00:00:00Z", "attempt": 25, "error": "gone", "trace": "t"}'::jsonb], 'ping', '{}', 'default', '{}', NULL, NULL),
       ('cancelled', 1, 25, now(), now(), now(), 1, '{"id": 5}', '{worker-2}', NULL, 'ping', '{}', 'default', '{}', NULL, NULL),
       ('pending', 0, 25, NULL, NULL, now(), 1, '{"id": 6}', NULL, NULL, 'ping', '{}', 'default', '{}', NULL, NULL);
INSERT INTO job_locks (namespace, lock_key, slot, holder_job_id, expires_at) VALUES ('kind', 'donations.recount_fundraiser:1', 0, 3, now() + interval '1 minute');
INSERT INTO river_queue (name, paused_at) VALUES ('default', NULL), ('donations', now());
INSERT INTO river_leader (elected_at, expires_at, leader_id) VALUES (now(), now() + interval '10 seconds', 'worker-1');
`

// Fill puts rows in every table of aftercommit and River in target (a
// schema migrated to today's tables, in the old layout or the new).
func Fill(ctx context.Context, t testing.TB, target *Target) {
	t.Helper()
	require.NoError(t, pgx.BeginFunc(ctx, target.Pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, fillSQL)
		return err
	}))
}
