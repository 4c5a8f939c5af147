package dbroles_test

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/aftercommit/aftercommit/internal/dbroles"
	"github.com/aftercommit/aftercommit/internal/dbroles/dbrolestest"
	"github.com/aftercommit/aftercommit/internal/dbtest"
)

// privilegesSQL lists, for role $2, what it may do with every table, view
// and sequence of schema $1: a comma-separated list of privileges, column
// privileges as UPDATE(col), empty for none.
const privilegesSQL = `
SELECT c.relname,
       concat_ws(',',
         CASE WHEN c.relkind = 'S' THEN
           concat_ws(',',
             CASE WHEN has_sequence_privilege($2, c.oid, 'USAGE') THEN 'USAGE' END,
             CASE WHEN has_sequence_privilege($2, c.oid, 'SELECT') THEN 'SELECT' END,
             CASE WHEN has_sequence_privilege($2, c.oid, 'UPDATE') THEN 'UPDATE' END)
         ELSE
           concat_ws(',',
             CASE WHEN has_table_privilege($2, c.oid, 'SELECT') THEN 'SELECT' END,
             CASE WHEN has_table_privilege($2, c.oid, 'INSERT') THEN 'INSERT' END,
             CASE WHEN has_table_privilege($2, c.oid, 'UPDATE') THEN 'UPDATE'
                  ELSE (SELECT string_agg('UPDATE(' || a.attname || ')', ',' ORDER BY a.attnum)
                          FROM pg_attribute a
                         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                           AND has_column_privilege($2, c.oid, a.attnum, 'UPDATE')) END,
             CASE WHEN has_table_privilege($2, c.oid, 'DELETE') THEN 'DELETE' END,
             CASE WHEN has_table_privilege($2, c.oid, 'TRUNCATE') THEN 'TRUNCATE' END,
             CASE WHEN has_table_privilege($2, c.oid, 'REFERENCES') THEN 'REFERENCES' END,
             CASE WHEN has_table_privilege($2, c.oid, 'TRIGGER') THEN 'TRIGGER' END)
         END)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
 ORDER BY c.relname`

func privileges(ctx context.Context, t *testing.T, s *dbtest.Schema, role string) map[string]string {
	t.Helper()
	return queryMap(ctx, t, s, privilegesSQL, s.Name, role)
}

// queryMap runs sql, whose rows are (key, value) text pairs, as a map.
func queryMap(ctx context.Context, t *testing.T, s *dbtest.Schema, sql string, args ...any) map[string]string {
	t.Helper()
	rows, err := s.Pool.Query(ctx, sql, args...)
	require.NoError(t, err)
	got := map[string]string{}
	for rows.Next() {
		var k, v string
		require.NoError(t, rows.Scan(&k, &v))
		got[k] = v
	}
	require.NoError(t, rows.Err())
	return got
}

const (
	dml = "SELECT,INSERT,UPDATE,DELETE"
	seq = "USAGE"
)

// domainTables are the tables of donations, inventory, reporting and
// pings; domainSequences their id sequences.
var (
	domainTables = []string{
		"pings", "users", "fundraisers", "emails", "donations", "email_counter_deltas",
		"fundraiser_counter_deltas", "user_counter_deltas", "products", "checkouts", "inventory_claims", "product_buckets",
		"cars", "car_users", "car_reports", "fundraiser_daily_totals",
	}
	domainSequences = []string{
		"pings_id_seq", "users_id_seq", "fundraisers_id_seq", "emails_id_seq", "donations_id_seq",
		"email_counter_deltas_id_seq", "products_id_seq", "checkouts_id_seq", "cars_id_seq",
		"fundraiser_counter_deltas_id_seq", "user_counter_deltas_id_seq",
	}
	views = []string{"job_kind_stats", "queue_depth", "stuck_jobs", "failing_jobs", "job_rate_limit_status", "job_sequence_status",
		"job_batch_status", "job_dependency_status", "db_vacuum_holdback", "db_table_health"}
)

