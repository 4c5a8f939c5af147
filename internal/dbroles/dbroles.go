// Package dbroles grants the two least-privilege roles of an aftercommit
// deployment on one schema: an app role that writes domain rows and
// enqueues jobs and events but cannot update (beyond River's no-op on
// kind), delete or truncate jobs, and a worker role that runs cmd/worker
// without owning any table.
//
// # What is a migration and what is not
//
// Roles are global to the Postgres cluster, their names are the operator's,
// and creating one needs CREATEROLE, which the role running migrations
// often lacks; a migration naming roles would also let a role of one
// deployment into every schema of the cluster that shares the name. So no
// migration creates or names a role. Everything else is a migration:
//
//   - the river_job kind guard trigger (migrations/0017_river_job_kind_guard),
//     on every schema, whoever runs the migrations;
//   - what an app and a worker role may do, as rows of the table
//     aftercommit_role_grants, and the function aftercommit_apply_grants()
//     that grants them to the roles registered in aftercommit_roles
//     (migrations/0018_role_grants). A later migration that adds an object a
//     role needs adds its rows and calls the function, so the registered
//     roles follow every migration, whatever tool applies it.
//
// Grant (or `aftercommit grant-roles`, or grants.sql with psql) registers the
// operator's two roles once, as the owner of the schema's tables, and
// applies the grants; nothing has to be re-run after later migrations.
// CreateRoles makes NOLOGIN roles for operators who want them (give them
// LOGIN and a password, or grant them to login roles).
//
// The worker role does not own River's indexes, so River's reindexer must
// be off for it (cmd/worker --reindexer off); run REINDEX as the owner.
package dbroles

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// grantsSQL is grants.sql, with psql variables :"schema" (an identifier),
// :'app_role' and :'worker_role' (literals).
//
//go:embed grants.sql
var grantsSQL string

// SQL returns the text of grants.sql, whose psql variables Grant replaces:
// :"schema" with the quoted schema name, :'app_role' and :'worker_role'
// with the role names as string literals.
func SQL() string { return grantsSQL }

// KindGuardTrigger is the trigger migration 0017_river_job_kind_guard
// installs on river_job: an UPDATE that changes a job's kind fails with
// SQLSTATE 42501.
const KindGuardTrigger = "river_job_kind_guard"

// KindGuardFunction is the trigger function of KindGuardTrigger.
const KindGuardFunction = "aftercommit_river_job_kind_guard"

// ApplyGrantsFunction is the function migration 0018_role_grants creates:
// it grants every role registered in RolesTable the privileges
// GrantsTable lists for its kind.
const ApplyGrantsFunction = "aftercommit_apply_grants"

// RolesTable registers the operator's roles, each as 'app' or 'worker'.
const RolesTable = "aftercommit_roles"

// GrantsTable lists what each kind of role may do with each object.
const GrantsTable = "aftercommit_role_grants"

