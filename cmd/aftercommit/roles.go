package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/aftercommit/aftercommit/internal/dbroles"
)

func printGrantRolesUsage(w io.Writer, printFlags func(io.Writer)) {
	fmt.Fprint(w, `Usage:
  aftercommit grant-roles --app-role NAME --worker-role NAME [--create]

Grants the two least-privilege roles on the schema, exactly (any other
privilege they held on its objects is revoked), in one transaction:

  app role     writes domain rows, inserts jobs and events (River's INSERT
               and COPY) and reads them, reads the job views; cannot
               update, delete or truncate jobs (it holds UPDATE on
               river_job.kind only, which River's INSERT ... ON CONFLICT
               needs; a trigger keeps any kind from changing).
  worker role  everything cmd/worker does: River's tables, job_locks,
               the event pruner, the domain tables. Not an owner: run its
               workers with --reindexer off, and REINDEX as the owner.

Run it as the owner of the tables (who ran 'aftercommit migrate up'), once:
it registers the roles in the schema (aftercommit_roles), and every later
migration grants them what it adds, whichever tool applies it. The roles
must exist unless --create makes them (NOLOGIN: give them LOGIN and a
password, or grant them to login roles). The SQL is
internal/dbroles/grants.sql, also runnable with psql.

Exit codes: 0 granted, 1 failure (no privilege granted), 2 bad usage, 130
interrupted.

Flags:
`)
	printFlags(w)
}

func runGrantRoles(ctx context.Context, args []string, e *env) int {
	c := newFrame("grant-roles", e, printGrantRolesUsage)
	fs := c.fs
	appRole := fs.String("app-role", "", "`role` of the application (required)")
	workerRole := fs.String("worker-role", "", "`role` of cmd/worker (required)")
	create := fs.Bool("create", false, "create the roles that do not exist, as NOLOGIN (needs CREATEROLE)")

	if _, code, ok := c.parse(args, true); !ok {
		return code
	}
	switch {
	case *appRole == "" || *workerRole == "":
		return c.usageError("--app-role and --worker-role are required")
	case *appRole == *workerRole:
		return c.usageError(fmt.Sprintf("--app-role and --worker-role are both %q: they must differ", *appRole))
	}
	c.resolveDB()

	pool, code, ok := c.connect(ctx, 2)
	if !ok {
		return code
	}
	defer pool.Close()
	schema := c.db.schema
	if schema == "" {
		if err := pool.QueryRow(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
			return reportError(ctx, e, fmt.Errorf("aftercommit grant-roles: reading the connection's schema: %w", err))
		}
	}
	if *create {
		created, err := dbroles.CreateRoles(ctx, pool, *appRole, *workerRole)
		if err != nil {
			return reportGrantError(ctx, e, err)
		}
		for _, r := range created {
			fmt.Fprintf(e.stdout, "created role %q (NOLOGIN)\n", r)
		}
	}
	if err := dbroles.Grant(ctx, pool, schema, *appRole, *workerRole); err != nil {
		return reportGrantError(ctx, e, err)
	}
	fmt.Fprintf(e.stdout, "granted on schema %q: app role %q, worker role %q; run cmd/worker as %q with --reindexer off\n",
		schema, *appRole, *workerRole, *workerRole)
	return exitOK
}

// reportGrantError reports err; an invalid role name is bad usage.
func reportGrantError(ctx context.Context, e *env, err error) int {
	if errors.Is(err, dbroles.ErrInvalidName) {
		fmt.Fprintf(e.stderr, "aftercommit grant-roles: %s\n", strings.TrimPrefix(err.Error(), "dbroles: "))
		return exitUsage
	}
	return reportError(ctx, e, fmt.Errorf("aftercommit grant-roles: %w", err))
}