// wantPrivileges is the whole matrix grants.sql must give on a schema
// migrated to the newest version: every relation appears, with "" where a
// role has nothing.
func wantPrivileges() (app, worker map[string]string) {
	app, worker = map[string]string{}, map[string]string{}
	for _, tbl := range domainTables {
		app[tbl], worker[tbl] = dml, dml
	}
	for _, sq := range domainSequences {
		app[sq], worker[sq] = seq, seq
	}
	for _, v := range views {
		app[v], worker[v] = "SELECT", "SELECT"
	}
	maps.Copy(app, map[string]string{
		"river_job":                 "SELECT,INSERT,UPDATE(kind)",
		"river_job_id_seq":          seq,
		"outbox_events":             "SELECT,INSERT",
		"outbox_events_id_seq":      seq,
		"outbox_jobs":               "SELECT,INSERT",
		"outbox_jobs_id_seq":        "", // an identity column's: INSERT needs no USAGE
		"outbox_dead_jobs":          "SELECT",
		"outbox_depth":              "SELECT",
		"outbox_event_relays":       "",
		"outbox_event_relay_lag":    "SELECT",
		"job_locks":                 "",
		"job_rate_limits":           "",
		"job_sequence_inbox":        "",
		"job_sequences":             "",
		"job_sequence_members":      "",
		"job_batches":               "",
		"job_batch_members":         "",
		"job_refs":                  "",
		"job_waits":                 "",
		"river_leader":              "",
		"river_queue":               "",
		"river_migration":           "",
		"schema_migrations":         "",
		"river_notification":        "",
		"river_notification_id_seq": "",
		"aftercommit_roles":         "",
		"aftercommit_role_grants":   "",
	})
	maps.Copy(worker, map[string]string{
		"river_job":                 dml,
		"river_job_id_seq":          seq,
		"outbox_events":             "SELECT,INSERT,DELETE",
		"outbox_events_id_seq":      seq,
		"outbox_jobs":               "SELECT,INSERT,UPDATE(id),DELETE",
		"outbox_jobs_id_seq":        "",
		"outbox_dead_jobs":          "SELECT,INSERT,DELETE",
		"outbox_depth":              "SELECT",
		"outbox_event_relays":       "SELECT,INSERT,UPDATE",
		"outbox_event_relay_lag":    "SELECT",
		"job_locks":                 dml,
		"job_rate_limits":           "SELECT,INSERT,UPDATE",
		"job_sequence_inbox":        "SELECT,INSERT",
		"job_sequences":             "SELECT",
		"job_sequence_members":      "SELECT",
		"job_batches":               "SELECT",
		"job_batch_members":         "SELECT",
		"job_refs":                  "SELECT",
		"job_waits":                 "SELECT",
		"river_leader":              dml,
		"river_queue":               dml,
		"river_migration":           "SELECT",
		"schema_migrations":         "SELECT",
		"river_notification":        "",
		"river_notification_id_seq": "",
		"aftercommit_roles":         "",
		"aftercommit_role_grants":   "",
	})
	return app, worker
}

// TestGrantPrivilegeMatrix grants on a freshly migrated schema and compares
// every relation's privileges for both roles with the intended matrix: a
// new migration's table fails here until grants.sql names it.
func TestGrantPrivilegeMatrix(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
	app, worker := dbrolestest.Roles(ctx, t, s)

	wantApp, wantWorker := wantPrivileges()
	require.Equal(t, wantApp, privileges(ctx, t, s, app.Name), "app role")
	require.Equal(t, wantWorker, privileges(ctx, t, s, worker.Name), "worker role")

	var appUsage, appCreate, workerCreate, appExec bool
	require.NoError(t, s.Pool.QueryRow(ctx, `
SELECT has_schema_privilege($2, $1, 'USAGE'), has_schema_privilege($2, $1, 'CREATE'), has_schema_privilege($3, $1, 'CREATE'),
       has_function_privilege($2, format('%I.river_job_state_in_bitmask(bit, %I.river_job_state)', $1, $1), 'EXECUTE')`,
		s.Name, app.Name, worker.Name).Scan(&appUsage, &appCreate, &workerCreate, &appExec))
	require.True(t, appUsage)
	require.False(t, appCreate, "no role may create objects in the schema")
	require.False(t, workerCreate, "no role may create objects in the schema")
	require.True(t, appExec)
}

