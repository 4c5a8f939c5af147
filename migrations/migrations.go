// Package migrations holds aftercommit's own schema as golang-migrate SQL
// files (NNNN_name.up.sql / NNNN_name.down.sql), embedded in the binary.
//
// River's tables (river_job, river_leader, …) are not here: they are created
// by River's own migrator, run by the same `aftercommit migrate` command before
// these files. Table names are unqualified so that search_path decides the
// schema, which is how the test harness gives each test its own schema.
//
// Never edit a file that has been applied somewhere; add a new one.
package migrations

import "embed"

// FS holds every migration file of the project.
//
//go:embed *.sql
var FS embed.FS