// DB is what Grant and CreateRoles need of a connection: a *pgxpool.Pool, a
// *pgx.Conn or a pgx.Tx (then they work in a savepoint).
type DB interface {
	Begin(ctx context.Context) (pgx.Tx, error)
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Errors of Grant and CreateRoles, matched with errors.Is.
var (
	// ErrInvalidName: a schema or role name is empty, too long for
	// Postgres (63 bytes), not UTF-8, holds a NUL, or is a name Postgres
	// treats specially in GRANT (public, none, pg_*).
	ErrInvalidName = errors.New("dbroles: invalid name")
	// ErrSameRole: the app and worker roles are the same role, or one is a
	// member of the other (it would inherit the other's privileges).
	ErrSameRole = errors.New("dbroles: the app and worker roles must be distinct roles")
	// ErrRoleNotFound: a role does not exist (CreateRoles, or CREATE ROLE).
	ErrRoleNotFound = errors.New("dbroles: role does not exist")
	// ErrPrivilegedRole: a role is a superuser, or owns (or is a member of
	// the owner of) the schema's tables: grants cannot restrict it.
	ErrPrivilegedRole = errors.New("dbroles: role cannot be restricted")
	// ErrSchemaNotFound: the schema does not exist.
	ErrSchemaNotFound = errors.New("dbroles: schema does not exist")
	// ErrNotMigrated: the schema lacks River's tables, the role grants of
	// migration 0018_role_grants (RolesTable, ApplyGrantsFunction) or an
	// object GrantsTable names: run `aftercommit migrate up` first.
	ErrNotMigrated = errors.New("dbroles: schema is not migrated")
)

// NameError is an invalid schema or role name; it matches ErrInvalidName.
type NameError struct {
	// What names the parameter: "schema", "app role" or "worker role".
	What string
	// Name is the name refused.
	Name string
	// Reason says what is wrong with it.
	Reason string
}

// Error implements error.
func (e *NameError) Error() string {
	return fmt.Sprintf("dbroles: invalid %s name %q: %s", e.What, e.Name, e.Reason)
}

// Is makes errors.Is(err, ErrInvalidName) true.
func (e *NameError) Is(target error) bool { return target == ErrInvalidName }

// maxIdentBytes is Postgres' NAMEDATALEN - 1: longer names are truncated,
// silently, which would grant to another role.
const maxIdentBytes = 63

func checkName(what, name string, role bool) error {
	fail := func(reason string) error { return &NameError{What: what, Name: name, Reason: reason} }
	switch {
	case name == "":
		return fail("empty")
	case len(name) > maxIdentBytes:
		return fail(fmt.Sprintf("longer than %d bytes", maxIdentBytes))
	case !utf8.ValidString(name):
		return fail("not UTF-8")
	case strings.ContainsRune(name, 0):
		return fail("holds a NUL byte")
	}
	if role {
		switch lower := strings.ToLower(name); {
		case lower == "public", lower == "none":
			return fail("GRANT reads it as a keyword, not a role")
		case strings.HasPrefix(lower, "pg_"):
			return fail("pg_ roles are Postgres' own")
		}
	}
	return nil
}

// Grant registers appRole and workerRole in schema's RolesTable and gives
// them exactly the privileges GrantsTable lists for their kind on schema's
// objects, revoking any other privilege they held there (and granting
// every role registered before again), in one transaction (a savepoint when
// db is a pgx.Tx): it runs grants.sql. Run it once, as the owner of the
// schema's tables; later migrations keep the registered roles' grants up
// to date.
//
// The roles must exist, be distinct, and be neither superusers nor the
// owner of the tables (nor members of it or of each other). Errors match
// ErrInvalidName, ErrSameRole, ErrRoleNotFound, ErrPrivilegedRole,
// ErrSchemaNotFound or ErrNotMigrated when they are those; others are the
// database's, wrapped.
func Grant(ctx context.Context, db DB, schema, appRole, workerRole string) error {
	if err := checkName("schema", schema, false); err != nil {
		return err
	}
	if err := checkName("app role", appRole, true); err != nil {
		return err
	}
	if err := checkName("worker role", workerRole, true); err != nil {
		return err
	}
	if appRole == workerRole {
		return fmt.Errorf("%w: both are %q", ErrSameRole, appRole)
	}
	if err := checkTargets(ctx, db, schema, appRole, workerRole); err != nil {
		return err
	}

	sql := strings.NewReplacer(
		`:"schema"`, pgx.Identifier{schema}.Sanitize(),
		`:'app_role'`, quoteLiteral(appRole),
		`:'worker_role'`, quoteLiteral(workerRole),
	).Replace(grantsSQL)
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		// No arguments: pgx sends the whole file with the simple protocol,
		// several statements in one message.
		_, err := tx.Exec(ctx, sql)
		return err
	})
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "42883" || pgErr.Code == "42704") {
		// undefined_table, undefined_function, undefined_object (the type).
		return fmt.Errorf("%w: schema %q: %s: run `aftercommit migrate up` first", ErrNotMigrated, schema, pgErr.Message)
	}
	if err != nil {
		return fmt.Errorf("dbroles: granting on schema %q to %q and %q: %w", schema, appRole, workerRole, err)
	}
	return nil
}