// TestGrantIsExact: privileges granted by hand beyond grants.sql are
// revoked by the next Grant, which can run any number of times.
func TestGrantIsExact(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
	app, worker := dbrolestest.Roles(ctx, t, s)

	_, err := s.Pool.Exec(ctx, `GRANT ALL ON river_job, river_notification, job_locks TO `+pgx.Identifier{app.Name}.Sanitize()+
		`; GRANT CREATE ON SCHEMA `+pgx.Identifier{s.Name}.Sanitize()+` TO `+pgx.Identifier{worker.Name}.Sanitize())
	require.NoError(t, err)
	require.NotEqual(t, "SELECT,INSERT,UPDATE(kind)", privileges(ctx, t, s, app.Name)["river_job"])

	for range 2 {
		require.NoError(t, dbroles.Grant(ctx, s.Pool, s.Name, app.Name, worker.Name))
	}
	wantApp, wantWorker := wantPrivileges()
	require.Equal(t, wantApp, privileges(ctx, t, s, app.Name))
	require.Equal(t, wantWorker, privileges(ctx, t, s, worker.Name))
	var create bool
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT has_schema_privilege($2, $1, 'CREATE')`, s.Name, worker.Name).Scan(&create))
	require.False(t, create)
}

// TestGrantInTx: in a caller's transaction Grant works in a savepoint; a
// failed Grant leaves the transaction usable, and a rollback undoes it.
func TestGrantInTx(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
	app := dbrolestest.NewRole(ctx, t, s, "app")
	worker := dbrolestest.NewRole(ctx, t, s, "worker")

	tx, err := s.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	require.NoError(t, dbroles.Grant(ctx, tx, s.Name, app.Name, worker.Name))
	var can bool
	require.NoError(t, tx.QueryRow(ctx, `SELECT has_table_privilege($1, 'river_job', 'INSERT')`, app.Name).Scan(&can))
	require.True(t, can)
	require.ErrorIs(t, dbroles.Grant(ctx, tx, s.Name, app.Name, "postgres"), dbroles.ErrPrivilegedRole)
	require.NoError(t, tx.QueryRow(ctx, `SELECT has_table_privilege($1, 'river_job', 'INSERT')`, app.Name).Scan(&can))
	require.True(t, can, "the transaction is still usable")
	require.NoError(t, tx.Rollback(ctx))
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT has_table_privilege($1, 'river_job', 'INSERT')`, app.Name).Scan(&can))
	require.False(t, can, "rolled back with the caller's transaction")
}

// TestGrantRefuses checks every refusal before any statement runs.
func TestGrantRefuses(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
	app := dbrolestest.NewRole(ctx, t, s, "app")
	worker := dbrolestest.NewRole(ctx, t, s, "worker")
	member := dbrolestest.NewRole(ctx, t, s, "member")
	_, err := s.Pool.Exec(ctx, "GRANT "+pgx.Identifier{worker.Name}.Sanitize()+" TO "+pgx.Identifier{member.Name}.Sanitize())
	require.NoError(t, err)
	empty := "act_dbroles_empty_" + strings.TrimPrefix(app.Name, s.Name)
	_, err = s.Pool.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{empty}.Sanitize())
	require.NoError(t, err)
	t.Cleanup(func() {
		_, err := s.Pool.Exec(context.WithoutCancel(ctx), "DROP SCHEMA "+pgx.Identifier{empty}.Sanitize())
		require.NoError(t, err)
	})

	for _, tc := range []struct {
		name                string
		schema, app, worker string
		wantErr             error
		wantMsg             string
	}{
		{"EmptySchema", "", app.Name, worker.Name, dbroles.ErrInvalidName, `invalid schema name "": empty`},
		{"LongRole", s.Name, strings.Repeat("a", 64), worker.Name, dbroles.ErrInvalidName, "longer than 63 bytes"},
		{"NulInRole", s.Name, "a\x00b", worker.Name, dbroles.ErrInvalidName, "NUL"},
		{"Public", s.Name, app.Name, "PUBLIC", dbroles.ErrInvalidName, "keyword"},
		{"None", s.Name, "none", worker.Name, dbroles.ErrInvalidName, "keyword"},
		{"PgRole", s.Name, app.Name, "pg_monitor", dbroles.ErrInvalidName, "pg_ roles"},
		{"SameRole", s.Name, app.Name, app.Name, dbroles.ErrSameRole, "both are"},
		{"MemberOfTheOther", s.Name, member.Name, worker.Name, dbroles.ErrSameRole, "members one of the other"},
		{"NoSchema", s.Name + "_nope", app.Name, worker.Name, dbroles.ErrSchemaNotFound, "_nope"},
		{"NotMigrated", empty, app.Name, worker.Name, dbroles.ErrNotMigrated, "no river_job table"},
		{"NoAppRole", s.Name, app.Name + "_nope", worker.Name, dbroles.ErrRoleNotFound, "app role"},
		{"NoWorkerRole", s.Name, app.Name, worker.Name + "_nope", dbroles.ErrRoleNotFound, "worker role"},
		{"Superuser", s.Name, app.Name, "postgres", dbroles.ErrPrivilegedRole, "superuser"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := dbroles.Grant(ctx, s.Pool, tc.schema, tc.app, tc.worker)
			require.ErrorIs(t, err, tc.wantErr)
			require.ErrorContains(t, err, tc.wantMsg)
		})
	}
	var nameErr *dbroles.NameError
	require.ErrorAs(t, dbroles.Grant(ctx, s.Pool, s.Name, "", worker.Name), &nameErr)
	require.Equal(t, dbroles.NameError{What: "app role", Name: "", Reason: "empty"}, *nameErr)

	// Nothing was granted by any refusal.
	for _, r := range []string{app.Name, worker.Name, member.Name} {
		var usage bool
		require.NoError(t, s.Pool.QueryRow(ctx, `SELECT has_schema_privilege($2, $1, 'USAGE')`, s.Name, r).Scan(&usage))
		require.False(t, usage, r)
	}
}

// TestGrantSQLVariables: the file uses exactly the three psql variables
// Grant replaces, and Grant quotes names psql would: a role name with a
// quote and a backslash is registered as it is.
func TestGrantSQLVariables(t *testing.T) {
	t.Parallel()
	sql := dbroles.SQL()
	for _, v := range []string{`:"schema"`, `:'app_role'`, `:'worker_role'`} {
		require.Contains(t, sql, v)
		sql = strings.ReplaceAll(sql, v, "")
	}
	require.NotContains(t, sql, `:"`)
	require.NotContains(t, sql, ":'")

	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
	app := dbrolestest.NewRole(ctx, t, s, `o'app\`)
	worker := dbrolestest.NewRole(ctx, t, s, "worker")
	require.NoError(t, dbroles.Grant(ctx, s.Pool, s.Name, app.Name, worker.Name))
	require.Equal(t, map[string]string{app.Name: "app", worker.Name: "worker"}, registered(ctx, t, s))
}

// registered reads the roles registered in s.
func registered(ctx context.Context, t *testing.T, s *dbtest.Schema) map[string]string {
	t.Helper()
	return queryMap(ctx, t, s, `SELECT role_name, role_kind FROM aftercommit_roles`)
}

// TestGrantCreateRolesConcurrently: eight sessions create the same two
// roles at once; each role is created exactly once and none fails.
func TestGrantCreateRolesConcurrently(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 8})
	names := []string{s.Name + "_c_app", s.Name + "_c_worker"}
	t.Cleanup(func() {
		for _, n := range names {
			_, err := s.Pool.Exec(context.WithoutCancel(ctx), "DROP ROLE IF EXISTS "+pgx.Identifier{n}.Sanitize())
			require.NoError(t, err)
		}
	})

	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		created []string
		errs    []error
	)
	for range 8 {
		wg.Go(func() {
			c, err := dbroles.CreateRoles(ctx, s.Pool, names...)
			mu.Lock()
			defer mu.Unlock()
			created = append(created, c...)
			if err != nil {
				errs = append(errs, err)
			}
		})
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	slices.Sort(created)
	require.Equal(t, names, created, "each role created once")

	var login, super int
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE rolcanlogin), count(*) FILTER (WHERE rolsuper) FROM pg_roles WHERE rolname = ANY($1)`,
		names).Scan(&login, &super))
	require.Zero(t, login, "NOLOGIN")
	require.Zero(t, super)

	again, err := dbroles.CreateRoles(ctx, s.Pool, names...)
	require.NoError(t, err)
	require.Empty(t, again)
	_, err = dbroles.CreateRoles(ctx, s.Pool, "pg_nope")
	require.ErrorIs(t, err, dbroles.ErrInvalidName)
}

// TestKindGuard: no role, the owner included, can change a job's kind in
// a schema that is only migrated (the guard is migration
// 0017_river_job_kind_guard, no Grant needed); River's no-op update of kind
// on a unique conflict still works (internal/faults covers it end to end).
func TestKindGuard(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
	var id int64
	require.NoError(t, s.Pool.QueryRow(ctx, `INSERT INTO river_job (args, kind, max_attempts, priority, queue, state)
VALUES ('{}', 'test.a', 1, 1, 'default', 'available') RETURNING id`).Scan(&id))
	_, err := s.Pool.Exec(ctx, `UPDATE river_job SET kind = 'test.b' WHERE id = $1`, id)
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	require.Equal(t, "42501", pgErr.Code)
	require.Contains(t, pgErr.Message, "river_job.kind never changes")
	tag, err := s.Pool.Exec(ctx, `UPDATE river_job SET kind = kind, priority = 2 WHERE id = $1`, id)
	require.NoError(t, err)
	require.Equal(t, int64(1), tag.RowsAffected())
}