// quoteLiteral quotes s as an SQL string literal (names were checked: no
// NUL byte, valid UTF-8). A backslash takes the E'...' form, which reads the
// same whatever standard_conforming_strings says.
func quoteLiteral(s string) string {
	q := "'" + strings.ReplaceAll(s, "'", "''") + "'"
	if strings.Contains(s, `\`) {
		q = "E" + strings.ReplaceAll(q, `\`, `\\`)
	}
	return q
}

// checkTargetsSQL reads, for the schema ($1) and both roles ($2, $3):
// whether the schema exists and has river_job, each role's existence and
// superuser flag, whether it is (a member of) river_job's owner, and
// whether either role is a member of the other.
const checkTargetsSQL = `
WITH r AS (
    SELECT n.nspname IS NOT NULL AS has_schema, c.relowner AS owner
      FROM (SELECT 1) one
      LEFT JOIN pg_namespace n ON n.nspname = $1
      LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = 'river_job' AND c.relkind IN ('r', 'p')
)
SELECT r.has_schema, r.owner IS NOT NULL,
       a.oid IS NOT NULL, coalesce(a.rolsuper, false), coalesce(r.owner IS NOT NULL AND a.oid IS NOT NULL AND pg_has_role(a.oid, r.owner, 'USAGE'), false),
       w.oid IS NOT NULL, coalesce(w.rolsuper, false), coalesce(r.owner IS NOT NULL AND w.oid IS NOT NULL AND pg_has_role(w.oid, r.owner, 'USAGE'), false),
       coalesce(a.oid IS NOT NULL AND w.oid IS NOT NULL AND (pg_has_role(a.oid, w.oid, 'MEMBER') OR pg_has_role(w.oid, a.oid, 'MEMBER')), false)
  FROM r
  LEFT JOIN pg_roles a ON a.rolname = $2
  LEFT JOIN pg_roles w ON w.rolname = $3`

func checkTargets(ctx context.Context, db DB, schema, appRole, workerRole string) error {
	var (
		hasSchema, hasJobs                 bool
		appExists, appSuper, appOwner      bool
		workerExists, workerSup, workerOwn bool
		related                            bool
	)
	err := db.QueryRow(ctx, checkTargetsSQL, schema, appRole, workerRole).Scan(
		&hasSchema, &hasJobs, &appExists, &appSuper, &appOwner, &workerExists, &workerSup, &workerOwn, &related)
	if err != nil {
		return fmt.Errorf("dbroles: reading the schema and roles: %w", err)
	}
	switch {
	case !hasSchema:
		return fmt.Errorf("%w: %q", ErrSchemaNotFound, schema)
	case !hasJobs:
		return fmt.Errorf("%w: schema %q has no river_job table: run `aftercommit migrate up` first", ErrNotMigrated, schema)
	case !appExists:
		return fmt.Errorf("%w: app role %q (create it, or use CreateRoles / --create)", ErrRoleNotFound, appRole)
	case !workerExists:
		return fmt.Errorf("%w: worker role %q (create it, or use CreateRoles / --create)", ErrRoleNotFound, workerRole)
	case appSuper:
		return fmt.Errorf("%w: app role %q is a superuser", ErrPrivilegedRole, appRole)
	case workerSup:
		return fmt.Errorf("%w: worker role %q is a superuser", ErrPrivilegedRole, workerRole)
	case appOwner:
		return fmt.Errorf("%w: app role %q owns, or is a member of the owner of, the tables of schema %q", ErrPrivilegedRole, appRole, schema)
	case workerOwn:
		return fmt.Errorf("%w: worker role %q owns, or is a member of the owner of, the tables of schema %q", ErrPrivilegedRole, workerRole, schema)
	case related:
		return fmt.Errorf("%w: %q and %q are members one of the other", ErrSameRole, appRole, workerRole)
	}
	return nil
}

// CreateRoles creates each role that does not exist yet, as NOLOGIN (give
// it LOGIN and a password, or grant it to a login role, afterwards). A role
// created concurrently by another session counts as existing. It needs the
// CREATEROLE privilege. Errors match ErrInvalidName, or are the database's,
// wrapped.
func CreateRoles(ctx context.Context, db DB, roles ...string) (created []string, err error) {
	for _, r := range roles {
		if err := checkName("role", r, true); err != nil {
			return nil, err
		}
	}
	for _, r := range roles {
		var exists bool
		if err := db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)`, r).Scan(&exists); err != nil {
			return created, fmt.Errorf("dbroles: looking up role %q: %w", r, err)
		}
		if exists {
			continue
		}
		// In a savepoint (or a transaction of its own), so that losing a
		// race leaves a caller's transaction usable.
		err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, "CREATE ROLE "+pgx.Identifier{r}.Sanitize()+" NOLOGIN")
			return err
		})
		var pgErr *pgconn.PgError
		switch {
		case err == nil:
			created = append(created, r)
		case errors.As(err, &pgErr) && (pgErr.Code == "42710" || pgErr.Code == "23505"):
			// duplicate_object, or unique_violation on pg_authid when the
			// other session committed while this one was inserting.
		default:
			return created, fmt.Errorf("dbroles: creating role %q: %w", r, err)
		}
	}
	return created, nil
}