// TestGrantsFollowMigrations: once registered, the roles need no grant by
// hand after a migration. A migration that adds a table and its rows of
// aftercommit_role_grants (the shape 0018_role_grants asks of later
// migrations) gives the registered roles exactly those privileges when it
// is applied; its down takes them back. It runs in a transaction that is
// rolled back, so the schema is as migrated afterwards.
func TestGrantsFollowMigrations(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
	app, worker := dbrolestest.Roles(ctx, t, s)

	tx, err := s.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	can := func(role, privilege string) bool {
		t.Helper()
		var ok bool
		require.NoError(t, tx.QueryRow(ctx, `SELECT has_table_privilege($1, 'future_things', $2)`, role, privilege).Scan(&ok))
		return ok
	}

	// Up of a later migration.
	_, err = tx.Exec(ctx, `
CREATE TABLE future_things (id bigint PRIMARY KEY);
INSERT INTO aftercommit_role_grants (role_kind, on_object, privileges) VALUES
    ('app', 'TABLE future_things', 'SELECT'),
    ('worker', 'TABLE future_things', 'SELECT, INSERT, DELETE');
SELECT aftercommit_apply_grants();`)
	require.NoError(t, err)
	require.True(t, can(app.Name, "SELECT"))
	require.False(t, can(app.Name, "INSERT"))
	require.True(t, can(worker.Name, "INSERT"))
	require.True(t, can(worker.Name, "DELETE"))
	require.False(t, can(worker.Name, "UPDATE"))
	// Everything granted before is still granted.
	var insertJob bool
	require.NoError(t, tx.QueryRow(ctx, `SELECT has_table_privilege($1, 'river_job', 'INSERT')`, app.Name).Scan(&insertJob))
	require.True(t, insertJob)

	// Its down.
	_, err = tx.Exec(ctx, `
DELETE FROM aftercommit_role_grants WHERE on_object = 'TABLE future_things';
SELECT aftercommit_apply_grants();`)
	require.NoError(t, err)
	require.False(t, can(app.Name, "SELECT"))
	require.False(t, can(worker.Name, "INSERT"))
	require.NoError(t, tx.Rollback(ctx))
}

// TestApplyGrantsSkipsDroppedRoles: a registered role that no longer exists
// is skipped with a notice, and the others are granted.
func TestApplyGrantsSkipsDroppedRoles(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
	app, worker := dbrolestest.Roles(ctx, t, s)
	_, err := s.Pool.Exec(ctx, `INSERT INTO aftercommit_roles (role_name, role_kind) VALUES ('act_no_such_role_xyz', 'app')`)
	require.NoError(t, err)
	var granted int
	require.NoError(t, s.Pool.QueryRow(ctx, `SELECT aftercommit_apply_grants()`).Scan(&granted))
	require.Equal(t, 2, granted)
	wantApp, wantWorker := wantPrivileges()
	require.Equal(t, wantApp, privileges(ctx, t, s, app.Name))
	require.Equal(t, wantWorker, privileges(ctx, t, s, worker.Name))
}

// TestGrantBeforeTheGrantsMigration: a schema migrated up to the kind guard
// but not to 0018_role_grants is reported as not migrated, and nothing is
// granted.
func TestGrantBeforeTheGrantsMigration(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := dbtest.TestSchema(ctx, t, &dbtest.Opts{MaxConns: 2})
	app := dbrolestest.NewRole(ctx, t, s, "app")
	worker := dbrolestest.NewRole(ctx, t, s, "worker")
	tx, err := s.Pool.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(ctx) }()
	_, err = tx.Exec(ctx, `DROP FUNCTION aftercommit_apply_grants(); DROP TABLE aftercommit_roles, aftercommit_role_grants`)
	require.NoError(t, err)

	err = dbroles.Grant(ctx, tx, s.Name, app.Name, worker.Name)
	require.ErrorIs(t, err, dbroles.ErrNotMigrated)
	require.ErrorContains(t, err, "aftercommit_roles")
	var usage bool
	require.NoError(t, tx.QueryRow(ctx, `SELECT has_schema_privilege($2, $1, 'USAGE')`, s.Name, app.Name).Scan(&usage))
	require.False(t, usage)
}
